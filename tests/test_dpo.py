"""Stage 3: DPO's loss, learning signal, shared reference pass, resume, LoRA, loss variants and guards."""

import glob
import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from trl import DPOConfig

from imdb_dpo.methods import dpo
from conftest import dpo_argv, kill_once_saved, refused_in_process, run_in_process
from helpers import sequence_log_probs, state_dicts_equal
from imdb_dpo.lifecycle.checkpoints import checkpoint_steps
from imdb_dpo.configuration.arguments import PairsArguments, parse_config
from imdb_dpo.data.reviews import load_reviews, make_prompts
from imdb_dpo.methods.dpo import LOSS_TYPES, PretokenizedDPOTrainer
from imdb_dpo.lifecycle.manifests import file_sha256, read_manifest, write_json_atomic
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.data.pairs import PairFileError, read_pairs
from imdb_dpo.models.reward import VaderReward
from imdb_dpo.models.sampling import plan_batches, sample_batch


def run_dpo(argv) -> int:
    return dpo.main(*parse_config(dpo.STAGES, argv))


@torch.no_grad()
def implicit_reward_margins(policy, reference, pairs):
    """(log pi_c - log ref_c) - (log pi_r - log ref_r) per pair, from the models' own log-probs."""
    margins = []
    for p in pairs:
        chosen = sequence_log_probs(policy, p["prompt_ids"], p["chosen_ids"]) - sequence_log_probs(reference, p["prompt_ids"], p["chosen_ids"])
        rejected = sequence_log_probs(policy, p["prompt_ids"], p["rejected_ids"]) - sequence_log_probs(reference, p["prompt_ids"], p["rejected_ids"])
        margins.append((chosen - rejected).item())
    return torch.tensor(margins)


def test_trl_loss_equals_the_dpo_formula_recomputed_from_log_probs(tiny_sft, tiny_pairs, tiny_dpo, tmp_path):
    pairs = read_pairs(tiny_pairs)[:8]
    beta = 0.37
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, per_device_train_batch_size=8, precompute_ref_log_probs=True,
                     bf16=False, use_cpu=True, report_to="none", activation_checkpointing=False)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs])
    trainer = PretokenizedDPOTrainer(model=tiny_dpo, ref_model=AutoModelForCausalLM.from_pretrained(tiny_sft), args=args,
                                     train_dataset=dataset, processing_class=load_tokenizer(tiny_sft, "right"))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()

    policy, reference = load_causal_lm(tiny_dpo), load_causal_lm(tiny_sft)
    expected = -F.logsigmoid(beta * implicit_reward_margins(policy, reference, pairs)).mean().item()
    assert loss == pytest.approx(expected, rel=1e-4)
    assert abs(expected - 0.6931) > 0.05  # policy differs from reference, so the check has teeth


def test_tiny_dpo_learns_the_preferences_and_raises_the_reward(tiny_base, tiny_sft, tiny_pairs, tiny_dpo):
    pairs = read_pairs(tiny_pairs)
    trained = read_manifest(tiny_dpo)["config"]["script"]["max_train_pairs"]
    sft, policy = load_causal_lm(tiny_sft), load_causal_lm(tiny_dpo)
    accuracy = (implicit_reward_margins(policy, sft, pairs[:trained][::2]) > 0).float().mean().item()
    held_out = (implicit_reward_margins(policy, sft, pairs[trained:]) > 0).float().mean().item()
    # Chance is 0.5. On the pairs of 2026-12-02 (50 steps over 1,600 of them): 0.87 trained on, 0.68 held out.
    assert accuracy > 0.8 and held_out > 0.6, (accuracy, held_out)

    tokenizer = load_tokenizer(tiny_sft)
    args = PairsArguments(train_file=tiny_base["train"], test_file=tiny_base["test"])
    prompts = make_prompts(load_reviews(args, "test"), tokenizer, 64, "test")
    vader = VaderReward()

    def mean_reward(model):
        rewards = []
        for b, batch in enumerate(plan_batches(prompts, 32)):
            samples = sample_batch(model, tokenizer, batch, 4, 48, seed=100 + b)
            rewards += vader([p["prompt"] + c["text"] for p, cs in zip(batch, samples) for c in cs])
        return sum(rewards) / len(rewards)

    sft_reward, dpo_reward = mean_reward(sft), mean_reward(policy)
    assert dpo_reward > sft_reward + 0.1, (sft_reward, dpo_reward)
    manifest = read_manifest(tiny_dpo)
    assert manifest["finished"] and manifest["checkpoints"] and os.path.isfile(os.path.join(tiny_dpo, "training_curves.png"))


def test_two_beta_sweep_runs_the_reference_forward_pass_once(tiny_sft, tiny_pairs, tmp_path, monkeypatch):
    rows = []
    original = PretokenizedDPOTrainer.compute_ref_log_probs

    def counting(self, model, inputs):
        rows.append(inputs["input_ids"].size(0))
        return original(self, model, inputs)

    monkeypatch.setattr(PretokenizedDPOTrainer, "compute_ref_log_probs", counting)
    argv = dpo_argv(tiny_sft, tiny_pairs, tmp_path, "--betas", "0.1", "0.5", "--max_train_pairs", "96",
                    "--max_steps", "2", "--precompute_ref_batch_size", "32")
    assert run_dpo(argv) == 0
    assert sum(rows) == 2 * 96  # chosen + rejected of each pair, once for the whole sweep
    for name in ("sigmoid_beta0.1", "sigmoid_beta0.5"):
        assert read_manifest(tmp_path / name)["finished"]
        assert read_manifest(tmp_path / name)["config"]["training"]["beta"] == float(name.split("beta")[1])


def test_killed_dpo_resumes_to_the_same_step_and_weights(tiny_sft, tiny_pairs, tmp_path):
    extra = ["--betas", "0.1", "--max_train_pairs", "640", "--max_steps", "16", "--save_steps", "4",
             "--per_device_train_batch_size", "16"]
    run_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, tmp_path / "straight", *extra))

    killed = tmp_path / "killed"
    kill_once_saved("dpo.py", dpo_argv(tiny_sft, tiny_pairs, killed, *extra), killed / "sigmoid_beta0.1" / "checkpoint-8",
                    settle=0.3)  # land between two checkpoints
    run_dir = killed / "sigmoid_beta0.1"
    assert not read_manifest(run_dir)["finished"]

    run_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, killed, *extra))
    manifest = read_manifest(run_dir)
    assert manifest["finished"] and manifest["global_step"] == 16
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "sigmoid_beta0.1")
    assert state_dicts_equal(a, AutoModelForCausalLM.from_pretrained(run_dir)) == []
    # Checkpoints keep their weights for the evaluation but not the optimizer state, and the last one, which the
    # run folder's final model duplicates, is gone.
    assert os.path.exists(run_dir / "checkpoint-4" / "model.safetensors")
    assert not glob.glob(str(run_dir / "checkpoint-*" / "optimizer.pt")) and not os.path.exists(run_dir / "checkpoint-16")


def test_lora_dpo_trains_saves_and_loads(tiny_sft, tiny_pairs, tmp_path):
    argv = dpo_argv(tiny_sft, tiny_pairs, tmp_path, "--betas", "0.1", "--max_train_pairs", "64", "--max_steps", "3",
                    "--save_steps", "3", "--use_peft", "true", "--lora_target_modules", "c_attn", "--lora_r", "4",
                    "--learning_rate", "1e-2")
    assert run_dpo(argv) == 0
    run_dir = tmp_path / "sigmoid_beta0.1_lora"
    assert os.path.isfile(run_dir / "adapter_config.json") and os.path.isfile(run_dir / "checkpoint-2" / "adapter_config.json")
    merged = load_causal_lm(str(run_dir))
    assert state_dicts_equal(merged, load_causal_lm(tiny_sft))  # the adapter changed the model
    assert state_dicts_equal(merged, load_causal_lm(str(run_dir / "checkpoint-2")))  # one step earlier


# Every loss TRL 1.16's DPOConfig accepts, each with what it needs, the f-DPO divergences and a weighted combination.
LOSSES = [(loss, ["--label_smoothing", "0.001"] if loss == "exo_pair" else [],
           f"{loss}_beta0.1" + ("_ls0.001" if loss == "exo_pair" else "")) for loss in LOSS_TYPES] + [
    ("robust", ["--label_smoothing", "0.1"], "robust_beta0.1_ls0.1"),
    ("sigmoid", ["--f_divergence_type", "forward_kl"], "sigmoid_fkl_beta0.1"),
    ("sigmoid", ["--f_divergence_type", "js_divergence"], "sigmoid_js_beta0.1"),
    ("ipo", ["--f_divergence_type", "alpha_divergence", "--f_alpha_divergence_coef", "0.3"], "ipo_alpha0.3_beta0.1"),
    ("sigmoid", ["sft", "--loss_weights", "1", "0.5"], "sigmoid+sft_w1-0.5_beta0.1"),
]


def test_the_losses_are_trls_own_list():
    """A TRL upgrade that adds or drops a loss fails here rather than in a user's run."""
    import re

    documented = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"].split("If multiple")[0]
    assert sorted(re.findall(r"`'(\w+)'`", documented)) == sorted(LOSS_TYPES)


@pytest.mark.parametrize("loss, extra, run", LOSSES, ids=[run for _, _, run in LOSSES])
def test_every_loss_trains_with_a_finite_loss_in_its_own_named_run(tiny_sft, tiny_pairs, tmp_path, loss, extra, run):
    argv = dpo_argv(tiny_sft, tiny_pairs, tmp_path, "--betas", "0.1", "--loss_type", loss, *extra, "--max_train_pairs",
                    "32", "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2")
    assert run_dpo(argv) == 0
    assert read_manifest(tmp_path / run)["finished"] and [n for n in os.listdir(tmp_path) if n[0] != "."] == [run]
    losses = [e["loss"] for e in json.load(open(tmp_path / run / "trainer_state.json"))["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(map(math.isfinite, losses)), losses
    assert state_dicts_equal(load_causal_lm(str(tmp_path / run)), load_causal_lm(tiny_sft))  # it trained: they differ


@pytest.mark.parametrize("flags, message", [
    (["--loss_type", "dpo"], "loss_type 'dpo' is not one of TRL"),
    (["--loss_type", "aot", "--f_divergence_type", "js_divergence"], "has no form for loss_type 'aot'"),
    (["--f_divergence_type", "chi2"], "f_divergence_type='chi2': use one of"),
    (["--f_divergence_type", "alpha_divergence", "--f_alpha_divergence_coef", "1.5"], "needs 0 < alpha < 1"),
    (["--loss_type", "exo_pair"], "exo_pair needs label_smoothing > 0"),
    (["--label_smoothing", "0.1"], "reads label smoothing only in"),
    (["--loss_type", "sft", "--betas", "0.1", "1"], "would train the same run 2 times"),
    (["--loss_type", "sigmoid", "sft", "--loss_weights", "1"], "same length as `loss_type`"),
    (["--loss_type", "sigmoid", "sft", "--loss_weights", "1", "-1"], "each weight must be a number > 0"),
])
def test_a_loss_setting_trl_would_fail_on_late_or_ignore_is_refused_before_any_folder(tiny_sft, tiny_pairs, tmp_path,
                                                                                      capsys, flags, message):
    err = refused_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, tmp_path / "out", *flags), capsys)
    assert message in err and not (tmp_path / "out").exists()


def test_non_positive_beta_is_refused_before_anything_is_written(tiny_sft, tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match=r"beta must be a number > 0 \(got 0\); fix betas in the config or on the command line"):
        run_dpo(dpo_argv(tiny_sft, tiny_pairs, tmp_path / "out", "--betas", "0.1", "0"))
    assert not (tmp_path / "out").exists()


def test_invalid_pair_file_is_refused(tiny_sft, tiny_pairs, tmp_path):
    bad_dir = tmp_path / "pairs"
    shutil.copytree(os.path.dirname(tiny_pairs), bad_dir)
    with open(bad_dir / "pairs.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    lines = sum(1 for _ in open(bad_dir / "pairs.jsonl"))
    with pytest.raises(PairFileError, match=rf"line {lines}: missing field 'rejected'"):
        run_dpo(dpo_argv(tiny_sft, str(bad_dir / "pairs.jsonl"), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_token_ids_outside_the_models_vocabulary_are_refused(tiny_sft, tiny_pairs, tmp_path):
    bad_dir = tmp_path / "pairs"
    shutil.copytree(os.path.dirname(tiny_pairs), bad_dir)
    lines = (bad_dir / "pairs.jsonl").read_text().splitlines(keepends=True)
    pair = json.loads(lines[2])
    pair["rejected_ids"][0] = vocabulary = AutoModelForCausalLM.from_pretrained(tiny_sft).config.vocab_size
    lines[2] = json.dumps(pair) + "\n"
    (bad_dir / "pairs.jsonl").write_text("".join(lines))
    manifest = read_manifest(bad_dir)  # as if written so: the edit would otherwise be refused as a changed file
    write_json_atomic(str(bad_dir / "manifest.json"), {**manifest, "pairs_sha256": file_sha256(str(bad_dir / "pairs.jsonl"))})
    with pytest.raises(PairFileError, match=rf"pairs\.jsonl, line 3: token id {vocabulary} is outside the vocabulary"):
        run_dpo(dpo_argv(tiny_sft, str(bad_dir / "pairs.jsonl"), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_pairs_from_another_model_than_the_reference_are_refused(tiny_base, tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match=r"was sampled from .* but model_name_or_path is .*must be the model that generated"):
        run_dpo(dpo_argv(tiny_base["model"], tiny_pairs, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_nan_loss_stops_training_without_writing_a_checkpoint(tiny_sft, tiny_pairs, tmp_path):
    broken = tmp_path / "nan_sft"
    shutil.copytree(tiny_sft, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("ln_f.weight"))
    weights[name][0] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FloatingPointError, match=r"DPO loss is nan at step 1 .* no checkpoint was written"):
        run_dpo(dpo_argv(str(broken), tiny_pairs, tmp_path / "out", "--betas", "0.1", "--max_train_pairs", "64",
                         "--save_steps", "1", "--precompute_ref_log_probs", "false"))
    assert glob.glob(str(tmp_path / "out" / "*" / "checkpoint-*")) == []


def test_the_log_schedule_bounds_the_checkpoints_of_a_dpo_run(tiny_sft, tiny_pairs, tmp_path):
    """The README's way to bound disk: `--checkpoint_schedule log` saves ~log2(steps) checkpoints, each a real
    point of the frontier, and only the newest keeps its optimizer state."""
    common = ["--betas", "0.1", "--max_train_pairs", "640", "--max_steps", "20", "--save_steps", "6",
              "--per_device_train_batch_size", "32"]
    for schedule, expected in (("log+steps", [1, 2, 4, 6, 12, 18, 20]), ("log", [1, 2, 4, 8, 16, 20])):
        out = tmp_path / schedule
        assert run_dpo(dpo_argv(tiny_sft, tiny_pairs, out, *common, "--checkpoint_schedule", schedule)) == 0
        run_dir = out / "sigmoid_beta0.1"
        # The last checkpoint is the run folder's final model, and is dropped once the run finishes.
        assert [s for s, _ in checkpoint_steps(str(run_dir))] == expected[:-1]
        assert read_manifest(run_dir)["checkpoints"] == expected
        assert not glob.glob(str(run_dir / "checkpoint-*" / "optimizer.pt"))


def test_reference_only_with_overwrite_computes_the_log_probs_again(tiny_sft, tiny_pairs, tmp_path, capsys):
    """A second --reference_only reuses the cached log-probs; --overwrite true makes them again (never exit 0
    having done nothing it was asked to)."""
    argv = dpo_argv(tiny_sft, tiny_pairs, tmp_path, "--max_train_pairs", "64", "--reference_only", "true")
    run_in_process("dpo.py", argv)

    def cached():
        return {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / ".datasets_cache" / "**" / "cache-*.arrow"),
                                                              recursive=True)}

    first = cached()
    assert first
    run_in_process("dpo.py", argv)
    assert cached() == first  # reused
    run_in_process("dpo.py", [*argv, "--overwrite", "true"])
    again = cached()
    assert again and all(again.get(p, 0) > t for p, t in first.items() if p in again)
    assert set(again) == set(first)  # the same computation, made anew
