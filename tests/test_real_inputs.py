"""Real inputs through the stage contracts: GPT-2's own tokenizer, every kind of sample a model can produce
(a completion that ends at once, whitespace, a cut multi-byte character, equal text with other ids), a model
that often stops at once, and a KL that bf16 rounding cannot bias."""

import csv
import glob
import json
import os
import random

import pytest
import torch
import yaml
from torch.distributions import Categorical, kl_divergence
from trl.trainer.dpo_trainer import DataCollatorForPreference

from imdb_dpo.methods import dpo
import eval as eval_stage
import preference_pairs
from conftest import CPU_FLAGS, NO_FRONTIER_EVAL, REPO, dpo_argv
from helpers import build_gpt2_stand_in
from imdb_dpo.configuration.arguments import EvalArguments, parse_config
from imdb_dpo.lifecycle.manifests import Manifest, describe_model_input, read_manifest
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.data.pairs import make_pairs, rank, read_pairs, write_pairs
from imdb_dpo.models.sampling import completion
from test_eval import records_file

GPT2_LARGE = os.path.join(REPO, "configs", "gpt2-large")


def odd_samples(tokenizer) -> list[list[int]]:
    """Generated rows (before the EOS cut) of every awkward kind, as GPT-2's tokenizer encodes them."""
    eos = tokenizer.eos_token_id
    film = tokenizer.encode("🎬")  # three byte-level tokens; the first one or two decode to U+FFFD
    return [
        [eos, 262, 3807],                  # ends at once: ids [eos], text ""
        [220, 220, eos],                   # whitespace only
        [220, 628],                        # whitespace with newlines, cut at the length cap
        film[:1], film[:2],                # two different cut characters, the same text "\ufffd"
        [262], [220, 1169],                # " the" as one token and as two: equal text, other ids
        tokenizer.encode(" Stör")[:2],     # a cut inside a word
        tokenizer.encode(" a great film, truly moving.") + [eos],
        tokenizer.encode(" dull and far too long"),
    ]


def ranked_records(tokenizer, num_prompts: int, seed: int) -> list[dict]:
    """Prompt records as stage 2 writes them, each with 4 samples drawn from the odd kinds and random rewards
    (some tied): built with the stage's own `completion` and `rank`."""
    rng = random.Random(seed)
    kinds, prompts = odd_samples(tokenizer), ["I saw", "This film is", "Honestly,"]
    records = []
    for i in range(num_prompts):
        completions = [completion(rng.choice(kinds), tokenizer) for _ in range(4)]
        for c in completions:
            c["reward"] = rng.choice([0.1, 0.5, 0.5, 0.9, rng.random()])
        prompt = prompts[i % len(prompts)]
        records.append({"prompt_id": f"train-{i}", "prompt": prompt, "prompt_ids": tokenizer.encode(prompt),
                        "completions": completions, "ranking": rank([c["reward"] for c in completions])})
    return records


def expected_pairs(record) -> set[tuple]:
    """Every (chosen ids, rejected ids) the contract allows: a reward gap and different text."""
    cs = record["completions"]
    return {(tuple(a["ids"]), tuple(b["ids"])) for a in cs for b in cs
            if a["reward"] > b["reward"] and a["text"] != b["text"]}


def test_every_kind_of_sample_is_paired_written_read_and_trained_on(gpt2_stand_in, tmp_path):
    tokenizer = load_tokenizer(gpt2_stand_in)
    records = ranked_records(tokenizer, 24, seed=0)
    texts = {c["text"] for r in records for c in r["completions"]}
    assert {"", "  ", "\ufffd", " the"} <= texts  # the odd kinds are really there

    pairs = [p for r in records for p in make_pairs(r)]
    for record in records:
        made = {(tuple(p["chosen_ids"]), tuple(p["rejected_ids"])) for p in pairs if p["prompt_id"] == record["prompt_id"]}
        assert made == expected_pairs(record)
    assert any(p["chosen"] == "" for p in pairs) and any(p["rejected"] == "" for p in pairs)
    assert any(p["chosen"].strip() == "" != p["chosen"] for p in pairs)
    assert any("\ufffd" in p["chosen"] + p["rejected"] for p in pairs)

    directory = tmp_path / "pairs"
    write_pairs(str(directory / "pairs.jsonl"), pairs)
    Manifest(str(directory), "preference_pairs", {}, {"model": describe_model_input(gpt2_stand_in)}).finish()
    assert read_pairs(str(directory / "pairs.jsonl")) == pairs

    # TRL's collator marks each completion by its length, so an EOS that is also the pad token still counts.
    rows = [{"prompt_ids": p["prompt_ids"], "chosen_ids": p["chosen_ids"], "rejected_ids": p["rejected_ids"]} for p in pairs]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(rows)
    lengths = [len(p["chosen_ids"]) for p in pairs] + [len(p["rejected_ids"]) for p in pairs]
    assert batch["completion_mask"].sum(1).tolist() == lengths

    out = tmp_path / "dpo"
    argv = dpo_argv(gpt2_stand_in, str(directory / "pairs.jsonl"), out, "--betas", "0.1", "--per_device_train_batch_size",
                    "8", "--save_steps", "100", "--logging_steps", "1")
    assert dpo.main(*parse_config(dpo.STAGES, argv)) == 0
    manifest = read_manifest(out / "sigmoid_beta0.1")
    assert manifest["finished"] and manifest["global_step"] == -(-len(pairs) // 8)  # every pair, in whole steps
    state = json.load(open(out / "sigmoid_beta0.1" / "trainer_state.json"))
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_gpt2_large_preset_runs_every_stage_with_gpt2s_tokenizer_on_real_reviews(gpt2_stand_in, gpt2_classifier,
                                                                                 imdb_sample, tmp_path, monkeypatch):
    """The preset users run, with only the model and the classifier swapped for random-weight stand-ins."""
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    data = ["--train_file", imdb_sample["train"], "--test_file", imdb_sample["test"]]
    tokenizer = load_tokenizer(gpt2_stand_in)
    lengths = [len(tokenizer.encode(json.loads(line)["text"])) for line in open(imdb_sample["train"])][:200]
    assert max(lengths) > 1024  # reviews longer than GPT-2's context reach SFT, which must truncate them

    import sft

    argv = ["--config", f"{GPT2_LARGE}/sft.yaml", "--model_name_or_path", gpt2_stand_in, *data, "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--examples_per_step", "2", "--gradient_accumulation_steps", "1", "--max_eval_samples", "4",
            "--max_train_samples", "200", *CPU_FLAGS]
    assert sft.main(*parse_config(sft.STAGES, argv)) == 0
    sft_dir = tmp_path / "outputs/gpt2-large/sft"
    assert read_manifest(sft_dir)["finished"] and len(load_tokenizer(str(sft_dir))) == 50257

    argv = ["--config", f"{GPT2_LARGE}/preference_pairs.yaml", *data, "--num_prompts", "8", "--batch_size", "4",
            "--max_new_tokens", "8", "--reward_model", gpt2_classifier, "--reward_batch_size", "8"]
    assert preference_pairs.main(*parse_config(preference_pairs.STAGES, argv)) == 0
    generations = tmp_path / "generations/gpt2-large"
    pairs = read_pairs(str(generations / "pairs.jsonl"))
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    for record in map(json.loads, open(generations / "completions.jsonl")):
        assert 2 <= len(record["prompt_ids"]) <= 8 and tokenizer.decode(record["prompt_ids"]) == record["prompt"]

    # The preset's evaluation with the stand-ins and small counts: DPO evaluates its checkpoints under it while it
    # trains (the preset's frontier_eval), and eval.py below, run with it, gathers those records.
    with open(f"{GPT2_LARGE}/eval.yaml") as f:
        evaluation = yaml.safe_load(f)
    evaluation.update(train_file=imdb_sample["train"], test_file=imdb_sample["test"], base_model=gpt2_stand_in,
                      num_prompts=4, batch_size=4, max_new_tokens=8, best_of_n_samples=4, reward_model=gpt2_classifier,
                      report_to="none")  # the preset's wandb logging: tests/test_tracker.py
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(yaml.safe_dump(evaluation))
    # Two of the preset's three seeds: seed 0's runs keep their final model (keep_final_model_seeds), seed 1's not.
    argv = ["--config", f"{GPT2_LARGE}/dpo.yaml", "--frontier_eval", str(eval_config), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--examples_per_step", "4", "--save_steps", "1", "--seeds", "0", "1", *CPU_FLAGS]
    assert dpo.main(*parse_config(dpo.STAGES, argv)) == 0
    runs = sorted(r for r in os.listdir(tmp_path / "outputs/gpt2-large/dpo") if not r.startswith("."))
    assert runs == [f"sigmoid_beta{b}_seed{s}" for b in ("0.05", "0.1", "1", "5") for s in (0, 1)]
    for run in runs:
        run_dir = tmp_path / "outputs/gpt2-large/dpo" / run
        # lr-log: the warm-up's first step learns nothing (learning rate 0), so no point lies there.
        assert read_manifest(run_dir)["checkpoints"] == [2] and not glob.glob(str(run_dir / "checkpoint-*"))
        assert (run_dir / "model.safetensors").is_file() == run.endswith("_seed0"), run

    from imdb_dpo.methods import preferred_ft
    from imdb_dpo.methods import rloo
    from imdb_dpo.methods import unlikelihood

    one_seed = ["--seeds", "0"]  # without frontier_eval, a run that dropped its final model would lose its last point
    argv = ["--config", f"{GPT2_LARGE}/rloo.yaml", *NO_FRONTIER_EVAL, *one_seed, "--kl_coefs", "0.05", "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--examples_per_step", "8", "--max_completion_length", "8", "--save_steps", "1",
            "--reward_model", gpt2_classifier, *CPU_FLAGS]
    assert rloo.main(*parse_config(rloo.STAGES, argv)) == 0
    assert read_manifest(tmp_path / "outputs/gpt2-large/rloo/rloo_kl0.05_seed0")["checkpoints"] == [2]
    argv = ["--config", f"{GPT2_LARGE}/preferred_ft.yaml", *NO_FRONTIER_EVAL, *one_seed, "--max_steps", "2", "--per_device_train_batch_size", "4", "--examples_per_step", "4",
            "--save_steps", "1", *CPU_FLAGS]
    assert preferred_ft.main(*parse_config(preferred_ft.STAGES, argv)) == 0
    argv = ["--config", f"{GPT2_LARGE}/unlikelihood.yaml", *NO_FRONTIER_EVAL, *one_seed, "--alphas", "1", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--examples_per_step", "4", *CPU_FLAGS]
    assert unlikelihood.main(*parse_config(unlikelihood.STAGES, argv)) == 0
    assert read_manifest(tmp_path / "outputs/gpt2-large/unlikelihood/unlikelihood_alpha1_seed0")["checkpoints"] == [2]

    from imdb_dpo.methods import reward_model

    argv = ["--config", f"{GPT2_LARGE}/reward_model.yaml", "--num_train_epochs", "2", "--validation_fraction", "0.25",
            "--per_device_train_batch_size", "16", "--examples_per_step", "16", "--per_device_eval_batch_size", "16", *CPU_FLAGS]
    assert reward_model.main(*parse_config(reward_model.STAGES, argv)) == 0
    manifest = read_manifest(tmp_path / "outputs/gpt2-large/reward_model")
    assert manifest["prompts"]["validation"] == 2 and len(manifest["validation_accuracy"]) == 2
    argv = ["--config", f"{GPT2_LARGE}/rloo_rm.yaml", *NO_FRONTIER_EVAL, *one_seed, "--kl_coefs", "0.05", "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--examples_per_step", "8", "--max_completion_length", "8", *CPU_FLAGS]
    assert rloo.main(*parse_config(rloo.STAGES, argv)) == 0
    assert read_manifest(tmp_path / "outputs/gpt2-large/rloo_rm/rloo_rm_kl0.05_seed0")["checkpoints"] == [2]

    import train

    # KTO's completions, ORPO's trainer from another start than the pairs' sampler, CPO's trainer with SimPO's loss,
    # online DPO's sampling and reward.
    own = {"orpo_base": ["--model_name_or_path", gpt2_stand_in],  # the hub's gpt2-large
           "online_dpo": ["--reward_model", gpt2_classifier, "--max_new_tokens", "8"]}
    for method, run in (("kto", "kto_beta0.1"), ("orpo_base", "orpo_base_beta0.1"), ("simpo", "simpo_beta2_gamma1"),
                        ("online_dpo", "online_sigmoid_beta0.1")):
        argv = [method, "--config", f"{GPT2_LARGE}/{method}.yaml", *NO_FRONTIER_EVAL, "--betas", run.split("beta")[1]
                .split("_")[0], "--max_steps", "2", "--per_device_train_batch_size", "4", "--examples_per_step", "4", "--save_steps", "1",
                *own.get(method, []), *CPU_FLAGS]
        assert train.main(argv) == 0, method
        assert read_manifest(tmp_path / f"outputs/gpt2-large/{method}/{run}")["checkpoints"] == [2], method

    assert eval_stage.main(*parse_config(eval_stage.STAGES, ["--config", str(eval_config)])) == 0
    assert os.path.isfile(tmp_path / "outputs/gpt2-large/eval/report.md")
    with open(tmp_path / "outputs/gpt2-large/eval/summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["method"] for row in rows} == {"sft", "base", "dpo", "rloo", "rloo_rm", "preferred_ft", "unlikelihood",
                                                "kto", "orpo_base", "simpo", "online_dpo", "best_of_n"}
    for seed in ("0", "1", "mean"):  # both steps gathered, seed 1's last from its records alone
        assert sorted(int(r["step"]) for r in rows if r["setting"] == "sigmoid_beta0.1" and r["seed"] == seed) == [2]


@pytest.fixture(scope="module")
def eos_heavy_model(gpt2_tokenizer_dir, tmp_path_factory):
    """A GPT-2 stand-in that ends about a third of its samples at the first token."""
    return build_gpt2_stand_in(tmp_path_factory.mktemp("eos_heavy"), gpt2_tokenizer_dir, eos_logit=10.0)


def test_a_model_that_often_stops_at_once_runs_through_pairs_dpo_and_eval(eos_heavy_model, gpt2_classifier, imdb_sample,
                                                                          tmp_path, monkeypatch):
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    data = ["--train_file", imdb_sample["train"], "--test_file", imdb_sample["test"]]
    argv = ["--config", f"{GPT2_LARGE}/preference_pairs.yaml", *data, "--model_name_or_path", eos_heavy_model,
            "--num_prompts", "16", "--batch_size", "8", "--max_new_tokens", "8", "--reward_model", gpt2_classifier]
    assert preference_pairs.main(*parse_config(preference_pairs.STAGES, argv)) == 0
    generations = tmp_path / "generations/gpt2-large"
    samples = [c for line in open(generations / "completions.jsonl") for c in json.loads(line)["completions"]]
    eos = load_tokenizer(eos_heavy_model).eos_token_id
    stopped_at_once = [c for c in samples if c["ids"] == [eos]]
    assert len(stopped_at_once) >= 8 and all(c["text"] == "" and c["finish"] == "eos" for c in stopped_at_once)
    pairs = read_pairs(str(generations / "pairs.jsonl"))
    assert any(p["chosen"] == "" or p["rejected"] == "" for p in pairs)

    argv = ["--config", f"{GPT2_LARGE}/dpo.yaml", *NO_FRONTIER_EVAL, "--seeds", "0", "--model_name_or_path", eos_heavy_model, "--betas", "0.1",
            "--max_steps", "2", "--per_device_train_batch_size", "8", "--examples_per_step", "8", "--save_steps", "1", *CPU_FLAGS]
    assert dpo.main(*parse_config(dpo.STAGES, argv)) == 0
    assert read_manifest(tmp_path / "outputs/gpt2-large/dpo/sigmoid_beta0.1_seed0")["finished"]

    argv = ["--config", f"{GPT2_LARGE}/eval.yaml", *data, "--sft_model", eos_heavy_model, "--base_model", "",
            "--num_prompts", "8", "--batch_size", "8", "--max_new_tokens", "8", "--best_of_n_samples", "4",
            "--reward_model", gpt2_classifier, "--report_to", "none"]
    assert eval_stage.main(*parse_config(eval_stage.STAGES, argv)) == 0
    with open(tmp_path / "outputs/gpt2-large/eval/summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} >= {"sft", "sigmoid_beta0.1_seed0"}
    records_dir = next((tmp_path / "outputs/gpt2-large/eval/records").iterdir())
    records = [json.loads(line) for line in open(records_file(records_dir, "sigmoid_beta0.1_seed0", 2))]
    assert any(r["completion_ids"] == [eos] and r["text"] == "" for r in records)
    assert all(r["kl_exact"] >= 0 for r in records)


# --- the KL of the evaluation: bf16 rounding biases it, the default precision does not ---


@pytest.fixture(scope="module")
def gpt2_magnitude_pair(gpt2_tokenizer_dir, tmp_path_factory):
    """A reference whose logits have GPT-2's magnitude (about -100, a few nats of spread) and a policy one small
    fine-tuning step away from it, saved in fp32 as DPO checkpoints are."""
    root = tmp_path_factory.mktemp("gpt2_magnitude")
    reference = build_gpt2_stand_in(root / "reference", gpt2_tokenizer_dir, logit_scale=25.0, logit_shift=-100.0)
    policy = load_causal_lm(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        head = policy.lm_head.weight
        head[:, 2:] += 0.02 * torch.randn_like(head[:, 2:])
    run = root / "dpo" / "sigmoid_beta0.1"
    policy.save_pretrained(run)
    load_tokenizer(reference).save_pretrained(run)
    Manifest(str(run), "dpo", {"training": {"loss_type": ["sigmoid"], "beta": 0.1}}, {}).finish(global_step=1)
    return {"reference": reference, "runs_root": str(root), "policy": str(run)}


@torch.no_grad()
def float64_kl(policy, reference, record) -> float:
    """sum_t KL(pi || pi_ref) over the sampled positions, one unbatched float64 forward per sequence."""
    prompt, ids = record["prompt_ids"], record["completion_ids"]
    sequence = torch.tensor([prompt + ids])
    p, q = policy(sequence).logits[0, len(prompt) - 1 : -1], reference(sequence).logits[0, len(prompt) - 1 : -1]
    return kl_divergence(Categorical(logits=p), Categorical(logits=q)).sum().item()


def evaluate_kl(pair, imdb_sample, output_dir, *flags) -> tuple[float, float]:
    """(the evaluation's mean KL of the policy, the float64 KL of the very same samples)."""
    argv = ["--config", f"{GPT2_LARGE}/eval.yaml", "--sft_model", pair["reference"], "--base_model", "",
            "--runs_root", pair["runs_root"], "--methods", "dpo", "--output_dir", str(output_dir), "--train_file", imdb_sample["train"],
            "--test_file", imdb_sample["test"], "--num_prompts", "4", "--batch_size", "4", "--max_new_tokens", "32",
            "--best_of_n_samples", "4", "--reward_model", "vader", "--report_to", "none", *flags]
    assert eval_stage.main(*parse_config(eval_stage.STAGES, argv)) == 0
    records_dir = next((output_dir / "records").iterdir())
    records = [json.loads(line) for line in open(records_file(records_dir, "sigmoid_beta0.1", 1))]
    policy, reference = (load_causal_lm(p, torch.float64) for p in (pair["policy"], pair["reference"]))
    reported = sum(r["kl_exact"] for r in records) / len(records)
    return reported, sum(float64_kl(policy, reference, r) for r in records) / len(records)


def test_bf16_biases_the_kl_and_the_default_precision_does_not(gpt2_magnitude_pair, imdb_sample, tmp_path):
    assert (EvalArguments().sampling_dtype, EvalArguments().kl_dtype) == ("float32", "float32")
    reported, exact = evaluate_kl(gpt2_magnitude_pair, imdb_sample, tmp_path / "default")
    assert 0.1 < exact < 2.0  # a small, real distance: the region where the paper's frontier lives
    assert reported == pytest.approx(exact, rel=0.01)

    reported_bf16, exact_bf16 = evaluate_kl(gpt2_magnitude_pair, imdb_sample, tmp_path / "bf16",
                                            "--sampling_dtype", "bfloat16", "--kl_dtype", "bfloat16")
    print(f"KL fp32 {reported:.4f} vs float64 {exact:.4f}; bf16 {reported_bf16:.4f} vs float64 {exact_bf16:.4f}")
    assert reported_bf16 - exact_bf16 > max(0.3, 0.5 * exact_bf16), (reported_bf16, exact_bf16)


def test_an_unknown_precision_is_refused_before_any_work(gpt2_magnitude_pair, imdb_sample, tmp_path):
    from imdb_dpo.configuration.arguments import ConfigError

    argv = ["--config", f"{GPT2_LARGE}/eval.yaml", "--sft_model", gpt2_magnitude_pair["reference"],
            "--output_dir", str(tmp_path / "out"), "--kl_dtype", "bf16"]
    with pytest.raises(ConfigError, match=r"kl_dtype='bf16': use one of \['bfloat16', 'float16', 'float32'\]"):
        eval_stage.main(*parse_config(eval_stage.STAGES, argv))
    assert not (tmp_path / "out").exists()
