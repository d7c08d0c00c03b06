"""Gao et al.'s curves fitted per method, the over-optimisation finding, and the paper's view of the frontier."""

import math

import numpy as np
import pytest

from imdb_dpo.evaluation.fits import fit, fits_by_method, fooled
from imdb_dpo.evaluation.plots import paper_view_hides, plot_frontier, plot_overoptimisation
from imdb_dpo.evaluation.report import method_of, render_report


def test_the_fits_recover_the_parameters_of_exact_curves():
    d = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    rl = fit(d, d * (0.3 - 0.1 * np.log(np.maximum(d, 1e-12))), "rl")
    assert rl["a"] == pytest.approx(0.3) and rl["b"] == pytest.approx(0.1) and rl["r2"] == pytest.approx(1.0)
    assert rl["points"] == 5  # d = 0 (the SFT model) is on every curve and left out
    assert rl["peak_kl"] == pytest.approx(math.exp(0.3 / 0.1 - 1) ** 2)  # d* = exp(a/b - 1), KL = d*^2
    assert rl["peak_gain"] == pytest.approx(0.1 * math.exp(2))
    bon = fit(d, d * (0.4 - 0.1 * d), "best_of_n")
    assert (bon["a"], bon["b"]) == (pytest.approx(0.4), pytest.approx(0.1))
    assert bon["peak_kl"] == pytest.approx(2.0 ** 2) and bon["peak_gain"] == pytest.approx(0.4)
    rising = fit(d, d * (0.3 + 0.05 * d), "best_of_n")  # no turn: b < 0, no peak
    assert rising["b"] < 0 and math.isnan(rising["peak_kl"])


def row(method, run, step, reward, kl, proxy=""):
    return {"method": method, "run": run, "loss_type": "", "beta": "", "step": step, "reward_model": "vader",
            "reward_mean": reward, "reward_lo": reward - 0.01, "reward_hi": reward + 0.01, "kl_kind": "measured",
            "kl_mean": kl, "kl_lo": kl, "kl_hi": kl, "kl_logratio_mean": kl, "n": 8, "win_rate_vs_sft": "",
            "mean_length": 10, "distinct_2": 0.5, "proxy_reward_mean": proxy, "path": ""}


def summary():
    rows = [row("sft", "sft", 0, 0.5, 0.0)]
    for step, kl in enumerate([0.5, 2.0, 4.0, 8.0], start=1):
        d = math.sqrt(kl)
        rows.append(row("dpo", "sigmoid_beta0.1", step, 0.5 + d * (0.2 - 0.05 * math.log(d)), kl))
    rows += [row("rloo_rm", "rloo_rm_kl0.05", 1, 0.55, 1.0, proxy=0.2), row("rloo_rm", "rloo_rm_kl0.05", 2, 0.7, 4.0, 1.0),
             row("rloo_rm", "rloo_rm_kl0.05", 4, 0.62, 12.0, 2.5), row("rloo_rm", "rloo_rm_kl0.05", 8, 0.6, 30.0, 3.0)]
    rows += [{**row("best_of_n", "best_of_n", n, 0.5 + 0.1 * math.log2(n), math.log(n) - (n - 1) / n),
              "kl_kind": "analytic_bound"} for n in (1, 2, 4, 8)]
    return rows


def test_fits_by_method_fit_each_family_against_the_sft_reward():
    fits = {f["method"]: f for f in fits_by_method(summary(), method_of)}
    assert set(fits) == {"dpo", "rloo_rm", "best_of_n"}
    assert fits["dpo"]["form"] == "rl" and fits["dpo"]["a"] == pytest.approx(0.2)
    assert fits["dpo"]["b"] == pytest.approx(0.05)
    assert fits["best_of_n"]["form"] == "best_of_n" and fits["best_of_n"]["points"] == 3  # N = 1 has KL 0


def test_the_learned_reward_is_caught_when_its_score_rises_as_the_true_reward_falls():
    rows = [r for r in summary() if r["method"] == "rloo_rm"]
    turn = fooled(rows)
    assert (turn["peak_step"], turn["last_step"]) == (2, 8)
    assert turn["true_change"] == pytest.approx(-0.1) and turn["proxy_change"] == pytest.approx(2.0)
    assert fooled([r for r in rows if r["step"] <= 2]) is None  # still rising at its last checkpoint


def test_the_report_states_the_over_optimisation_and_the_fits(tmp_path):
    rows = summary()
    fits = fits_by_method(rows, method_of)
    assert plot_overoptimisation(rows, fits, str(tmp_path / "overoptimisation.png"))
    settings = {"reward_model": "vader", "num_prompts": 2, "samples_per_prompt": 4, "best_of_n_samples": 8,
                "temperature": 1.0, "max_new_tokens": 8, "sampling_dtype": "float32", "kl_dtype": "float32"}
    provenance = {"preset": "t", "git_commit": "", "date": "now", "sft_model": {"path": "/s", "run_id": None},
                  "base_model": None}
    report = render_report(str(tmp_path / "report.md"), provenance, rows, [], {}, {}, settings, fits=fits,
                           overoptimisation_figure=True)
    # Within 1 nat, best-of-N's N = 4 (bound 0.64 nats) scores 0.7 (the comparisons with intervals need the records,
    # which this summary has not: tests/test_comparisons.py).
    assert "| best-of-N (KL: analytic bound) | 0.700 (best_of_n step 4) |" in report
    section = report.split("## Over-optimisation")[1]
    assert "![over-optimisation](overoptimisation.png)" in section
    assert ("`rloo_rm_kl0.05`: the true reward peaks at step 2 (0.700 at KL 4.00); by step 8 it has changed by -0.100 "
            "while the learned score changed by +2.000 (fooled") in section
    # The fitted peak, d* = e^3, lies far beyond the largest KL measured (8): the table says it is extrapolated.
    assert f"| DPO | d (a - b log d) | 0.2 | 0.05 | 1.00 | 4 (8.00) | {math.exp(6):.2f} (extrapolated) |" in section
    rm = next(f for f in fits if f["method"] == "rloo_rm")
    assert rm["b"] > 0 and rm["peak_kl"] < rm["max_kl"] == 30.0  # a peak inside the data is not flagged
    assert f"| {rm['peak_kl']:.2f} |" in section


def test_the_frontier_takes_the_papers_view_when_the_data_allow(tmp_path):
    rows = summary()
    assert paper_view_hides(rows) == 1  # rloo_rm at KL 30
    assert paper_view_hides([r for r in rows if r["run"] in ("sft", "best_of_n")]) is None  # no trained run in view
    assert paper_view_hides([{**r, "reward_mean": r["reward_mean"] - 0.3} for r in rows]) is None  # SFT below 0.4
    labels = plot_frontier(rows, str(tmp_path / "paper.png"))
    full = plot_frontier(rows, str(tmp_path / "full.png"), view="full")
    assert labels == full and any("learned RM" in label for label in labels)
