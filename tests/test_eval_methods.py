"""eval.py across methods (DPO, RLOO, Preferred-FT): finding the runs, the budget table, the plot's families and the
report. Fast: every input is made here by hand (no stage fixture, no sampling)."""

import csv
import hashlib
import json
import math
import os
import shutil

import pytest

import eval as eval_stage
from imdb_dpo.configuration.arguments import ConfigError, EvalArguments
from imdb_dpo.lifecycle.manifests import read_manifest, write_json_atomic
from imdb_dpo.evaluation.evaluator import check_kl_budgets
from imdb_dpo.evaluation.plots import plot_frontier
from imdb_dpo.evaluation.report import FRONTIER_BUDGET_COLUMNS, best_within_budgets, render_report

# ---------------------------------------------------------------- summary rows made by hand


def row(method, run, step, reward, kl, beta="", loss_type="", kl_kind="measured", n=8):
    return {"method": method, "run": run, "loss_type": loss_type, "beta": beta, "step": step, "reward_model": "vader",
            "reward_mean": reward, "reward_lo": reward - 0.01, "reward_hi": reward + 0.01, "kl_kind": kl_kind,
            "kl_mean": kl, "kl_lo": max(kl - 0.1, 0.0), "kl_hi": kl + 0.1, "kl_logratio_mean": kl, "n": n,
            "win_rate_vs_sft": "" if run == "sft" else 0.6, "mean_length": 12.0, "distinct_2": 0.5, "path": f"/m/{run}"}


def summary_rows():
    """SFT at KL 0; two DPO runs, one RLOO run, Preferred-FT, best-of-N at its bounds, and base."""
    bound = {n: math.log(n) - (n - 1) / n for n in (1, 2, 4)}
    return [
        row("sft", "sft", 0, 0.5, 0.0),
        row("base", "base", 0, 0.45, 5.0),
        row("dpo", "sigmoid_beta0.1", 2, 0.7, 0.9, beta=0.1, loss_type="sigmoid"),
        row("dpo", "sigmoid_beta0.1", 4, 0.8, 2.5, beta=0.1, loss_type="sigmoid"),
        row("dpo", "sigmoid_beta0.1", 8, 0.9, 12.0, beta=0.1, loss_type="sigmoid"),
        row("dpo", "sigmoid_beta1", 4, 0.8, 2.0, beta=1.0, loss_type="sigmoid"),  # ties 0.8 at a lower KL
        row("rloo", "rloo_kl0.05", 5, 0.6, 1.0, beta=0.05),                       # exactly at the budget 1
        row("rloo", "rloo_kl0.05", 10, 0.75, 3.5, beta=0.05),
        row("preferred_ft", "preferred_ft", 3, 0.55, 4.0),                        # nothing of its own below 3
        *[row("best_of_n", "best_of_n", n, 0.5 + 0.1 * i, bound[n], kl_kind="analytic_bound")
          for i, n in enumerate((1, 2, 4))],
    ]


def as_csv_rows(rows):
    """The rows as read back from summary.csv: every value a string."""
    return [{k: str(v) for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------- best_within_budgets


def expected_table():
    bound4 = math.log(4) - 3 / 4
    cell = {
        ("sft", 1.0): (0.5, 0.0, "sft", 0), ("sft", 3.0): (0.5, 0.0, "sft", 0), ("sft", 10.0): (0.5, 0.0, "sft", 0),
        ("dpo", 1.0): (0.7, 0.9, "sigmoid_beta0.1", 2),
        ("dpo", 3.0): (0.8, 2.0, "sigmoid_beta1", 4),       # the tie at 0.8 goes to the lower KL
        ("dpo", 10.0): (0.8, 2.0, "sigmoid_beta1", 4),      # step 8 (KL 12) is over every budget
        ("rloo", 1.0): (0.6, 1.0, "rloo_kl0.05", 5),        # kl_mean == budget counts
        ("rloo", 3.0): (0.6, 1.0, "rloo_kl0.05", 5),
        ("rloo", 10.0): (0.75, 3.5, "rloo_kl0.05", 10),
        ("preferred_ft", 1.0): (0.5, 0.0, "sft", 0),        # the SFT model is every method's point
        ("preferred_ft", 3.0): (0.5, 0.0, "sft", 0),
        ("preferred_ft", 10.0): (0.55, 4.0, "preferred_ft", 3),
        ("best_of_n", 1.0): (0.7, bound4, "best_of_n", 4),  # the bound of N=4 is 0.636 nats
        ("best_of_n", 3.0): (0.7, bound4, "best_of_n", 4),
        ("best_of_n", 10.0): (0.7, bound4, "best_of_n", 4),
    }
    return [{"method": m, "budget": b, "reward_mean": cell[m, b][0], "kl_mean": cell[m, b][1], "run": cell[m, b][2],
             "step": cell[m, b][3]}
            for m in ("sft", "dpo", "rloo", "preferred_ft", "best_of_n") for b in (1.0, 3.0, 10.0)]


def test_best_within_budgets_on_hand_made_rows():
    assert best_within_budgets(summary_rows(), [1, 3, 10]) == expected_table()


def test_best_within_budgets_reads_csv_strings_alike():
    assert best_within_budgets(as_csv_rows(summary_rows()), [1.0, 3.0, 10.0]) == expected_table()


def test_best_within_budgets_dash_when_nothing_fits_and_ties():
    rows = [row("sft", "sft", 0, 0.5, 0.2),  # an SFT KL above the smallest budget: nothing fits it
            row("dpo", "a", 1, 0.5, 0.2),    # ties SFT in reward and KL: SFT wins (it comes first)
            row("dpo", "a", 2, 0.9, 5.0),
            row("dpo", "b", 2, 0.9, 5.0),    # ties a/2 exactly: the first row wins
            row("rloo", "r", 1, 0.7, 0.15)]
    table = best_within_budgets(rows, [0.1, 0.2, 6.0])
    none = {"reward_mean": "", "kl_mean": "", "run": "", "step": ""}
    assert table == [
        {"method": "sft", "budget": 0.1, **none},
        {"method": "sft", "budget": 0.2, "reward_mean": 0.5, "kl_mean": 0.2, "run": "sft", "step": 0},
        {"method": "sft", "budget": 6.0, "reward_mean": 0.5, "kl_mean": 0.2, "run": "sft", "step": 0},
        {"method": "dpo", "budget": 0.1, **none},
        {"method": "dpo", "budget": 0.2, "reward_mean": 0.5, "kl_mean": 0.2, "run": "sft", "step": 0},
        {"method": "dpo", "budget": 6.0, "reward_mean": 0.9, "kl_mean": 5.0, "run": "a", "step": 2},
        {"method": "rloo", "budget": 0.1, **none},
        {"method": "rloo", "budget": 0.2, "reward_mean": 0.7, "kl_mean": 0.15, "run": "r", "step": 1},
        {"method": "rloo", "budget": 6.0, "reward_mean": 0.7, "kl_mean": 0.15, "run": "r", "step": 1},
    ]  # Preferred-FT and best-of-N were not run: no rows for them
    assert [c["method"] for c in best_within_budgets([row("sft", "sft", 0, 0.5, 0.0)], [1])] == ["sft"]


def test_kl_budgets_must_be_positive():
    assert check_kl_budgets([1, "3", 10.5]) == [1.0, 3.0, 10.5]
    for bad in ([1.0, 0.0], [-1.0], [float("nan")], ["a"], []):
        with pytest.raises(ConfigError, match="kl_budgets"):
            check_kl_budgets(bad)


# ---------------------------------------------------------------- the plot


def test_plot_frontier_draws_each_method_as_a_family(tmp_path, monkeypatch):
    figures = []
    original = plot_frontier.__globals__["plt"].Figure.savefig

    def capture(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plot_frontier.__globals__["plt"].Figure, "savefig", capture)
    rows = as_csv_rows(summary_rows()) + as_csv_rows([row("dpo", "sigmoid_beta0.1_lora", 4, 0.7, 1.5, beta=0.1,
                                                          loss_type="sigmoid")])
    png = tmp_path / "reward_vs_kl.png"
    labels = plot_frontier(rows, str(png))
    assert png.stat().st_size > 10_000
    assert labels == ["best-of-N on SFT (KL: analytic bound)", "DPO beta=0.1 [sigmoid_beta0.1]",
                      "DPO beta=0.1 [sigmoid_beta0.1_lora]", "DPO beta=1.0", "RLOO KL coef=0.05", "Preferred-FT",
                      "SFT", "base (pre-SFT)"]
    (ax,) = figures[0].axes
    lines = {container.get_label(): container.lines[0] for container in ax.containers}  # errorbar's data lines
    assert {lines[t].get_linestyle() for t in labels if t.startswith("DPO")} == {"-"}
    assert {lines[t].get_marker() for t in labels if t.startswith("DPO")} == {"o"}
    assert (lines["RLOO KL coef=0.05"].get_linestyle(), lines["RLOO KL coef=0.05"].get_marker()) == ("--", "^")
    assert (lines["Preferred-FT"].get_linestyle(), lines["Preferred-FT"].get_marker()) == (":", "D")
    assert lines["Preferred-FT"].get_color() == "green"
    dpo_colors = [lines[t].get_color() for t in labels if t.startswith("DPO")]
    assert len({tuple(c) for c in dpo_colors}) == 3  # shades of one map: blue dominates in every one
    assert all(c[2] > c[0] for c in dpo_colors) and lines["RLOO KL coef=0.05"].get_color()[0] > 0.8  # Oranges
    for text in labels[1:6]:  # every run's line starts at the SFT point
        assert (lines[text].get_xdata()[0], lines[text].get_ydata()[0]) == (0.0, 0.5)


# ---------------------------------------------------------------- finding the runs


def save_tiny_model(path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(path)


def fake_run(root, name, stage, steps, training, finished=True):
    """A run folder as the trainers leave it: checkpoints, the final model and a manifest."""
    run = root / name
    for step in steps:
        save_tiny_model(run / f"checkpoint-{step}")
    save_tiny_model(run)
    (run / "training_curves.png").write_bytes(b"png")
    write_json_atomic(str(run / "manifest.json"), {"stage": stage, "finished": finished, "global_step": steps[-1],
                                                   "run_id": name, "config": {"training": training}})
    return run


@pytest.fixture
def roots(tmp_path):
    sft = tmp_path / "sft"
    save_tiny_model(sft)
    dpo, rloo, pft = tmp_path / "dpo", tmp_path / "rloo", tmp_path / "preferred_ft"
    fake_run(dpo, "sigmoid_beta0.1", "dpo", [1, 2], {"beta": 0.1, "loss_type": ["sigmoid"]})
    fake_run(rloo, "rloo_kl0.05", "rloo", [1, 3], {"beta": 0.05})
    fake_run(pft, "preferred_ft", "preferred_ft", [2], {"beta": 0.1})  # SFTConfig has no beta; a stray one is ignored
    return {"sft": str(sft), "dpo": dpo, "rloo": rloo, "pft": pft, "tmp": tmp_path}


def eval_args(roots, **changes):
    values = {"sft_model": roots["sft"], "runs_root": str(roots["tmp"]), "output_dir": str(roots["tmp"] / "eval"), "reward_model": "vader",
              "num_prompts": 2, "samples_per_prompt": 2, "best_of_n_samples": 4, "report_prompts": 1, **changes}
    return EvalArguments(**values)


def test_models_to_evaluate_finds_every_method(roots):
    units, skipped = eval_stage.models_to_evaluate(eval_args(roots))
    found = [(u["method"], u["run"], u["loss_type"], u["beta"], u["step"]) for u in units]
    assert found == [("sft", "sft", "", "", 0),
                     ("dpo", "sigmoid_beta0.1", "sigmoid", 0.1, 1), ("dpo", "sigmoid_beta0.1", "sigmoid", 0.1, 2),
                     ("rloo", "rloo_kl0.05", "", 0.05, 1), ("rloo", "rloo_kl0.05", "", 0.05, 3),
                     ("preferred_ft", "preferred_ft", "", "", 2)]
    assert units[-1]["path"] == str(roots["pft"] / "preferred_ft" / "checkpoint-2")
    assert skipped == []
    with_base = eval_stage.models_to_evaluate(eval_args(roots, base_model=roots["sft"]))[0]
    assert [(u["method"], u["run"]) for u in with_base[:2]] == [("sft", "sft"), ("base", "base")]


def test_a_run_in_another_methods_root_is_reported_not_evaluated(roots):
    fake_run(roots["rloo"], "misfiled_dpo_run", "dpo", [1], {"beta": 0.5, "loss_type": ["sigmoid"]})
    units, skipped = eval_stage.models_to_evaluate(eval_args(roots))
    assert "misfiled_dpo_run" not in {u["run"] for u in units}
    assert skipped == [{"path": str(roots["rloo"] / "misfiled_dpo_run"),
                        "reason": f"it holds a DPO run, but it is among the RLOO runs; move it to {roots['dpo']}"}]


def test_a_missing_folder_means_the_method_was_not_run_and_methods_chooses_among_them(roots):
    shutil.rmtree(roots["rloo"])
    units, skipped = eval_stage.models_to_evaluate(eval_args(roots))
    assert {u["method"] for u in units} == {"sft", "dpo", "preferred_ft"} and skipped == []
    units, _ = eval_stage.models_to_evaluate(eval_args(roots, methods=["preferred_ft"]))
    assert {u["method"] for u in units} == {"sft", "preferred_ft"}
    with pytest.raises(ConfigError, match=r"methods: 'dpa' is no method; name some of dpo, rloo, "):
        eval_stage.check_args(eval_args(roots, methods=["dpa"]))
    for odd in ("dpo", []):  # a string (YAML's `methods: dpo`) or nothing
        with pytest.raises(ConfigError, match=r"methods=.*: a list of the methods to evaluate, e.g. methods: \[dpo"):
            eval_stage.check_args(eval_args(roots, methods=odd))


def test_a_runs_root_or_method_folder_that_is_a_file_is_named(roots):
    (roots["tmp"] / "runs.txt").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"runs_root=.*runs.txt is a file, not a folder: .* point runs_root at"):
        eval_stage.check_args(eval_args(roots, runs_root=str(roots["tmp"] / "runs.txt")))
    shutil.rmtree(roots["rloo"])
    (roots["tmp"] / "rloo").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"rloo is a file, not a folder: runs_root/rloo holds the RLOO runs"):
        eval_stage.check_args(eval_args(roots))


def test_an_rloo_rm_run_without_its_reward_model_is_left_out_once_with_the_fix(roots):
    run = fake_run(roots["tmp"] / "rloo_rm", "rloo_rm_kl0.05", "rloo_rm", [1, 2, 4], {"beta": 0.05})
    manifest = read_manifest(str(run))
    manifest["inputs"] = {"reward_model": {"path": str(roots["tmp"] / "gone_reward_model"), "run_id": "rm1"}}
    write_json_atomic(str(run / "manifest.json"), manifest)
    units, skipped = eval_stage.models_to_evaluate(eval_args(roots))
    assert "rloo_rm_kl0.05" not in {u["run"] for u in units}
    assert skipped == [{"path": str(run), "reason": f"the learned reward model it optimised, "
                                                    f"{roots['tmp'] / 'gone_reward_model'}, is gone; restore it, or "
                                                    "train a reward model there (reward_model.py) and the RLOO run "
                                                    "again on it (rloo.py with reward_model)"}]
    provenance = {"preset": "tiny", "git_commit": "abc", "date": "today", "sft_model": {"path": "/sft", "run_id": "r"},
                  "runs_root": str(roots["tmp"]), "base_model": None}
    settings = {"reward_model": "vader", "num_prompts": 2, "samples_per_prompt": 2, "best_of_n_samples": 4,
                "temperature": 1.0, "max_new_tokens": 8, "sampling_dtype": "float32", "kl_dtype": "float32"}
    report = render_report("/out/report.md", provenance, [row("sft", "sft", 0, 0.5, 0.0)],
                           [{**row("sft", "sft", 0, 0.5, 0.0), "label": "sft"}], {}, {}, settings, skipped)
    assert (f"- RLOO on the learned RM runs: none evaluated in `{roots['tmp'] / 'rloo_rm'}` (1 left out: see Not evaluated)"
            in report)


def test_unfinished_runs_name_their_script(roots):
    fake_run(roots["rloo"], "rloo_kl0.2", "rloo", [1], {"beta": 0.2}, finished=False)
    fake_run(roots["dpo"], "ipo_beta0.5", "dpo", [1], {"beta": 0.5, "loss_type": ["ipo"]}, finished=False)
    manifest = read_manifest(str(roots["pft"] / "preferred_ft"))
    write_json_atomic(str(roots["pft"] / "preferred_ft" / "manifest.json"), {**manifest, "finished": False})
    units, skipped = eval_stage.models_to_evaluate(eval_args(roots))
    assert {u["run"] for u in units} == {"sft", "sigmoid_beta0.1", "rloo_kl0.05"}
    reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
    assert reasons["ipo_beta0.5"].startswith("the DPO run is unfinished; finish it (run train.py dpo again)")
    assert reasons["rloo_kl0.2"].startswith("the RLOO run is unfinished; finish it (run train.py rloo again)")
    assert reasons["preferred_ft"].startswith("the Preferred-FT run is unfinished; finish it (run train.py preferred_ft again)")


def test_a_run_name_in_two_roots_is_an_error(roots):
    fake_run(roots["pft"], "rloo_kl0.05", "preferred_ft", [1], {})
    with pytest.raises(ConfigError) as error:
        eval_stage.models_to_evaluate(eval_args(roots))
    assert str(roots["rloo"] / "rloo_kl0.05") in str(error.value) and str(roots["pft"] / "rloo_kl0.05") in str(error.value)


def test_a_run_may_not_take_the_name_of_a_row_that_is_no_run(roots):
    fake_run(roots["rloo"], "sft", "rloo", [1], {"beta": 0.1})
    with pytest.raises(ConfigError, match="may not be named 'sft'"):
        eval_stage.models_to_evaluate(eval_args(roots))


def test_settings_of_ignores_the_new_fields(roots):
    base = eval_stage.settings_of(eval_args(roots))
    assert eval_stage.settings_of(eval_args(roots, runs_root="/x", methods=["dpo"],
                                            kl_budgets=[2.0], kl_batch_size=3, batch_size=5, use_cpu=False)) == base
    # The keys an evaluation's records are filed under (the sampler's name since each sample has a stream of its
    # own, when batch_size stopped being one): a new key only where the records would differ.
    assert set(base) == {"dataset_name", "train_file", "test_file", "text_column", "num_prompts", "min_prompt_tokens",
                         "max_prompt_tokens", "min_review_chars", "samples_per_prompt", "best_of_n_samples",
                         "max_new_tokens", "temperature", "top_k", "top_p", "sampler", "reward_model",
                         "reward_positive_label", "seed", "sampling_dtype", "kl_dtype", "reward_dtype", "reference",
                         "eval_precision", "kl"}  # kl: summed while sampling, or by a second pass


# ---------------------------------------------------------------- summary.csv, frontier_budget.csv and report.md


def fake_records(unit, prompts, samples, reward, kl):
    return [{"run": unit["run"], "loss_type": unit["loss_type"], "beta": unit["beta"], "step": unit["step"],
             "prompt_id": p["prompt_id"], "prompt": p["prompt"], "prompt_ids": [1], "sample": i,
             "completion_ids": [2, 3, 4], "text": f" sample {i}", "finish": "length",
             "reward": reward + 0.01 * i, "kl_exact": kl, "kl_logratio": kl}
            for p in prompts for i in range(samples)]


def test_write_outputs_adds_method_column_budget_table_and_curves_of_every_method(roots):
    args = eval_args(roots, kl_budgets=[0.5, 5.0])
    units, skipped = eval_stage.models_to_evaluate(args)
    prompts = [{"prompt_id": "test-0", "prompt": "This film"}, {"prompt_id": "test-1", "prompt": "I saw"}]
    level = {("sft", 0): (0.5, 0.0), ("sigmoid_beta0.1", 1): (0.6, 0.4), ("sigmoid_beta0.1", 2): (0.8, 4.0),
             ("rloo_kl0.05", 1): (0.7, 0.5), ("rloo_kl0.05", 3): (0.9, 6.0), ("preferred_ft", 2): (0.55, 2.0)}
    records = {(u["run"], u["step"]): fake_records(u, prompts, 4 if u["run"] == "sft" else 2, *level[u["run"], u["step"]])
               for u in units}
    settings = eval_stage.settings_of(args)
    eval_stage.write_outputs(args, units, records, prompts, settings, skipped)
    out = roots["tmp"] / "eval"

    with open(out / "summary.csv") as f:
        reader = csv.DictReader(f)
        summary = list(reader)
    assert reader.fieldnames == eval_stage.SUMMARY_COLUMNS and reader.fieldnames[0] == "method"
    assert {"run", "loss_type", "beta", "step", "kl_kind", "kl_mean", "win_rate_vs_sft", "path"} <= set(reader.fieldnames)
    assert [(r["method"], r["run"], r["step"]) for r in summary] == [
        ("sft", "sft", "0"), ("dpo", "sigmoid_beta0.1", "1"), ("dpo", "sigmoid_beta0.1", "2"),
        ("rloo", "rloo_kl0.05", "1"), ("rloo", "rloo_kl0.05", "3"), ("preferred_ft", "preferred_ft", "2"),
        ("best_of_n", "best_of_n", "1"), ("best_of_n", "best_of_n", "2"), ("best_of_n", "best_of_n", "4")]
    assert {r["beta"] for r in summary if r["method"] == "rloo"} == {"0.05"}
    assert {(r["beta"], r["loss_type"]) for r in summary if r["method"] == "preferred_ft"} == {("", "")}

    with open(out / "frontier_budget.csv") as f:
        reader = csv.DictReader(f)
        budget = list(reader)
    assert reader.fieldnames == FRONTIER_BUDGET_COLUMNS
    by = {(r["method"], float(r["budget"])): r for r in budget}
    assert len(budget) == 10 and (by["dpo", 0.5]["run"], by["dpo", 0.5]["step"]) == ("sigmoid_beta0.1", "1")
    assert float(by["dpo", 0.5]["reward_mean"]) == pytest.approx(0.605)  # rewards 0.6 and 0.61 per prompt
    assert (by["rloo", 5.0]["run"], by["rloo", 5.0]["step"]) == ("rloo_kl0.05", "1")  # step 3 is at KL 6
    assert (by["preferred_ft", 0.5]["run"], by["preferred_ft", 5.0]["run"]) == ("sft", "preferred_ft")
    # Best-of-N: N=2's bound (0.193 nats) fits 0.5, N=4's (0.636) only 5.
    assert (by["best_of_n", 0.5]["step"], by["best_of_n", 5.0]["step"]) == ("2", "4")
    assert os.path.getsize(out / "reward_vs_kl.png") > 10_000

    report = (out / "report.md").read_text()
    header = report.split("## Final models")[0]
    assert f"- DPO runs in `{roots['dpo']}`:" in header and "`sigmoid_beta0.1`: beta 0.1, loss `sigmoid`, 2 checkpoints" in header
    assert f"- RLOO runs in `{roots['rloo']}`:" in header and "`rloo_kl0.05`: KL coef 0.05, 2 checkpoints" in header
    assert f"- Preferred-FT runs in `{roots['pft']}`:" in header and "`preferred_ft`: 1 checkpoint" in header
    table = report.split("## Reward versus KL")[1].split("\n## ")[0]
    assert "| method | run | step | reward | KL | n |" in table and "| RLOO | rloo_kl0.05 | 3 |" in table
    section = report.split("## Best reward within a KL budget")[1].split("\n## ")[0]
    assert "| method | KL <= 0.5 | KL <= 5 |" in section and "analytic bound" in section
    assert "| DPO | 0.605 (sigmoid_beta0.1 step 1) | 0.805 (sigmoid_beta0.1 step 2) |" in section
    assert "| RLOO | 0.705 (rloo_kl0.05 step 1) | 0.705 (rloo_kl0.05 step 1) |" in section
    assert "| Preferred-FT | 0.505 (sft step 0) | 0.555 (preferred_ft step 2) |" in section
    assert "| SFT | 0.505 (sft step 0) | 0.505 (sft step 0) |" in section
    curves = report.split("## Training curves")[1].split("\n## ")[0]
    for method, root, run in (("DPO", "dpo", "sigmoid_beta0.1"), ("RLOO", "rloo", "rloo_kl0.05"),
                              ("Preferred-FT", "pft", "preferred_ft")):
        png = os.path.relpath(roots[root] / run / "training_curves.png", out)
        assert f"### {method}: {run}" in curves and f"![{run}]({png})" in curves
    assert report.index("frontier_budget.csv") > 0


def test_render_report_without_baselines_keeps_the_dpo_report():
    rows = [r for r in summary_rows() if r["method"] in ("sft", "dpo", "best_of_n")]
    finals = [{**rows[0], "label": "sft"}]
    settings = {"reward_model": "vader", "num_prompts": 2, "samples_per_prompt": 2, "best_of_n_samples": 4,
                "temperature": 1.0, "max_new_tokens": 8, "sampling_dtype": "float32", "kl_dtype": "float32"}
    provenance = {"preset": "tiny", "git_commit": "abc", "date": "today", "sft_model": {"path": "/sft", "run_id": "r"},
                  "runs_root": "/runs", "base_model": None}
    report = render_report("/out/report.md", provenance, rows, finals, {}, {}, settings, kl_budgets=[1.0])
    assert "- RLOO runs: none in `/runs/rloo`" in report and "- Preferred-FT runs: none in `/runs/preferred_ft`" in report
    section = report.split("## Best reward within a KL budget")[1]
    assert "| DPO | 0.700 (sigmoid_beta0.1 step 2) |" in section and "RLOO" not in section
    assert "| best-of-N (KL: analytic bound) | 0.700 (best_of_n step 4) |" in section


def test_rerun_skips_same_settings_models_and_budgets_and_rewrites_tables_for_other_budgets(roots, monkeypatch, capsys):
    args = eval_args(roots)
    units, skipped = eval_stage.models_to_evaluate(args)
    settings = eval_stage.settings_of(args)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    write_json_atomic(os.path.join(args.output_dir, "manifest.json"), {
        "stage": "eval", "finished": True, "run_id": "x", "started_at": "then", "settings_key": key, "settings": settings,
        "planned": {"units": units, "skipped": skipped}, "config": {"eval": {"kl_budgets": [1.0, 3.0, 10.0]}}})
    evaluated, written = [], []

    class Recording:  # which models are evaluated, without loading any
        def __init__(self, *args):
            pass

        def evaluate(self, unit, stop):
            return evaluated.append(unit["run"]) or []

    monkeypatch.setattr(eval_stage, "Evaluator", Recording)
    monkeypatch.setattr(eval_stage, "write_outputs", lambda args, *a: written.append(list(args.kl_budgets)))
    assert eval_stage.evaluate_all(args, None, []) == 0
    assert "finished with these settings and models; skipping" in capsys.readouterr().out
    assert evaluated == written == []
    args.kl_budgets = [2.0]  # tables only: the finished records are read again, nothing is sampled
    assert eval_stage.evaluate_all(args, None, []) == 0
    assert written == [[2.0]] and sorted(set(evaluated)) == ["preferred_ft", "rloo_kl0.05", "sft", "sigmoid_beta0.1"]
    assert read_manifest(args.output_dir)["config"]["eval"]["kl_budgets"] == [2.0]
    assert eval_stage.evaluate_all(args, None, []) == 0 and written == [[2.0]]  # and now that run is the finished one
