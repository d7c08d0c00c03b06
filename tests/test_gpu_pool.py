"""`--gpus N`: a preset's runs on a node's N GPUs at once, one per GPU (imdb_dpo/launch/gpu_pool.py): the schedule, the
refusals, and real stages run in CPU processes (IMDB_DPO_ALLOW_CPU_GPUS=1)."""

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import REPO
from imdb_dpo.launch import pipeline
from imdb_dpo.launch.gpu_pool import ListSchedule, Run, preset_runs, run_runs, wall_clock, waits_for
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.lifecycle.preemption import EXIT_RESUMABLE

EVERYTHING = ("sft", "pairs", "dpo", "reward_model", "rloo_rm")
JOBS = [("sft", 10, ()), ("pairs", 5, ("sft",)), *[("dpo", 20, ("pairs",))] * 4, ("reward_model", 8, ("pairs",)),
        *[("rloo_rm", 6, ("reward_model",))] * 2, ("eval", 3, EVERYTHING)]


def test_wall_clock_is_list_scheduling_in_stage_order():
    # 3 GPUs, by hand: sft 0-10, pairs 10-15; at 15 the first three DPO runs take the three GPUs (stage order puts
    # them before the reward model); at 35 the fourth DPO run and the reward model start, the third GPU idles (RLOO
    # on the reward model waits for it); at 43 both RLOO runs start (end 49); the fourth DPO run ends at 55; eval 55-58.
    assert wall_clock(JOBS, 3) == 58
    assert wall_clock(JOBS, 1) == 10 + 5 + 4 * 20 + 8 + 2 * 6 + 3  # one GPU: the sum
    assert wall_clock(JOBS, 100) == 10 + 5 + max(20, 8 + 6) + 3  # GPUs to spare: the longest chain
    assert wall_clock([("dpo", 7, ("not_in_the_preset",))] * 3, 2) == 14
    with pytest.raises(ValueError):
        wall_clock(JOBS, 0)


def test_a_failed_stage_blocks_what_waits_for_it_and_nothing_else():
    schedule = ListSchedule([(stage, tuple(needs)) for stage, _, needs in JOBS])
    assert [schedule.next_ready(), schedule.next_ready()] == [0, None]
    schedule.done(0)
    assert schedule.next_ready() == 1
    schedule.done(1)
    started = [schedule.next_ready() for _ in range(5)]
    assert started == [2, 3, 4, 5, 6]  # the DPO runs, then the reward model
    schedule.done(6, ok=False)  # the reward model fails: RLOO on it and the evaluation never start
    assert schedule.blocked() == [7, 8, 9] and schedule.next_ready() is None
    for i in (2, 3, 4, 5):
        schedule.done(i)
    assert schedule.pending == [] and schedule.failed == {"reward_model", "rloo_rm", "eval"}


def test_a_presets_runs_are_its_slurm_array_tasks_after_what_they_read():
    runs = preset_runs(os.path.join(REPO, "configs/gpt2-large"))
    stages = [r.stage for r in runs]
    dpo = [r for r in runs if r.stage == "dpo"]
    assert len(dpo) == 12 and dpo[5].flags == ("--betas", "0.1", "--seeds", "2")  # sweep_tasks' task 5
    assert dpo[5].log_name == "dpo_beta0.1_seed2.log" and dpo[5].command[-4:] == dpo[5].flags
    assert stages.index("dpo_reference") == stages.index("dpo") - 1 and dpo[0].waits_for == ("dpo_reference",)
    reference = runs[stages.index("dpo_reference")]
    assert reference.command[-2:] == ("--reference_only", "true") and reference.waits_for == ("preference_pairs",)
    assert stages.count("rloo_rm") == 9 and runs[stages.index("rloo_rm")].waits_for == ("reward_model",)
    assert stages.count("preferred_ft") == 3 and stages.count("sft") == stages.count("eval") == 1
    assert stages[-1] == "eval" and set(runs[-1].waits_for) == set(stages) - {"eval"}
    # A stage the preset lacks is passed through: its outputs are on disk already.
    assert waits_for("dpo", ["sft", "dpo", "eval"]) == ("sft",) and waits_for("kto", ["kto"]) == ()


@pytest.mark.parametrize("flags, says", [(["--gpus", "0"], "--gpus '0'"), (["--gpus", "x"], "--gpus 'x'"),
                                         (["--gpus"], "--gpus without a number"), (["--gpus=1.5"], "--gpus '1.5'"),
                                         (["--gpus", "many"], "--gpus 'many'"), (["many"], None)])
def test_a_bad_gpus_flag_is_refused_in_one_paragraph(flags, says, monkeypatch, capsys):
    monkeypatch.setenv("IMDB_DPO_ALLOW_CPU_GPUS", "1")  # refused before the machine's GPUs are counted
    assert pipeline.main(["tiny", *flags]) == 2
    err = capsys.readouterr().err
    if says is None:
        assert err.startswith("usage: python -m imdb_dpo.launch.pipeline <preset> [--gpus N]")
        return
    assert err.startswith(f"error: {says}: give the number") and err.count("\n") == 1 and "Traceback" not in err


def test_more_gpus_than_the_machine_has_are_refused_unless_cpu_processes_are_asked_for(monkeypatch, capsys):
    import torch

    monkeypatch.delenv("IMDB_DPO_ALLOW_CPU_GPUS", raising=False)
    found = torch.cuda.device_count()
    assert pipeline.main(["tiny", "--gpus", str(found + 1)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --gpus {found + 1} asks for {found + 1} GPUs, but torch.cuda.device_count() finds ")
    assert err.count("\n") == 1 and "Traceback" not in err and "IMDB_DPO_ALLOW_CPU_GPUS=1" in err
    script = subprocess.run([os.path.join(REPO, "run_pipeline.sh"), "tiny", "--gpus", "x"], capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable})
    assert script.returncode == 2 and script.stderr.startswith("error: --gpus 'x': give the number"), script.stderr
    usage = subprocess.run([os.path.join(REPO, "run_pipeline.sh"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: ./run_pipeline.sh <preset> [--plan [--gpu KIND]] [--gpus N]")


def fake_run(stage: str, code: str, waits: tuple = ()) -> Run:
    """A run whose process is a few lines of Python."""
    return Run(stage, "-", None, (), (sys.executable, "-c", f"import signal, sys, time\n{code}"), waits)


def test_sigterm_reaches_every_running_run_and_nothing_new_starts(tmp_path, capsys):
    saves = "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\nprint('ready', flush=True)\ntime.sleep(60)"
    runs = [fake_run("a", saves), Run("a", "-", None, ("--seeds", "1"), fake_run("a", saves).command, ()),
            fake_run("b", "pass", ("a",))]

    def stop_once_both_ready():
        logs = [tmp_path / "a.log", tmp_path / "a_seed1.log"]
        while not all(p.is_file() and "ready" in p.read_text().splitlines() for p in logs):  # not the command's
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_both_ready, daemon=True).start()
    handler = signal.getsignal(signal.SIGTERM)
    assert run_runs(runs, ["0", "1"], str(tmp_path)) == EXIT_RESUMABLE
    out = capsys.readouterr().out
    assert out.count("stopped (exit status 75)") == 2 and "b: started" not in out, out
    assert "0 finished, 0 failed, 2 stopped, 1 not started" in out
    assert signal.getsignal(signal.SIGTERM) is handler  # the pool's handler is gone


def test_a_failed_run_is_named_and_the_others_go_on(tmp_path, capsys):
    runs = [fake_run("a", "sys.exit('error: a config to fix')"), fake_run("b", "pass"),
            fake_run("c", "pass", ("a",)), fake_run("d", "pass", ("b",))]
    assert run_runs(runs, ["0"], str(tmp_path)) == 1  # the failed run's status
    out = capsys.readouterr().out
    log = tmp_path / "a.log"
    assert "a: FAILED (exit status 1)" in out and f"log {log}: error: a config to fix" in out
    assert "c: not started: it needs a, which did not finish" in out and "d: finished" in out
    assert "2 finished, 1 failed, 0 stopped, 1 not started" in out
    assert log.read_text().startswith("CUDA_VISIBLE_DEVICES=0\n")


@pytest.fixture(scope="module")
def two_gpu_run(tiny_sft, tiny_pairs, tmp_path_factory):
    """`./run_pipeline.sh <preset> --gpus 2` on CPU processes, for a preset of DPO (two betas, 2 steps each), ORPO
    on a pair file that is not there, and the evaluation."""
    root = tmp_path_factory.mktemp("gpu_pool")
    preset = root / "first" / "preset"
    preset.mkdir(parents=True)
    shared = dict(model_name_or_path=tiny_sft, frontier_eval="", report_to="none")
    for stage, settings in (("dpo", dict(pairs_file=tiny_pairs, betas=[0.1, 1.0], max_train_pairs=64)),
                            ("orpo", dict(pairs_file=str(root / "missing.jsonl"), betas=[0.1]))):
        with open(os.path.join(REPO, f"configs/tiny/{stage}.yaml")) as f:
            config = yaml.safe_load(f)
        config.update(shared, output_dir=str(root / stage), **settings)
        (preset / f"{stage}.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(os.path.join(REPO, "configs/tiny/eval.yaml"), preset / "eval.yaml")  # never started: ORPO fails
    env = {**os.environ, "OUTPUT_ROOT": str(root), "PYTHON": sys.executable, "IMDB_DPO_ALLOW_CPU_GPUS": "1"}

    def run(folder):
        return subprocess.run([os.path.join(REPO, "run_pipeline.sh"), str(folder), "--gpus", "2"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)

    return {"root": root, "proc": run(preset), "run": run, "logs": root / "outputs/preset/logs"}


@pytest.mark.slow
def test_two_gpus_run_the_two_dpo_runs_at_once_and_a_rerun_skips_them(two_gpu_run):
    root, proc, logs = two_gpu_run["root"], two_gpu_run["proc"], two_gpu_run["logs"]
    out = proc.stdout
    runs = {"0.1": root / "dpo/sigmoid_beta0.1", "1.0": root / "dpo/sigmoid_beta1"}
    assert all(read_manifest(d)["finished"] for d in runs.values()), out[-3000:] + proc.stderr[-3000:]
    # One reference pass, before either run started, and the runs cache nothing of their own: they read its log-probs.
    assert "reference log-probs cached in" in (logs / "dpo_reference.log").read_text()
    assert out.index("dpo_reference: finished") < min(out.index(f"dpo --betas {b}: started") for b in runs)
    started = min(datetime.datetime.fromisoformat((logs / f"dpo_beta{b}.log").read_text().splitlines()[1].split()[0])
                  for b in runs).timestamp()
    caches = list((root / "dpo/.datasets_cache").rglob("cache-*.arrow"))
    assert caches and all(int(p.stat().st_mtime) <= started for p in caches)
    # Each run in a process of its own, on a GPU of its own.
    devices, pids = set(), set()
    for beta, run_dir in runs.items():
        lines = (logs / f"dpo_beta{beta}.log").read_text().splitlines()
        device = re.fullmatch(r"CUDA_VISIBLE_DEVICES=(\d)", lines[0]).group(1)
        pid = int(re.search(rf"dpo --betas {beta}: started on GPU {device} \(pid (\d+)\)", out).group(1))
        with open(run_dir.parent / f".{run_dir.name}.lock") as f:
            assert json.load(f)["pid"] == pid  # the process that held the run's lock
        devices.add(device)
        pids.add(pid)
    assert devices == {"0", "1"} and len(pids) == 2

    # A rerun of the same DPO config skips both runs and leaves them as they were.
    again = root / "again" / "preset"
    again.mkdir(parents=True)
    shutil.copy(root / "first/preset/dpo.yaml", again / "dpo.yaml")
    before = {p: p.stat().st_mtime for d in runs.values() for p in d.rglob("*") if p.is_file()}
    rerun = two_gpu_run["run"](again)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for beta in runs:
        last_attempt = (logs / f"dpo_beta{beta}.log").read_text().rsplit("CUDA_VISIBLE_DEVICES=", 1)[1]
        assert "is finished with these settings; skipping" in last_attempt
    assert all(p.stat().st_mtime == t for p, t in before.items())


@pytest.mark.slow
def test_a_stage_that_fails_is_named_its_dependents_wait_and_the_pipeline_fails(two_gpu_run):
    proc, logs = two_gpu_run["proc"], two_gpu_run["logs"]
    out = proc.stdout
    assert proc.returncode == 2, out[-3000:]  # ORPO's user error, exit status 2
    log = logs / "orpo_beta0.1.log"
    assert re.search(rf"orpo --betas 0.1: FAILED \(exit status 2\) after \d+ s; log {log}: error: pairs_file="
                     rf"'{log.parents[3]}/missing.jsonl'", out)
    assert "eval: not started: it needs orpo, which did not finish" in out
    assert "3 finished, 1 failed, 0 stopped, 1 not started" in out  # the reference pass and both DPO runs
