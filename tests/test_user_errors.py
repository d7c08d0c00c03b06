"""Every bad input a user can give is one paragraph naming the field and the fix, exit status 2, no traceback,
and no finished output changes (each test hashes the finished trees before and after)."""

import hashlib
import os
import shutil

import pytest

from imdb_dpo.methods import dpo
import eval as eval_stage
import preference_pairs
import sft
from conftest import CPU_FLAGS, REPO, dpo_argv, refused_in_process
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.configuration.errors import ConfigError
from imdb_dpo.configuration.arguments import EvalArguments, PairsArguments, parse_config


def digest(*directories) -> dict:
    """Every file under the directories with its SHA-256 (lock files, which sit beside folders, excluded)."""
    found = {}
    for top in directories:
        for root, _, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    assert found
    return found


def refused(capsys, stage, argv, *fragments) -> str:
    """Run a stage as its command line does; it must exit 2 with one message holding every fragment."""
    code = run_stage(stage.main, stage.STAGES, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    return err


def pairs_argv(tiny_base, model, output_dir, *extra):
    return ["--config", os.path.join(REPO, "configs/tiny/preference_pairs.yaml"), "--model_name_or_path", str(model),
            "--train_file", tiny_base["train"], "--test_file", tiny_base["test"], "--output_dir", str(output_dir), *extra]


def sft_argv(tiny_base, output_dir, *extra):
    return ["--config", os.path.join(REPO, "configs/tiny/sft.yaml"), "--model_name_or_path", tiny_base["model"],
            "--train_file", tiny_base["train"], "--test_file", tiny_base["test"], "--output_dir", str(output_dir),
            *CPU_FLAGS, *extra]


@pytest.fixture
def finished(tiny_sft, tiny_pairs, tiny_dpo):
    """The finished SFT, pairs and DPO folders, and their digest (checked unchanged after the test)."""
    trees = (tiny_sft, os.path.dirname(tiny_pairs), tiny_dpo)
    before = digest(*trees)
    yield before
    assert digest(*trees) == before


def test_overwrite_with_a_misspelt_model_path_deletes_nothing(capsys, finished, tiny_base, tiny_sft, tiny_pairs,
                                                              tiny_dpo):
    refused(capsys, preference_pairs, pairs_argv(tiny_base, tiny_sft + "x", os.path.dirname(tiny_pairs),
                                                 "--overwrite", "true"),
            f"model_name_or_path='{tiny_sft}x': no such directory")
    refused(capsys, dpo, dpo_argv(tiny_sft + "x", tiny_pairs, os.path.dirname(tiny_dpo), "--betas", "0.1",
                                  "--overwrite", "true"), "no such directory")
    refused(capsys, sft, sft_argv(tiny_base, tiny_sft, "--overwrite", "true", "--model_name_or_path", "gpt2-larg"),
            "model_name_or_path='gpt2-larg': no local directory of that name", "the hub model cannot be loaded")


def test_a_finished_stage_run_with_other_settings_names_them(capsys, finished, tiny_base, tiny_sft, tiny_pairs,
                                                             tiny_dpo):
    run_dir = tiny_dpo
    refused(capsys, dpo, dpo_argv(tiny_sft, tiny_pairs, os.path.dirname(run_dir), "--betas", "0.1",
                                  "--learning_rate", "1e-4"),
            f"{run_dir} holds a finished DPO run made with other settings",
            "config.training.learning_rate: 0.0005 before, 0.0001 now", "--overwrite true")
    refused(capsys, preference_pairs, pairs_argv(tiny_base, tiny_sft, os.path.dirname(tiny_pairs), "--temperature", "0.7"),
            "holds a finished pair generation made with other settings", "config.generation.temperature: 1.0 before, 0.7 now")
    refused(capsys, sft, sft_argv(tiny_base, tiny_sft, "--num_train_epochs", "3"),
            "holds a finished SFT run made with other settings", "config.training.num_train_epochs: 1 before, 3.0 now")
    # The same settings skip, and so does a sweep that includes the finished beta (betas are not a run's setting).
    assert run_stage(dpo.main, dpo.STAGES, dpo_argv(tiny_sft, tiny_pairs, os.path.dirname(run_dir), "--betas", "0.1")) == 0
    assert "finished with these settings; skipping" in capsys.readouterr().out


def test_beta_under_betas_is_refused(capsys, tiny_sft, tiny_pairs, tmp_path):
    refused(capsys, dpo, dpo_argv(tiny_sft, tiny_pairs, tmp_path / "dpo", "--beta", "0.2"),
            "beta=0.2 is set, but betas=[0.1, 1.0, 5.0] decides the runs", "--betas 0.2")
    assert not (tmp_path / "dpo").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--learning_rate", "nan", "learning_rate=nan: must be a finite number > 0"),
    ("--learning_rate", "0", "learning_rate=0.0: must be a finite number > 0"),
    ("--max_train_pairs", "0", "max_train_pairs=0: must be a finite number > 0"),
    ("--per_device_train_batch_size", "0", "per_device_train_batch_size=0: must be a finite number > 0"),
    ("--gradient_accumulation_steps", "0", "gradient_accumulation_steps=0: must be a finite number > 0"),
    ("--save_steps", "-1", "save_steps=-1.0: must be > 0"),
    ("--num_train_epochs", "0", "num_train_epochs=0.0 with max_steps=-1: the run would take no step"),
    ("--betas", "0.5", "betas=[0.1, 0.5, 0.5]: a value is given twice"),
])
def test_dpo_numbers_are_checked_before_any_folder_exists(capsys, tiny_sft, tiny_pairs, tmp_path, flag, value, message):
    extra = ["0.1", "0.5", value] if flag == "--betas" else ["0.1", flag, value]
    refused(capsys, dpo, dpo_argv(tiny_sft, tiny_pairs, tmp_path / "dpo", "--betas", *extra), message)
    assert not (tmp_path / "dpo").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--num_prompts", "-5", "num_prompts=-5: must be a finite number > 0"),
    ("--num_prompts", "0", "num_prompts=0: must be a finite number > 0"),
    ("--temperature", "0", "temperature=0.0: must be a finite number > 0"),
    ("--top_p", "1.5", "top_p=1.5: must lie in (0, 1]"),
    ("--num_prompts", "100000", "num_prompts=100000, but only "),
])
def test_pair_numbers_are_checked_before_any_folder_exists(capsys, tiny_base, tiny_sft, tmp_path, flag, value, message):
    err = refused(capsys, preference_pairs, pairs_argv(tiny_base, tiny_sft, tmp_path / "pairs", flag, value), message)
    if value == "100000":  # both numbers, and the way out
        assert "train reviews of" in err and "allow_fewer_prompts" in err
    assert not (tmp_path / "pairs").exists()


def test_fewer_prompts_than_asked_go_on_when_allowed(tiny_base, tiny_sft):
    from imdb_dpo.data.reviews import prompts_for
    from imdb_dpo.models.modeling import load_tokenizer

    args = parse_config([EvalArguments], ["--config", os.path.join(REPO, "configs/tiny/eval.yaml"), "--test_file",
                                          tiny_base["test"], "--num_prompts", "100000", "--allow_fewer_prompts", "true"])[0]
    prompts = prompts_for(args, load_tokenizer(tiny_sft), "test")
    assert 0 < len(prompts) <= 500


def test_sft_learning_rate_and_a_data_file_that_is_not_json(capsys, tiny_base, tmp_path):
    refused(capsys, sft, sft_argv(tiny_base, tmp_path / "sft", "--learning_rate", "nan"), "learning_rate=nan")
    bad = tmp_path / "reviews.jsonl"
    bad.write_text('{"text": "fine"}\nthis line is not JSON\n')
    refused(capsys, sft, sft_argv(tiny_base, tmp_path / "sft", "--train_file", str(bad)),
            f"train_file='{bad}': cannot be read as jsonl", "one review per line")
    assert not (tmp_path / "sft").exists()


def test_a_model_folder_without_tokenizer_or_weights(capsys, tiny_sft, tiny_base, tmp_path):
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_sft, name), weights_only)
    refused(capsys, preference_pairs, pairs_argv(tiny_base, weights_only, tmp_path / "pairs"),
            f"model_name_or_path='{weights_only}': the directory holds weights but no tokenizer")
    os.remove(weights_only / "model.safetensors")
    refused(capsys, preference_pairs, pairs_argv(tiny_base, weights_only, tmp_path / "pairs"), "has no weights")
    assert not (tmp_path / "pairs").exists()


def test_config_flag_without_a_value_and_no_config_at_all(capsys, tiny_base, tiny_sft, tmp_path, monkeypatch):
    refused(capsys, eval_stage, ["--config"], "--config needs a value")
    monkeypatch.delenv("OUTPUT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # outputs belong under the repository whatever the working directory
    pairs = parse_config([PairsArguments], [])[0]
    assert pairs.output_dir == os.path.join(REPO, "generations/gpt2-large")
    assert pairs.model_name_or_path == os.path.join(REPO, "outputs/gpt2-large/sft")
    empty = tmp_path / "empty.yaml"
    empty.write_text("seed: 0  # nothing else set\n")
    assert parse_config([EvalArguments], ["--config", str(empty)])[0].runs_root == os.path.join(REPO, "outputs/gpt2-large")


def test_flags_a_stage_has_no_use_for_are_refused(capsys, tmp_path):
    refused(capsys, eval_stage, ["--config", os.path.join(REPO, "configs/tiny/eval.yaml"), "--merge", "true"],
            "--merge is not a setting of eval.py")
    refused(capsys, dpo, ["--config", os.path.join(REPO, "configs/tiny/dpo.yaml"), "--learnin_rate", "1e-4"],
            "--learnin_rate (did you mean --learning_rate?) is not a setting of dpo.py")
    empty = tmp_path / "empty.yaml"
    empty.write_text("seed: 42\n")  # TrainingArguments' defaults ask for bf16, which this machine cannot do
    refused(capsys, sft, ["--config", str(empty)], "sft.py: Your setup doesn't support bf16")


def test_a_config_is_read_strictly_naming_the_line(capsys, tmp_path):
    from imdb_dpo.methods import reward_model

    cases = {"twice.yaml": ("num_prompts: 9\nseed: 3\nnum_prompts: 10\n",
                            ["twice.yaml, line 3: 'num_prompts' is given twice (first on line 1)"]),
             "tab.yaml": ("seed: 1\nnum_prompts:\t9\n", ["tab.yaml, line 2: a tab"]),
             "broken.yaml": ("seed: 1\nkl_budgets: [1, 3\n", ["broken.yaml, line 3, column 1: not valid YAML"]),
             "binary.yaml": (b"\xff\xfeseed", ["binary.yaml: not a UTF-8 text file"])}
    for name, (text, fragments) in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        refused(capsys, eval_stage, ["--config", str(path)], *fragments)
    refused(capsys, reward_model, ["--config", os.path.join(REPO, "configs/tiny/reward_model.yaml"), "--eval_strategy",
                                   "no", "--output_dir", str(tmp_path / "rm")],
            "needs save_strategy and eval_strategy alike (now save_strategy epoch, eval_strategy no): set both to "
            "epoch")
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "env.yaml").write_text("env: [A, B]\n")
    (tmp_path / "key.yaml").write_text("1: x\n")
    preset = open(os.path.join(REPO, "configs/tiny/dpo.yaml")).read()
    (tmp_path / "betas.yaml").write_text(preset.replace("betas:", "# betas:") + "betas: 0.1\n")
    refused(capsys, eval_stage, ["--config", str(tmp_path / "env.yaml")], "env.yaml: env must be a mapping")
    refused(capsys, eval_stage, ["--config", str(tmp_path / "key.yaml")], "key.yaml: 1 is not a setting's name")
    refused(capsys, dpo, ["--config", str(tmp_path / "betas.yaml"), "--output_dir", str(tmp_path / "d")],
            "betas=0.1: a list, e.g. betas: [0.1]")
    refused(capsys, eval_stage, ["--config", str(tmp_path / "folder.yaml")], "folder.yaml' is a folder")
    refused(capsys, eval_stage, ["--config", str(tmp_path / "env.yaml"), "--config", str(tmp_path / "key.yaml")],
            "--config is given more than once")
    refused(capsys, eval_stage, [f"--config={tmp_path / 'key.yaml'}"], "key.yaml: 1 is not a setting's name")
    (tmp_path / "typed.yaml").write_text("num_prompts: many\n")
    err = refused(capsys, eval_stage, ["--config", str(tmp_path / "typed.yaml")],
                  f"argument --num_prompts/--num-prompts: invalid int value: 'many' (from {tmp_path / 'typed.yaml'} or "
                  "the command line)")
    assert "usage:" not in err
    # A list where one value belongs (argparse passes it on untouched; the Trainer failed on it, after making the
    # run's folder).
    (tmp_path / "epochs.yaml").write_text("\n".join(line for line in open(os.path.join(REPO, "configs/tiny/sft.yaml"))
                                                    .read().splitlines() if not line.startswith(("num_train_epochs", "output_dir")))
                                          + "\nnum_train_epochs: [1, 2]\noutput_dir: " + str(tmp_path / "s") + "\n")
    refused(capsys, sft, ["--config", str(tmp_path / "epochs.yaml")],
            "epochs.yaml: num_train_epochs is a list ([1, 2]), but num_train_epochs takes one value")
    (tmp_path / "mapping.yaml").write_text("num_prompts: {many: 9}\n")
    refused(capsys, eval_stage, ["--config", str(tmp_path / "mapping.yaml")], "num_prompts is a mapping")
    assert not (tmp_path / "d").exists()
    assert not (tmp_path / "rm").exists()
    assert not (tmp_path / "s").exists()


def test_a_full_disk_or_a_read_only_folder_inside_a_library_error_is_a_message():
    import errno

    from imdb_dpo.launch.cli import user_message

    def wrapped(cause, outer):
        try:
            try:
                raise cause
            except OSError as e:
                raise outer from e
        except Exception as error:
            return error

    # datasets wraps the OSError of a full disk in its own error; safetensors keeps only the text
    full = wrapped(OSError(errno.ENOSPC, "No space left on device"), RuntimeError("An error occurred while generating"))
    assert user_message(full, ["/out/dpo"]).startswith("No space left on device while writing under /out/dpo.")
    safetensors_style = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                     '"No space left on device" }) (os error 28)')
    assert "No space left on device while writing under /out/sft" in user_message(safetensors_style, ["/out/sft"])
    read_only = OSError(errno.EROFS, "Read-only file system", "/ro/.eval.lock")
    assert user_message(read_only, ["/ro/eval"]).startswith("Read-only file system: /ro/.eval.lock.")
    assert user_message(ValueError("a bug"), []) is None  # anything else keeps its traceback


def test_reward_positive_label_names_the_label(capsys, tiny_base, tiny_sft, tmp_path):
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from imdb_dpo.models.reward import SentimentClassifierReward

    tokenizer = AutoTokenizer.from_pretrained(tiny_sft)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=16, n_layer=1, n_head=2, num_labels=2,
                        id2label={0: "pos", 1: "neg"}, label2id={"pos": 0, "neg": 1}, pad_token_id=tokenizer.eos_token_id)
    classifier = GPT2ForSequenceClassification(config).eval()
    path = tmp_path / "pos_neg_classifier"
    classifier.save_pretrained(path)
    tokenizer.save_pretrained(path)

    refused(capsys, preference_pairs, pairs_argv(tiny_base, tiny_sft, tmp_path / "pairs", "--reward_model", str(path)),
            f"reward_model='{path}' has no label 'POSITIVE' (its labels: ['neg', 'pos'])", "reward_positive_label")
    texts = ["a fine film", "dull and slow", "it was"]
    rewards = SentimentClassifierReward(str(path), batch_size=2, device="cpu", positive_label="pos")(texts)
    with torch.no_grad():
        expected = [torch.softmax(classifier(**tokenizer(t, return_tensors="pt")).logits, -1)[0, 0].item() for t in texts]
    assert rewards == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("values, message", [(["1e-1"], "betas entry '1e-1' is not a number"),
                                             ([True], "betas entry True is not a number")])
def test_a_sweep_entry_that_is_not_a_number_is_named(values, message):
    from imdb_dpo.lifecycle.training_runs import sweep_values

    with pytest.raises(ConfigError, match=message):
        sweep_values("betas", values, "beta", 0.1, 0.1)


@pytest.mark.parametrize("script", ["sft.py", "preference_pairs.py", "dpo.py", "rloo.py", "eval.py"])
@pytest.mark.parametrize("text", ["", "# settings to come\n"])
def test_an_empty_config_is_refused_naming_the_file(script, text, capsys, tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text(text)
    err = refused_in_process(script, ["--config", str(config), "--output_dir", str(tmp_path / "out")], capsys)
    assert f"{config}: the config is empty" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["sft.py", "preference_pairs.py", "dpo.py", "rloo.py", "eval.py",
                                    "train.py kto"])
def test_an_output_dir_that_is_a_file_is_refused_before_any_work(script, capsys, tmp_path):
    taken = tmp_path / "results.txt"
    taken.write_text("a user's file")
    name, *method = script.split()
    config = os.path.join(REPO, "configs", "tiny", f"{method[0] if method else name[:-3]}.yaml")
    err = refused_in_process(name, [*method, "--config", config, "--output_dir", str(taken)], capsys)
    assert f"output_dir={str(taken)!r} is a file, not a folder" in err and taken.read_text() == "a user's file"


def test_an_evaluation_config_of_the_folder_per_method_settings_says_what_replaced_them(tmp_path, capsys):
    old = tmp_path / "eval.yaml"
    old.write_text(f"sft_model: {tmp_path}\nrloo_dir: {tmp_path}/rloo\n")
    err = refused_in_process("eval.py", ["--config", str(old)], capsys)
    assert "unknown config key(s) 'rloo_dir' (the methods' runs are now found under runs_root" in err
