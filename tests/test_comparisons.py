"""Seeds, the seed bands of summary.csv, common random numbers, and "A beats B at matched KL" with an interval
(imdb_dpo/evaluation/comparisons.py)."""

import csv
import os
import shutil

import numpy as np
import pytest

from conftest import REPO, dpo_argv, run_in_process
from imdb_dpo.evaluation.comparisons import Point, compare, seed_means
from imdb_dpo.methods import frontier_methods
from imdb_dpo.models.modeling import load_causal_lm
from test_eval import eval_argv, read_csv, run_eval


def test_three_seeds_are_three_runs_with_other_weights_and_their_mean_is_a_band(tiny_base, tiny_sft, tiny_pairs,
                                                                               tmp_path):
    dpo_root = tmp_path / "dpo"
    run_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, dpo_root, "--betas", "0.1", "--seeds", "0", "1", "2",
                                      "--max_train_pairs", "64"))
    runs = sorted(r for r in os.listdir(dpo_root) if not r.startswith("."))
    assert runs == ["sigmoid_beta0.1_seed0", "sigmoid_beta0.1_seed1", "sigmoid_beta0.1_seed2"]
    weights = [load_causal_lm(str(dpo_root / r)).state_dict() for r in runs]
    for a, b in ((0, 1), (0, 2), (1, 2)):  # another data order: other weights
        assert any(not (weights[a][k] == weights[b][k]).all() for k in weights[a])
    # A run of the same setting without seeds (trained before seeds were added) is left out, named, not stacked as
    # one more seed nor counted beside them.
    shutil.copytree(dpo_root / "sigmoid_beta0.1_seed0", dpo_root / "sigmoid_beta0.1")
    assert run_eval(eval_argv(tiny_base, tiny_sft, dpo_root, tmp_path / "eval", "--base_model", "")) == 0
    report = (tmp_path / "eval" / "report.md").read_text().split("## Not evaluated")[1]
    assert f"{dpo_root / 'sigmoid_beta0.1'}" in report and "a run without seeds of a setting also run with seeds" in report
    summary = read_csv(tmp_path / "eval" / "summary.csv")
    assert not [r for r in summary if r["run"] == "sigmoid_beta0.1" and r["seed"] != "mean"]
    seeds = [r for r in summary if r["setting"] == "sigmoid_beta0.1" and r["seed"] in ("0", "1", "2")]
    means = [r for r in summary if r["setting"] == "sigmoid_beta0.1" and r["seed"] == "mean"]
    assert {r["step"] for r in means} == {r["step"] for r in seeds} and means
    for mean in means:
        three = [float(r["reward_mean"]) for r in seeds if r["step"] == mean["step"]]
        assert len(three) == 3 and float(mean["reward_mean"]) == pytest.approx(np.mean(three))
        assert (float(mean["reward_lo"]), float(mean["reward_hi"])) == (min(three), max(three))
    # The budget table counts the setting by its seed means, not by its luckier seed.
    budget = read_csv(tmp_path / "eval" / "frontier_budget.csv")
    assert {r["run"] for r in budget if r["method"] == "dpo"} <= {"sigmoid_beta0.1", "sft"}


def test_a_copy_of_the_sft_model_gets_the_sft_rows_numbers_exactly(tiny_base, tiny_sft, tmp_path):
    """Common random numbers: a model equal to the SFT model draws the very same samples, so every number of its
    row equals the SFT row's, and its KL is exactly 0."""
    shutil.copytree(tiny_sft, tmp_path / "copy")
    assert run_eval(eval_argv(tiny_base, tiny_sft, "", tmp_path / "eval", "--base_model", str(tmp_path / "copy"))) == 0
    rows = {r["run"]: r for r in read_csv(tmp_path / "eval" / "summary.csv")}
    for column in ("reward_mean", "reward_lo", "reward_hi", "kl_mean", "mean_length", "distinct_2"):
        assert rows["base"][column] == rows["sft"][column], column
    assert float(rows["base"]["kl_mean"]) == 0.0


def per_prompt(seed: int, shift: float, prompts: int = 40, seeds: int = 1):
    rng = np.random.default_rng(seed)
    reward = rng.uniform(0.3, 0.7, size=(seeds, prompts)) + shift
    return reward, np.full((seeds, prompts), 1.0)


def test_a_method_against_itself_differs_by_zero_and_its_interval_holds_zero():
    sft = Point("sft", "sft", 0, per_prompt(0, 0.0)[0], np.zeros((1, 40)))
    points = [Point(method, "run", 10, *per_prompt(1, 0.1, seeds=3)) for method in ("dpo", "rloo")]
    for row in compare(points, sft, [0.5, 3.0], resamples=500):
        assert row["difference"] == 0.0
        assert row["lo"] < 0.0 < row["hi"] and row["lo_each"] < 0.0 < row["hi_each"]  # each side's seeds differ
        assert row["verdict"] == "no difference detected"


def test_a_clearly_better_method_is_detected_and_one_seed_a_side_carries_no_verdict():
    sft = Point("sft", "sft", 0, per_prompt(0, -0.3)[0], np.zeros((1, 40)))  # below both: never their best
    better = Point("dpo", "dpo_run", 10, *per_prompt(1, 0.2, seeds=3))
    worse = Point("rloo", "rloo_run", 10, *per_prompt(2, 0.0, seeds=3))
    rows = {row["budget"]: row for row in compare([better, worse], sft, [0.5, 3.0], resamples=500)
            if row["kind"] == "within"}
    gap = float(better.reward.mean() - worse.reward.mean())  # both points (KL 1) are the best within 3 nats
    assert rows[3.0]["difference"] == pytest.approx(gap) and rows[3.0]["verdict"] == "dpo above"
    assert 0 < rows[3.0]["lo"] <= rows[3.0]["lo_each"]  # the family's interval is no narrower than its own
    # Within 0.5 nats the best of each is halfway from the SFT model to its point (KL 1), interpolated.
    assert rows[0.5]["difference"] == pytest.approx(gap / 2)
    alone = compare([Point("dpo", "d", 10, better.reward[:1], better.kl[:1]), worse], sft, [3.0], resamples=500)
    assert alone and all(r["verdict"] == "too few seeds" and r["lo"] == "" and (r["seeds_a"], r["seeds_b"]) == (1, 3)
                         for r in alone)
    assert alone[0]["lo_each"] > 0.1  # its own interval, over prompts alone, would have called it


def test_seed_means_average_each_step_that_every_seed_reached():
    rows = [{"method": "dpo", "run": f"b_seed{s}", "setting": "b", "seed": s, "step": step, "reward_mean": r,
             "kl_mean": k, "n": 4, "loss_type": "sigmoid", "beta": 0.1, "reward_model": "vader", "kl_kind": "measured",
             "kl_logratio_mean": k, "win_rate_vs_sft": 0.5, "mean_length": 10, "distinct_2": 0.9, "proxy_reward_mean": ""}
            for s, step, r, k in [(0, 1, 0.5, 1.0), (1, 1, 0.7, 3.0), (0, 2, 0.6, 2.0)]]
    (mean,) = seed_means(rows)  # step 2: seed 1 has not reached it
    assert (mean["step"], mean["reward_mean"], mean["reward_lo"], mean["reward_hi"]) == (1, 0.6, 0.5, 0.7)
    assert mean["kl_mean"] == 2.0 and mean["seed"] == "mean" and mean["run"] == "b"


def test_the_tiny_report_states_each_comparison_with_its_interval(tiny_run):
    out = tiny_run["root"] / "outputs" / "tiny" / "eval"
    with open(out / "comparisons.csv") as f:
        rows = list(csv.DictReader(f))
    # Every method the tiny preset trains, and best-of-N.
    methods = {m.key for m in frontier_methods() if os.path.isfile(os.path.join(REPO, f"configs/tiny/{m.key}.yaml"))}
    assert {r["a"] for r in rows} | {r["b"] for r in rows} == methods | {"best_of_n"}
    within = [r for r in rows if r["kind"] == "within"]
    pairs = (len(methods) + 1) * len(methods) // 2
    assert len({frozenset((r["a"], r["b"])) for r in within}) == pairs and len(within) == pairs * 3  # every budget
    report = (out / "report.md").read_text()
    for r in rows:
        lo, hi, difference = float(r["lo_each"]), float(r["hi_each"]), float(r["difference"])
        assert lo <= difference <= hi
        # The tiny preset trains one seed per setting: no comparison carries a verdict, and the table says so.
        assert r["verdict"] == "too few seeds" and r["lo"] == r["hi"] == ""
        seeds = [r["seeds_a"] or "-", r["seeds_b"] or "-"]
        assert "1" in seeds and set(seeds) <= {"1", "-"}
        assert f"{difference:+.3f} [{lo:+.3f}, {hi:+.3f}] too few seeds ({seeds[0]} v {seeds[1]})" in report
    assert "too few seeds (a v b): a side has fewer than 3 seeds" in report


def test_at_matched_kl_the_reward_is_interpolated_along_each_run_and_left_out_where_a_run_falls_short():
    prompts = 30
    flat = lambda value: np.full((1, prompts), value)  # noqa: E731
    sft = Point("sft", "sft", 0, flat(0.5), flat(0.0))
    seeds = lambda value: np.full((3, prompts), value)  # noqa: E731  three seeds that agree: no seed error
    points = [Point("dpo", "d", 4, seeds(0.7), seeds(2.0)), Point("dpo", "d", 8, seeds(0.9), seeds(6.0)),
              Point("rloo", "r", 4, seeds(0.6), seeds(2.0))]
    rows = {(r["kind"], r["budget"]): r for r in compare(points, sft, [1.0, 4.0], resamples=200)}
    # At KL 1: DPO 0.5 + 0.2/2 = 0.6, RLOO 0.5 + 0.1/2 = 0.55; at KL 4 only DPO's run reaches (0.7 + 0.2/2).
    assert rows[("at", 1.0)]["difference"] == pytest.approx(0.05)
    assert rows[("at", 1.0)]["lo"] == pytest.approx(0.05) and rows[("at", 1.0)]["verdict"] == "dpo above"
    assert ("at", 4.0) not in rows
    # Within 4: DPO's best is on its segment from KL 2 to 6, interpolated at 4 (0.8), against RLOO's 0.6 at KL 2.
    assert rows[("within", 4.0)]["difference"] == pytest.approx(0.2)


def test_each_dpo_loss_is_a_method_of_its_own_in_the_tables(tiny_base, tiny_sft, tiny_pairs, tmp_path):
    """IPO beside the paper's sigmoid DPO: its own row in the budget table, compared with DPO with an interval."""
    dpo_root = tmp_path / "dpo"
    for loss in ("sigmoid", "ipo"):
        run_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, dpo_root, "--betas", "0.1", "--loss_type", loss,
                                          "--max_train_pairs", "64"))
    assert run_eval(eval_argv(tiny_base, tiny_sft, dpo_root, tmp_path / "eval", "--base_model", "")) == 0
    budget = read_csv(tmp_path / "eval" / "frontier_budget.csv")
    assert {r["run"] for r in budget if r["method"] == "dpo"} <= {"sigmoid_beta0.1", "sft"}
    assert {r["run"] for r in budget if r["method"] == "dpo/ipo"} <= {"ipo_beta0.1", "sft"}
    assert any(r["method"] == "dpo/ipo" for r in budget)
    pairs = {(r["a"], r["b"]) for r in read_csv(tmp_path / "eval" / "comparisons.csv")}
    assert ("dpo", "dpo/ipo") in pairs and ("dpo/ipo", "best_of_n") in pairs
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| DPO (ipo) | " in report and "| DPO vs DPO (ipo) | " in report
