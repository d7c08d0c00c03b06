"""The methods that followed DPO (train.py kto, orpo, orpo_base, cpo, simpo): KTO's labelling rule, the exact sampled
ids each trainer trains on, what each run learns on the tiny preset, a killed run of each resumes to the same
weights, and the settings each refuses."""

import json
import os
import shutil

import pytest
import torch

from conftest import NO_FRONTIER_EVAL, REPO, kill_once_saved, refused_in_process, run_in_process
from helpers import sequence_log_probs, state_dicts_equal
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.methods import registry
from imdb_dpo.methods.kto import kto_examples
from imdb_dpo.models.modeling import load_causal_lm
from imdb_dpo.data.pairs import read_pairs

NEW_METHODS = {"kto": "kto_beta0.1", "orpo": "orpo_beta0.1", "orpo_base": "orpo_base_beta0.1",
               "cpo": "cpo_sigmoid_beta0.1", "simpo": "simpo_beta2_gamma0.5"}
# Not in the tiny pipeline (its time budget): run from the config of the method they share a trainer with.
OFF_PIPELINE = {"orpo_base": ("orpo", []), "cpo": ("simpo", ["--loss_type", "sigmoid", "--cpo_alpha", "1",
                                                             "--betas", "0.1"])}


def method_argv(method: str, root, output_dir, *extra) -> list[str]:
    """`train.py <method>` with the tiny preset's config, its inputs in the session's tiny run."""
    generations = root / "generations/tiny"
    inputs = (["--completions_file", str(generations / "completions.jsonl")] if method == "kto"
              else ["--pairs_file", str(generations / "pairs.jsonl")])
    start = root / ("outputs/tiny/base/model" if method == "orpo_base" else "outputs/tiny/sft")
    config, flags = OFF_PIPELINE.get(method, (method, []))
    return [method, "--config", os.path.join(REPO, f"configs/tiny/{config}.yaml"), "--model_name_or_path", str(start),
            *inputs, *flags, "--output_dir", str(output_dir), *extra]


@pytest.fixture(scope="session")
def method_runs(tiny_run, tmp_path_factory):
    """Each new method's finished run on the tiny preset: the pipeline's, and for ORPO from the base model and CPO
    one trained here as the pipeline would (without evaluating its checkpoints)."""
    runs = {m: tiny_run["root"] / f"outputs/tiny/{m}/{run}" for m, run in NEW_METHODS.items() if m not in OFF_PIPELINE}
    for method in OFF_PIPELINE:
        root = tmp_path_factory.mktemp(method)
        run_in_process("train.py", method_argv(method, tiny_run["root"], root, *NO_FRONTIER_EVAL))
        runs[method] = root / NEW_METHODS[method]
    return runs


def test_kto_labels_follow_the_median_rule():
    def sample(reward, token):
        return {"ids": [token], "reward": reward}

    records = [
        {"prompt_ids": [1], "completions": [sample(0.9, 10), sample(0.1, 11), sample(0.5, 12), sample(0.5, 13)]},
        {"prompt_ids": [2, 3], "completions": [sample(0.2, 20), sample(0.4, 21), sample(0.6, 22)]},  # odd: 0.4 out
        {"prompt_ids": [4], "completions": [sample(0.3, 30), sample(0.3, 31)]},  # all alike: none
        {"prompt_ids": [5], "completions": [sample(0.7, 40), sample(0.8, 41)]},  # median 0.75
    ]
    rows = kto_examples(records)
    assert [(r["prompt_ids"], r["completion_ids"], r["label"]) for r in rows] == [
        ([1], [10], True), ([1], [11], False), ([2, 3], [20], False), ([2, 3], [22], True), ([5], [40], False),
        ([5], [41], True)]
    assert kto_examples(records, 3) == rows[:3]


def test_the_preset_labels_half_the_samples_each_way(tiny_run):
    with open(tiny_run["root"] / "generations/tiny/completions.jsonl") as f:
        records = [json.loads(line) for line in f]
    rows = kto_examples(records)
    desirable = sum(r["label"] for r in rows)
    assert 0.45 < desirable / len(rows) < 0.55 and len(rows) > 0.8 * sum(len(r["completions"]) for r in records)


def trainer_rows(method: str, root, tmp_path):
    """The rows `method`'s recipe reads from the tiny preset's samples, and its trainer's data set made from them."""
    from datasets import Dataset
    from trl import get_peft_config

    from imdb_dpo.configuration.arguments import parse_config
    from imdb_dpo.methods import registry
    from imdb_dpo.models.modeling import load_tokenizer, set_model_init_kwargs

    recipe = registry()[method].recipe
    script_args, training_args, model_args = parse_config(recipe.stages, method_argv(method, root, tmp_path)[1:],
                                                          "train.py")
    recipe.check(training_args)
    set_model_init_kwargs(training_args, model_args)
    rows, _ = recipe.examples(script_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")
    trainer = recipe.trainer(model=model_args.model_name_or_path, args=training_args,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=get_peft_config(model_args))
    return rows, trainer.train_dataset, tokenizer.eos_token_id


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_pair_trainers_train_on_the_sampled_ids_without_an_added_eos(method, tiny_run, tmp_path):
    rows, prepared, eos = trainer_rows(method, tiny_run["root"], tmp_path)
    cut = [i for i, r in enumerate(rows) if r["chosen_ids"][-1] != eos][:5]  # completions the length cap cut
    assert cut
    for i in [0, 1, *cut]:
        row, seen = rows[i], prepared[i]
        prompt = row["prompt_ids"]
        assert seen["prompt_input_ids"] == prompt
        for side in ("chosen", "rejected"):
            assert seen[f"{side}_input_ids"] == prompt + row[f"{side}_ids"]
            assert seen[f"{side}_labels"] == [-100] * len(prompt) + row[f"{side}_ids"]


def test_kto_trains_on_the_sampled_ids_with_trls_mismatched_kl_completions(tiny_run, tmp_path):
    rows, prepared, _ = trainer_rows("kto", tiny_run["root"], tmp_path)
    batch = 32  # the tiny config's per_device_train_batch_size
    assert prepared["completion_ids"] == [r["completion_ids"] for r in rows]
    assert prepared["label"] == [r["label"] for r in rows]
    for start in (0, batch):
        completions = [r["completion_ids"] for r in rows[start:start + batch]]
        assert prepared["KL_completion_ids"][start:start + batch] == completions[-1:] + completions[:-1]
    assert "ref_logps" in prepared.column_names and "ref_KL_logps" in prepared.column_names  # precomputed once


def mean_margin(model, rows, first: str, second: str) -> float:
    with torch.no_grad():
        return sum(sequence_log_probs(model, r["prompt_ids"], r[first]).item()
                   - sequence_log_probs(model, r["prompt_ids"], r[second]).item() for r in rows) / len(rows)


@pytest.mark.parametrize("method", ["orpo", "orpo_base", "cpo", "simpo"])
def test_each_pair_method_pulls_the_chosen_above_the_rejected(method, tiny_run, method_runs):
    root, run = tiny_run["root"], method_runs[method]
    manifest = read_manifest(run)
    assert manifest["finished"] and manifest["stage"] == method and manifest["global_step"] == 13
    trained = read_pairs(str(root / "generations/tiny/pairs.jsonl"))[:400][::8]
    start = load_causal_lm(str(root / ("outputs/tiny/base/model" if method == "orpo_base" else "outputs/tiny/sft")))
    before = mean_margin(start, trained, "chosen_ids", "rejected_ids")
    after = mean_margin(load_causal_lm(str(run)), trained, "chosen_ids", "rejected_ids")
    print(f"{method}: log p(chosen) - log p(rejected) {before:.2f} -> {after:.2f}")
    assert after > before + 0.5


def test_kto_raises_the_desirable_completions_over_the_undesirable(tiny_run):
    root = tiny_run["root"]
    with open(root / "generations/tiny/completions.jsonl") as f:
        rows = kto_examples([json.loads(line) for line in f], 400)[::4]
    good = [r for r in rows if r["label"]]
    bad = [r for r in rows if not r["label"]]

    def gap(model):
        with torch.no_grad():
            mean = [sum(sequence_log_probs(model, r["prompt_ids"], r["completion_ids"]).item() for r in side)
                    / len(side) for side in (good, bad)]
        return mean[0] - mean[1]

    before = gap(load_causal_lm(str(root / "outputs/tiny/sft")))
    after = gap(load_causal_lm(str(root / "outputs/tiny/kto/kto_beta0.1")))
    print(f"KTO: mean log p(desirable) - mean log p(undesirable) {before:.2f} -> {after:.2f}")
    assert after > before + 0.5


# One method of each trainer (ORPO from the base model is ORPO's trainer and recipe from another start; CPO is
# SimPO's trainer and recipe with another loss).
@pytest.mark.parametrize("method", ["kto", "orpo", "simpo"])
def test_a_killed_run_resumes_to_the_preset_runs_weights(method, tiny_run, method_runs, tmp_path):
    argv = method_argv(method, tiny_run["root"], tmp_path, *NO_FRONTIER_EVAL)
    run_dir = tmp_path / NEW_METHODS[method]
    kill_once_saved("train.py", argv, run_dir / "checkpoint-8", settle=0.3)  # between two checkpoints
    assert not read_manifest(run_dir)["finished"]
    run_in_process("train.py", argv)
    assert read_manifest(run_dir)["finished"]
    uninterrupted = load_causal_lm(str(method_runs[method]))
    assert state_dicts_equal(uninterrupted, load_causal_lm(str(run_dir))) == []


@pytest.mark.parametrize("method, extra, expected", [
    ("cpo", ["--loss_type", "simpo"], "train.py simpo"),
    ("simpo", ["--loss_type", "sigmoid"], "set loss_type: simpo"),
    ("cpo", ["--cpo_alpha", "-1"], "cpo_alpha=-1.0"),
    ("cpo", ["--simpo_gamma", "1"], "simpo_gamma=1.0 is SimPO's target margin"),
    ("cpo", ["--loss_type", "hinge", "--label_smoothing", "0.1"], "hinge loss ignores it"),
    ("orpo", ["--betas", "0"], "beta must be a number > 0"),
    ("kto", ["--max_train_examples", "0"], "max_train_examples"),
    ("kto", ["--desirable_weight", "0"], "desirable_weight=0.0"),
    ("kto", ["--undesirable_weight", "nan"], "undesirable_weight=nan"),
    ("simpo", ["--simpo_gamma", "-0.5"], "simpo_gamma=-0.5"),
])
def test_bad_settings_are_refused_before_any_folder(method, extra, expected, tiny_run, tmp_path, capsys):
    err = refused_in_process("train.py", method_argv(method, tiny_run["root"], tmp_path / "out", *extra), capsys)
    assert expected in err and not (tmp_path / "out").exists()


def test_orpo_from_sft_must_start_from_the_model_that_sampled_the_pairs(tiny_run, tmp_path, capsys):
    argv = method_argv("orpo", tiny_run["root"], tmp_path / "out", *NO_FRONTIER_EVAL)
    argv[argv.index("--model_name_or_path") + 1] = str(tiny_run["root"] / "outputs/tiny/base/model")
    err = refused_in_process("train.py", argv, capsys)
    assert "must be the model that generated the pairs" in err and "train.py orpo_base" not in err


def test_a_changed_completions_file_is_named_with_its_line_and_field(tiny_run, tmp_path, capsys):
    generations = tmp_path / "generations"
    shutil.copytree(tiny_run["root"] / "generations/tiny", generations)
    path = generations / "completions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["completions"][1]["reward"] = None
    lines[2] = json.dumps(record) + "\n"
    path.write_text("".join(lines))
    argv = method_argv("kto", tiny_run["root"], tmp_path / "out", *NO_FRONTIER_EVAL)
    argv[argv.index("--completions_file") + 1] = str(path)
    err = refused_in_process("train.py", argv, capsys)
    assert f"{path}, line 3: completions[1].reward is not a finite number" in err
    argv[argv.index("--completions_file") + 1] = str(tmp_path / "missing.jsonl")
    assert "not found; run preference_pairs.py first" in refused_in_process("train.py", argv, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [([], "no method given"), (["dpa"], "no method 'dpa'"),
                                            (["--config", "x.yaml"], "no method given")])
def test_train_py_without_a_known_method_says_which_there_are(argv, expected, capsys):
    import train

    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and ", ".join(registry()) in err and "Traceback" not in err


def test_train_py_runs_the_papers_stages_as_their_scripts(tiny_run, tmp_path, capsys):
    argv = ["dpo", "--config", os.path.join(REPO, "configs/tiny/dpo.yaml"), "--output_dir", str(tmp_path / "out"),
            "--betas", "0"]
    err = refused_in_process("train.py", argv, capsys)
    assert "beta must be a number > 0" in err and not (tmp_path / "out").exists()


def test_the_report_names_each_method_that_did_not_raise_the_reward_above_sft():
    from imdb_dpo.evaluation.report import against_sft

    def final(method, run, mean, lo, loss=""):
        return {"method": method, "run": run, "loss_type": loss, "reward_mean": mean, "reward_lo": lo,
                "reward_hi": f"{float(mean) + 0.05:.3f}"}

    rows = [final("sft", "sft", "0.600", "0.550"), final("kto", "kto_beta0.1", "0.700", "0.620"),
            final("orpo_base", "orpo_base_beta0.1", "0.630", "0.590"), final("cpo", "cpo_hinge_beta0.1", "0.550",
                                                                              "0.500", "hinge"),
            final("cpo", "cpo_sigmoid_beta0.1", "0.650", "0.610", "sigmoid")]
    raised, missed = against_sft(rows)[1:]
    assert raised == "Raised the reward above the SFT model's 0.600 (a final model's 95% interval entirely above it): " \
                     "KTO, CPO."
    assert missed == ("Did not: ORPO from the base model (best final model `orpo_base_beta0.1`: 0.630, 0.590-0.680); "
                      "CPO (hinge) (best final model `cpo_hinge_beta0.1`: 0.550, 0.500-0.600).")


def test_a_sweep_of_two_betas_is_skipped_when_run_again(tiny_run, tmp_path, capsys):
    """TRL's ORPO and CPO edit the config's model_init_kwargs in place: the second run must still record the settings
    it was asked for, or a rerun refuses it as other settings."""
    argv = method_argv("orpo", tiny_run["root"], tmp_path, *NO_FRONTIER_EVAL, "--betas", "0.1", "0.2", "--max_steps",
                       "1", "--max_train_pairs", "32")
    run_in_process("train.py", argv)
    run_in_process("train.py", argv)
    assert capsys.readouterr().out.count("skipping") == 2
