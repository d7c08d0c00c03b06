"""Stage 4: KL estimators, best-of-N, intervals, win rate, incremental evaluation, and the report."""

import csv
import glob
import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

import eval as eval_stage
from imdb_dpo.evaluation import evaluator as model_eval
from conftest import REPO
from imdb_dpo.configuration.arguments import PairsArguments, parse_config
from imdb_dpo.data.reviews import load_reviews, make_prompts, prompts_for
from imdb_dpo.evaluation.statistics import best_of_n_kl_bound, distinct_n, win_rate
from imdb_dpo.evaluation.kl import sequence_kls
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.models.sampling import plan_batches, sample_batch


def eval_argv(tiny_base, tiny_sft, dpo_root, output_dir, *extra):
    """The tiny evaluation of the DPO runs in `dpo_root` (a folder named dpo: <runs_root>/dpo; "" for none)."""
    assert not dpo_root or os.path.basename(dpo_root) == "dpo", dpo_root
    return ["--config", os.path.join(REPO, "configs/tiny/eval.yaml"), "--sft_model", tiny_sft,
            "--base_model", tiny_base["model"], "--runs_root", os.path.dirname(dpo_root) if dpo_root else "",
            "--methods", "dpo", "--output_dir", str(output_dir),
            "--train_file", tiny_base["train"], "--test_file", tiny_base["test"], "--num_prompts", "24",
            "--batch_size", "12", *extra]


def run_eval(argv) -> int:
    return eval_stage.main(*parse_config(eval_stage.STAGES, argv))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def samples(tiny_base, tiny_sft, tiny_dpo):
    """256 completions sampled from the DPO policy on test prompts."""
    tokenizer = load_tokenizer(tiny_sft)
    args = PairsArguments(train_file=tiny_base["train"], test_file=tiny_base["test"])
    prompts = make_prompts(load_reviews(args, "test"), tokenizer, 64, "test")
    policy = load_causal_lm(tiny_dpo)
    prompt_ids, completion_ids = [], []
    for b, batch in enumerate(plan_batches(prompts, 32)):
        for p, cs in zip(batch, sample_batch(policy, tokenizer, batch, 4, 32, seed=7 + b)):
            prompt_ids += [p["prompt_ids"]] * len(cs)
            completion_ids += [c["ids"] for c in cs]
    return {"policy": policy, "reference": load_causal_lm(tiny_sft), "prompt_ids": prompt_ids,
            "completion_ids": completion_ids, "pad": tokenizer.pad_token_id}


def test_exact_kl_equals_an_independent_per_position_kl(samples):
    exact, _ = sequence_kls(samples["policy"], samples["reference"], samples["prompt_ids"][:12],
                            samples["completion_ids"][:12], samples["pad"], batch_size=5)
    for i in range(12):
        prompt, completion = samples["prompt_ids"][i], samples["completion_ids"][i]
        total = 0.0
        for t in range(len(completion)):  # one unbatched forward per generated position
            prefix = torch.tensor([prompt + completion[:t]])
            with torch.no_grad():
                p = samples["policy"](prefix).logits[0, -1]
                q = samples["reference"](prefix).logits[0, -1]
            total += kl_divergence(Categorical(logits=p), Categorical(logits=q)).item()
        assert exact[i] == pytest.approx(total, rel=1e-4, abs=1e-4)
    assert min(exact) > 0


def test_the_kl_summed_while_sampling_equals_the_second_pass_per_sample(samples, tiny_base, tiny_sft):
    """The evaluation's KL comes from the sampler's own logits and a reference decoding in lockstep; it must equal
    the KL pass over the same tokens (policy and reference over whole sequences) within a relative 1e-4 per sample,
    at uneven prompt lengths (left padding), and the samples must be those sampled without it."""
    tokenizer = load_tokenizer(tiny_sft)
    args = PairsArguments(train_file=tiny_base["train"], test_file=tiny_base["test"])
    prompts = make_prompts(load_reviews(args, "test"), tokenizer, 24, "test")
    assert len({len(p["prompt_ids"]) for p in prompts[:12]}) > 1  # a batch with padding
    batch = prompts[:12]
    plain = sample_batch(samples["policy"], tokenizer, batch, 4, 32, seed=3)
    measured = sample_batch(samples["policy"], tokenizer, batch, 4, 32, seed=3, kl_reference=samples["reference"])
    assert [[c["ids"] for c in cs] for cs in plain] == [[c["ids"] for c in cs] for cs in measured]
    flat = [(p, c) for p, cs in zip(batch, measured) for c in cs]
    exact, ratio = sequence_kls(samples["policy"], samples["reference"], [p["prompt_ids"] for p, _ in flat],
                                [c["ids"] for _, c in flat], samples["pad"])
    assert sum(c["finish"] == "eos" for _, c in flat) and sum(c["finish"] == "length" for _, c in flat)
    for (_, c), e, r in zip(flat, exact, ratio):
        assert c["kl_exact"] == pytest.approx(e, rel=1e-4, abs=1e-6)
        assert c["kl_logratio"] == pytest.approx(r, rel=1e-4, abs=1e-5)
    assert np.mean(exact) > 1.0


def test_kl_is_zero_when_the_policy_is_the_reference(samples, tiny_sft):
    twin = load_causal_lm(tiny_sft)
    exact, ratio = sequence_kls(samples["reference"], twin, samples["prompt_ids"][:32], samples["completion_ids"][:32],
                                samples["pad"])
    assert max(abs(x) for x in exact) < 1e-5 and max(abs(x) for x in ratio) < 1e-5


def test_exact_and_log_ratio_estimators_agree_within_sampling_error(samples):
    exact, ratio = sequence_kls(samples["policy"], samples["reference"], samples["prompt_ids"],
                                samples["completion_ids"], samples["pad"])
    diff = np.array(ratio) - np.array(exact)
    standard_error = diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * standard_error, (np.mean(exact), np.mean(ratio), standard_error)
    assert np.mean(exact) > 1.0  # a real distance, not two estimates of nothing


def test_win_rate_and_distinct_2_on_hand_made_records():
    policy = [{"prompt_id": "a", "sample": 0, "reward": 0.9}, {"prompt_id": "a", "sample": 1, "reward": 0.2},
              {"prompt_id": "b", "sample": 0, "reward": 0.5}]
    baseline = [{"prompt_id": "a", "sample": 0, "reward": 0.1}, {"prompt_id": "a", "sample": 1, "reward": 0.3},
                {"prompt_id": "b", "sample": 0, "reward": 0.5}]
    assert win_rate(policy, baseline) == pytest.approx((1 + 0 + 0.5) / 3)
    assert distinct_n([[1, 2, 1, 2, 1, 2]], 2) == pytest.approx(2 / 5)
    assert distinct_n([[1, 2, 3], [3, 4]], 2) == 1.0


@pytest.fixture(scope="module")
def evaluated(tiny_base, tiny_sft, dpo_with_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    dpo_root = root / "dpo"
    dpo_root.mkdir()
    shutil.copytree(dpo_with_checkpoints, dpo_root / os.path.basename(dpo_with_checkpoints))
    # Read the commit just before the run: another checkout's commit landing later must not fail the test.
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert run_eval(eval_argv(tiny_base, tiny_sft, dpo_root, root / "out")) == 0
    return {"root": root, "dpo_root": dpo_root, "out": root / "out", "run": os.path.basename(dpo_with_checkpoints),
            "commit": commit}


def records_file(records_root, run, step) -> str:
    """The records of one model: `<run>/step-<N>` for SFT and base, `<run>/<run id>/step-<N>` for a trained run."""
    found = glob.glob(str(records_root / run / "*" / f"step-{step}" / "records.jsonl")) + \
        glob.glob(str(records_root / run / f"step-{step}" / "records.jsonl"))
    assert len(found) == 1, found
    return found[0]


def read_records(evaluated, run, step):
    records_root = next((evaluated["out"] / "records").iterdir())
    with open(records_file(records_root, run, step)) as f:
        return [json.loads(line) for line in f]


def test_summary_has_every_checkpoint_and_intervals_contain_their_means(evaluated):
    rows = read_csv(evaluated["out"] / "summary.csv")
    for column in ("run", "loss_type", "beta", "step", "reward_mean", "reward_lo", "reward_hi", "kl_mean", "kl_lo", "kl_hi", "n"):
        assert column in rows[0]
    for r in rows:
        assert float(r["reward_lo"]) <= float(r["reward_mean"]) <= float(r["reward_hi"])
        assert float(r["kl_lo"]) <= float(r["kl_mean"]) <= float(r["kl_hi"])
    steps = sorted(int(r["step"]) for r in rows if r["run"] == evaluated["run"])
    assert steps == read_manifest(evaluated["dpo_root"] / evaluated["run"])["checkpoints"] == [2, 3, 4, 5, 6]
    sft = next(r for r in rows if r["run"] == "sft")
    assert float(sft["kl_mean"]) == 0.0 and int(sft["n"]) == 24 * 4  # like every checkpoint, not all 16 samples
    final = next(r for r in rows if r["run"] == evaluated["run"] and int(r["step"]) == steps[-1])
    assert int(final["n"]) == 24 * 4 and float(final["kl_mean"]) > 0 and 0 <= float(final["win_rate_vs_sft"]) <= 1
    assert any(r["run"] == "base" for r in rows)
    assert {r["reward_model"] for r in rows} == {"vader"}
    assert {r["run"] for r in rows if r["kl_kind"] == "analytic_bound"} == {"best_of_n"}
    assert all(r["kl_kind"] == "measured" for r in rows if r["run"] != "best_of_n")


def test_sft_distinct_2_counts_the_same_number_of_samples_as_a_checkpoint(evaluated):
    sft = next(r for r in read_csv(evaluated["out"] / "summary.csv") if r["run"] == "sft")
    bigrams = [pair for r in read_records(evaluated, "sft", 0) if r["sample"] < 4
               for pair in zip(r["completion_ids"], r["completion_ids"][1:])]
    assert float(sft["distinct_2"]) == pytest.approx(len(set(bigrams)) / len(bigrams))


def test_best_of_n_points_sit_at_the_kl_bound_with_rewards_recomputed(evaluated):
    rows = {int(r["step"]): r for r in read_csv(evaluated["out"] / "summary.csv") if r["run"] == "best_of_n"}
    assert sorted(rows) == [1, 2, 4, 8, 16]
    rewards = {}
    for r in read_records(evaluated, "sft", 0):
        rewards.setdefault(r["prompt_id"], [None] * 16)[r["sample"]] = r["reward"]
    for n, row in rows.items():
        assert float(row["kl_mean"]) == pytest.approx(math.log(n) - (n - 1) / n) == best_of_n_kl_bound(n)
        expected = np.mean([np.mean([max(v[i : i + n]) for i in range(0, 16, n)]) for v in rewards.values()])
        assert float(row["reward_mean"]) == pytest.approx(expected)
    assert float(rows[16]["reward_mean"]) > float(rows[1]["reward_mean"])


def test_report_and_plot_are_written(evaluated, tiny_sft):
    report = open(evaluated["out"] / "report.md").read()
    assert "## Final models" in report and "| sft |" in report and "![reward vs KL](reward_vs_kl.png)" in report
    assert "## Samples side by side" in report and "training_curves.png" in report
    header = report.split("## Final models")[0]
    assert "preset: `tiny`" in header and evaluated["commit"] and f"git commit: `{evaluated['commit']}`" in header
    assert read_manifest(tiny_sft)["run_id"] in header and f"`{evaluated['run']}`: beta 0.1" in header
    best_of_n = report.split("## Best-of-N")[1].split("\n## ")[0]
    assert "analytic" in best_of_n and "vader" in best_of_n and "| 16 |" in best_of_n
    checkpoint_table = report.split("## Reward versus KL")[1].split("\n## ")[0]
    assert "best_of_n" not in checkpoint_table
    assert os.path.getsize(evaluated["out"] / "reward_vs_kl.png") > 10_000


def test_another_batch_size_gives_the_same_records(evaluated, tiny_base, tiny_sft, tmp_path):
    """batch_size is a performance knob: every sample has a random stream of its own (imdb_dpo/models/sampling.py). Batches
    of another shape or padding may round a logit differently in the last bits, which moves a token only where its
    uniform lies that close to a boundary: a few samples in a thousand may differ, and the KL pass, padded otherwise,
    may differ in the last bits."""
    assert run_eval(eval_argv(tiny_base, tiny_sft, evaluated["dpo_root"], tmp_path / "out", "--batch_size", "5")) == 0
    new = sorted((tmp_path / "out" / "records").rglob("records.jsonl"))
    assert len(new) >= 4  # SFT, base and the run's checkpoints, under the same settings key as at batch size 12
    moved = total = 0
    for path in new:
        old = [json.loads(line) for line in open(evaluated["out"] / path.relative_to(tmp_path / "out"))]
        for a, b in zip(old, map(json.loads, open(path)), strict=True):
            assert (a["prompt_id"], a["sample"]) == (b["prompt_id"], b["sample"])  # in prompt order, either way
            total += 1
            if a["completion_ids"] != b["completion_ids"]:
                moved += 1
                continue
            # The KL is summed as sampled: padded otherwise, a token's log p - log q rounds otherwise (~1e-7).
            assert a["reward"] == b["reward"] and a["kl_exact"] == pytest.approx(b["kl_exact"], rel=1e-5, abs=1e-5)
    assert moved <= total // 200, (moved, total)
    old = {(r["run"], r["step"]): r for r in read_csv(evaluated["out"] / "summary.csv")}
    for row in read_csv(tmp_path / "out" / "summary.csv"):
        assert abs(float(row["reward_mean"]) - float(old[(row["run"], row["step"])]["reward_mean"])) < 0.01


def test_adding_a_run_evaluates_only_what_is_new(evaluated, tiny_base, tiny_sft, monkeypatch):
    records_root = next((evaluated["out"] / "records").iterdir())
    before = {p: os.path.getmtime(p) for p in records_root.rglob("records.jsonl")}
    shutil.copytree(evaluated["dpo_root"] / evaluated["run"], evaluated["dpo_root"] / "copy_of_run")
    evaluated_paths = []
    original = model_eval.load_causal_lm
    monkeypatch.setattr(model_eval, "load_causal_lm", lambda path, *a: evaluated_paths.append(path) or original(path, *a))
    assert run_eval(eval_argv(tiny_base, tiny_sft, evaluated["dpo_root"], evaluated["out"])) == 0
    assert all(os.path.getmtime(p) == t for p, t in before.items())  # nothing old was redone
    new_models = [p for p in evaluated_paths if "copy_of_run" in p]
    assert len(new_models) == len(evaluated_paths) - 1  # the reference is loaded once, then only the new run
    assert {r["run"] for r in read_csv(evaluated["out"] / "summary.csv")} >= {"copy_of_run", evaluated["run"]}


def test_a_run_replaced_under_its_name_is_evaluated_afresh(tiny_base, tiny_sft, tiny_run, tmp_path):
    """`dpo.py --overwrite true` leaves a new run (a new run id) under the old name: its records are not the old ones."""
    runs, final_only = tiny_run["root"] / "outputs/tiny/dpo", shutil.ignore_patterns("checkpoint-*")

    def evaluate(run, root, out):
        shutil.rmtree(root / "dpo" / "run", ignore_errors=True)
        shutil.copytree(runs / run, root / "dpo" / "run", ignore=final_only)
        assert run_eval(eval_argv(tiny_base, tiny_sft, root / "dpo", out, "--best_of_n_samples", "4")) == 0
        return next(r for r in read_csv(out / "summary.csv") if r["run"] == "run")

    first = evaluate("sigmoid_beta1", tmp_path / "runs", tmp_path / "out")
    replaced = evaluate("sigmoid_beta5", tmp_path / "runs", tmp_path / "out")
    alone = evaluate("sigmoid_beta5", tmp_path / "runs_alone", tmp_path / "out_alone")
    assert (replaced["reward_mean"], replaced["kl_mean"]) != (first["reward_mean"], first["kl_mean"])
    assert (replaced["reward_mean"], replaced["kl_mean"]) == (alone["reward_mean"], alone["kl_mean"])


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_the_evaluation_runs_in_its_own_precision_whatever_training_turned_on(precision, tiny_base, tiny_sft, tmp_path,
                                                                             monkeypatch):
    """A training stage with `tf32: true` turns TF32 on for its whole process (transformers' enable_tf32); the
    evaluation it runs between steps must still compute as eval_precision says, and leave the process as it was."""
    from transformers.utils.import_utils import enable_tf32

    from imdb_dpo.lifecycle.preemption import StopRequest

    (args,) = parse_config((model_eval.EvalArguments,), eval_argv(
        tiny_base, tiny_sft, "", tmp_path / "out", "--num_prompts", "4", "--eval_precision", precision))
    model_eval.check_args(args)
    tokenizer = load_tokenizer(tiny_sft)
    evaluator = model_eval.Evaluator(args, tokenizer, prompts_for(args, tokenizer, "test"))
    seen, sample = [], model_eval.sample_batch

    def sample_and_look(*a, **k):
        seen.append(torch.backends.cuda.matmul.fp32_precision)
        return sample(*a, **k)

    monkeypatch.setattr(model_eval, "sample_batch", sample_and_look)
    before = torch.backends.cuda.matmul.fp32_precision
    enable_tf32.cache_clear()
    enable_tf32(True)
    try:
        records = evaluator.evaluate({"run": "sft", "step": 0, "path": tiny_sft, "loss_type": "", "beta": ""},
                                     StopRequest(signals=()))
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # as training left it
    finally:
        torch.backends.fp32_precision = "none"
        torch.backends.cuda.matmul.fp32_precision = before
        enable_tf32.cache_clear()
    assert len(records) == 4 * args.best_of_n_samples
    assert seen and set(seen) == {"ieee" if precision == "fp32" else "tf32"}
    # A setting of the results: each precision's records are kept apart.
    other = parse_config((model_eval.EvalArguments,), eval_argv(
        tiny_base, tiny_sft, "", tmp_path / "out", "--num_prompts", "4",
        "--eval_precision", "tf32" if precision == "fp32" else "fp32"))[0]
    assert model_eval.records_root(args) != model_eval.records_root(other)


def test_an_eval_precision_other_than_fp32_or_tf32_is_refused(tiny_base, tiny_sft, tmp_path):
    (args,) = parse_config((model_eval.EvalArguments,), eval_argv(tiny_base, tiny_sft, "", tmp_path / "out",
                                                                  "--eval_precision", "bf16"))
    with pytest.raises(model_eval.ConfigError, match="eval_precision='bf16': use 'fp32'"):
        model_eval.check_settings(args)
