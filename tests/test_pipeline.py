"""End to end: `./run_pipeline.sh tiny` as a user runs it, and the DPO effect it must show."""

import csv
import os
import subprocess
import sys

from conftest import REPO
from imdb_dpo.methods import frontier_methods, registry
from imdb_dpo.evaluation.plots import plot_frontier


def rerun_pipeline_in_process(output_root, monkeypatch, capsys) -> str:
    """Every stage of the tiny pipeline again, as `./run_pipeline.sh tiny` runs them (on this CPU machine, in one
    process: this one)."""
    from imdb_dpo.launch import pipeline

    monkeypatch.setenv("OUTPUT_ROOT", str(output_root))
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    assert pipeline.main(["tiny"]) == 0
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
    # in 50 steps: a larger beta also scales the gradient, so the high-beta run moves faster early on.
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
    tiny = [m for m in frontier_methods() if os.path.isfile(os.path.join(REPO, "configs/tiny", f"{m.key}.yaml"))]
    assert {r["method"] for r in rows} == {"sft", "base", "best_of_n", *(m.key for m in tiny)}
    for view in ("paper", "full"):
        labels = plot_frontier(rows, str(tmp_path / f"{view}.png"), view=view)
        assert all(any(label.startswith(m.title) for label in labels) for m in tiny), labels


def test_on_a_gpu_machine_each_stage_runs_in_a_fresh_process_that_a_sigterm_stops_and_a_rerun_finishes(tiny_run,
                                                                                                       tmp_path):
    """IMDB_DPO_FRESH_PROCESSES=1 launches the stages as a GPU machine does: the pipeline passes SIGTERM (a SLURM
    preemption, `timeout`) on to the running stage, which saves and stops; the chain stops with its status. (In one
    process the stage's own handler gets the signal: each stage's tests stop it so.)"""
    import signal
    import subprocess
    import sys

    import yaml

    from helpers import wait_until
    from imdb_dpo.lifecycle.manifests import read_manifest
    from imdb_dpo.lifecycle.preemption import EXIT_RESUMABLE

    root = tiny_run["root"]
    with open(os.path.join(REPO, "configs/tiny/dpo.yaml")) as f:
        config = yaml.safe_load(f)
    config.update(model_name_or_path=str(root / "outputs/tiny/sft"), pairs_file=str(root / "generations/tiny/pairs.jsonl"),
                  output_dir=str(tmp_path / "dpo"), betas=[0.1], max_train_pairs=320, frontier_eval="")
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "dpo.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "IMDB_DPO_FRESH_PROCESSES": "1"}
    command = [sys.executable, "-m", "imdb_dpo.launch.pipeline", str(preset)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "dpo/sigmoid_beta0.1"
    wait_until(lambda: (run_dir / "checkpoint-2" / "trainer_state.json").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_RESUMABLE, out[-3000:]
    assert "SIGTERM received" in out and f"== dpo stopped (exit status {EXIT_RESUMABLE})" in out
    assert not read_manifest(run_dir)["finished"]
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "== done in" in rerun.stdout, rerun.stderr[-3000:]
    assert read_manifest(run_dir)["finished"] and read_manifest(run_dir)["global_step"] == 10


def test_a_folder_without_stage_configs_is_no_preset_and_help_is_usage(tmp_path):
    script, env = os.path.join(REPO, "run_pipeline.sh"), {**os.environ, "PYTHON": sys.executable}
    empty = subprocess.run([script, str(tmp_path)], capture_output=True, text=True, env=env)
    assert empty.returncode == 2 and f"{tmp_path} holds no stage config" in empty.stderr
    for flag in ("-h", "--help"):
        shown = subprocess.run([script, flag], capture_output=True, text=True, env=env)
        assert shown.returncode == 0 and shown.stdout.startswith("usage: ./run_pipeline.sh <preset>")
    odd = subprocess.run([script, "-x"], capture_output=True, text=True, env=env)
    assert odd.returncode == 2 and "no preset '-x'" in odd.stderr


def test_the_pipeline_knows_every_config_of_each_preset_and_every_method():
    from imdb_dpo.launch.pipeline import stages as pipeline_stages

    stages = [name for name, _ in pipeline_stages()]
    for preset in ("tiny", "gpt2-large"):
        configs = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(REPO, "configs", preset))}
        assert configs <= set(stages), configs - set(stages)  # a config the pipeline would silently skip
    assert set(registry()) <= set(stages) and stages[-1] == "eval"
