"""End to end: `./run_pipeline.sh tiny` as a user runs it, and the DPO effect it must show."""

import csv
import os
import re

from conftest import REPO, run_in_process
from imdb_dpo.methods import TRAINED
from imdb_dpo.plots import plot_frontier


def pipeline_stages() -> list[tuple[str, str]]:
    """(script, config) of every stage `./run_pipeline.sh tiny` runs, in its order, read from the script itself."""
    with open(os.path.join(REPO, "run_pipeline.sh")) as f:
        script = f.read()
    stages = re.search(r"^for stage in ([\w ]+); do$", script, re.M).group(1).split()
    assert stages[:3] == ["sft", "preference_pairs", "dpo"] and stages[-1] == "eval"
    return [("rloo.py" if stage == "rloo_rm" else f"{stage}.py", f"configs/tiny/{stage}.yaml") for stage in stages]


def rerun_pipeline_in_process(output_root, monkeypatch, capsys) -> str:
    """Every stage of the tiny pipeline again, as `./run_pipeline.sh tiny` runs them, in this process (the session's
    fixture ran the script itself; a rerun in fresh processes would add ten-odd seconds of imports a stage)."""
    from imdb_dpo.cli import run_stage
    from imdb_dpo.config import TinyBaseArguments
    from imdb_dpo.tiny import build_tiny_base

    monkeypatch.setenv("OUTPUT_ROOT", str(output_root))
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    assert run_stage(build_tiny_base, [TinyBaseArguments], ["--config", "configs/tiny/base.yaml"]) == 0
    for script, config in pipeline_stages():
        assert os.path.isfile(os.path.join(REPO, config)), config
        run_in_process(script, ["--config", config])
    return capsys.readouterr().out


def test_tiny_pipeline_shows_the_dpo_effect_and_reruns_as_a_no_op(tiny_run, monkeypatch, capsys):
    tmp_path = tiny_run["root"]  # the session's run of the whole pipeline (conftest), which every stage test reads
    with open(tmp_path / "outputs/tiny/eval/summary.csv") as f:
        rows = list(csv.DictReader(f))
    sft_reward = float(next(r for r in rows if r["run"] == "sft")["reward_mean"])
    finals = {}
    for r in rows:
        if r["run"].startswith("sigmoid_beta") and int(r["step"]) >= int(finals.get(r["beta"], {"step": -1})["step"]):
            finals[r["beta"]] = r
    assert sorted(finals, key=float) == ["0.1", "1.0", "5.0"]
    for beta, row in finals.items():
        assert float(row["reward_mean"]) > sft_reward + 0.2, (beta, row["reward_mean"], sft_reward)
    kls = {beta: float(row["kl_mean"]) for beta, row in finals.items()}
    # A small beta lets the policy move furthest from the reference. Between 1 and 5 the order is not DPO's to keep
    # in 86 steps: a larger beta also scales the gradient, so the high-beta run moves faster early on.
    assert kls["0.1"] > max(kls["1.0"], kls["5.0"]) and min(kls.values()) > 0, kls
    assert os.path.isfile(tmp_path / "generations/tiny/pairs.jsonl")
    assert os.path.isfile(tmp_path / "outputs/tiny/eval/report.md")

    before = {p: os.path.getmtime(p) for p in tmp_path.rglob("*")  # lock files are rewritten by every run
              if p.is_file() and "eval" not in p.parts and p.suffix != ".lock"}
    out = rerun_pipeline_in_process(tmp_path, monkeypatch, capsys)
    assert out.count("skipping") >= 5  # base, SFT, pairs and the three DPO runs
    assert all(os.path.getmtime(p) == t for p, t in before.items())


def test_the_summary_and_both_plots_carry_every_method(tiny_run, tmp_path):
    with open(tiny_run["root"] / "outputs/tiny/eval/summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"sft", "base", "best_of_n", *(m.key for m in TRAINED)}
    for view in ("paper", "full"):
        labels = plot_frontier(rows, str(tmp_path / f"{view}.png"), view=view)
        assert all(any(label.startswith(m.title) for label in labels) for m in TRAINED), labels
