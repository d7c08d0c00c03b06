"""The job scripts' signal handling, without a SLURM: `scontrol` is a stand-in that records what it was asked."""

import os
import re
import signal
import subprocess
import time

from conftest import REPO
from helpers import wait_until

RESTARTABLE = """
source slurm/common.sh
run_restartable sleep 300
"""


def children(pid: int) -> list[str]:
    """The command names of `pid`'s child processes, from /proc."""
    names = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # the process ended meanwhile
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) == pid:
            names.append(name)
    return names


def stand_in(tmp_path, command: str, output: str = "") -> tuple:
    """A `command` on a PATH of its own that records its arguments in a file (and prints `output`): the environment
    and the file."""
    bin_dir, calls = tmp_path / "bin", tmp_path / f"{command}_calls"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / command).write_text(f'#!/bin/sh\necho "$@" >> {calls}\n' + (f"echo {output}\n" if output else ""))
    (bin_dir / command).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def test_a_stage_that_cannot_save_is_stopped_and_its_job_requeued_on_the_warning(tmp_path):
    env, calls = stand_in(tmp_path, "scontrol")
    env.update(SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=REPO, OUTPUT_ROOT=str(tmp_path))
    job = subprocess.Popen(["bash", "-c", RESTARTABLE], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: "sleep" in children(job.pid), job)
    started = time.time()
    job.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit
    out, _ = job.communicate(timeout=30)
    assert job.returncode == 0 and time.time() - started < 10, out  # the stage was stopped, not waited for
    assert calls.read_text() == "requeue 4242\n"
    assert "the requeued job starts it over" in out


def test_every_job_script_that_runs_a_stage_is_requeueable():
    for name in ("sft", "pairs", "train", "eval"):
        text = open(os.path.join(REPO, "slurm", f"{name}.sbatch")).read()
        assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@" in text, name
        assert re.search(r"\n *run_(requeueable|restartable) ", text), name


def test_submit_preset_checks_its_numbers_before_submitting_anything(tmp_path):
    """A bad ARRAY_LIMIT or shard count would otherwise fail at a later sbatch, the chain half submitted."""
    env, calls = stand_in(tmp_path, "sbatch", output="1")
    for extra, args, message in (({"ARRAY_LIMIT": "abc"}, ["tiny"], "ARRAY_LIMIT='abc'"),
                                 ({"ARRAY_LIMIT": "0"}, ["tiny"], "ARRAY_LIMIT='0'"),
                                 ({}, ["tiny", "0"], "number of pair shards '0'")):
        proc = subprocess.run(["slurm/submit_preset.sh", *args], cwd=REPO, env={**env, **extra}, capture_output=True,
                              text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not calls.exists()
    proc = subprocess.run(["bash", "slurm/train.sbatch"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "usage: sbatch --array" in proc.stderr


def launch_of(tmp_path, **env) -> subprocess.CompletedProcess:
    """The stage command slurm/common.sh makes of LAUNCH in a job with `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run(["bash", "-c", 'source slurm/common.sh; echo "$LAUNCH"'], cwd=REPO, capture_output=True,
                          text=True, env={**clean, "SLURM_SUBMIT_DIR": REPO, "OUTPUT_ROOT": str(tmp_path),
                                          "PATH": f"{tmp_path}/no_nvidia_smi:/usr/bin:/bin", **env})


def test_launch_takes_its_process_count_from_the_allocation_and_kills_on_a_bad_exit(tmp_path):
    ddp = "accelerate launch --config_file configs/accelerate/ddp.yaml"
    assert launch_of(tmp_path).stdout.strip() == "python"
    assert launch_of(tmp_path, LAUNCH="accelerate", SLURM_GPUS_ON_NODE="4").stdout.strip() == f"{ddp} --num_processes 4"
    assert launch_of(tmp_path, LAUNCH="accelerate", CUDA_VISIBLE_DEVICES="2,5").stdout.strip() == f"{ddp} --num_processes 2"
    own = launch_of(tmp_path, LAUNCH="accelerate launch --config_file my.yaml", SLURM_GPUS_ON_NODE="2")
    assert own.stdout.strip() == "accelerate launch --config_file my.yaml --num_processes 2"
    given = launch_of(tmp_path, LAUNCH=f"{ddp} --num_processes 3", SLURM_GPUS_ON_NODE="8")
    assert given.stdout.strip() == f"{ddp} --num_processes 3"  # the user's count stands
    assert launch_of(tmp_path, LAUNCH="multinode").stdout.strip() == (
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 slurm/multinode_launch.sh")
    assert launch_of(tmp_path, LAUNCH="srun --ntasks=2").stdout.strip() == "srun --kill-on-bad-exit=1 --ntasks=2"
    refused = launch_of(tmp_path, LAUNCH="accelerate")
    assert refused.returncode == 2 and "this job has no GPU: submit it with --gres=gpu:N" in refused.stderr


def test_every_job_script_asks_for_cpus_and_memory_per_gpu():
    for name in os.listdir(os.path.join(REPO, "slurm")):
        text = open(os.path.join(REPO, "slurm", name)).read()
        if name.endswith(".sbatch") and "--gres=gpu" in text:
            assert "#SBATCH --cpus-per-gpu=" in text and "#SBATCH --mem-per-gpu=" in text, name
            assert "--cpus-per-task" not in text and "#SBATCH --mem=" not in text, name
