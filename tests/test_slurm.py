"""On a real SLURM (single node on localhost): a job warned mid-work as SLURM warns it before its time limit saves,
requeues itself, resumes, and ends exactly as an uninterrupted run.

Skipped where SLURM is not installed, except in CI (CI=true), where `.ci/run` installs it and it must run.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from imdb_dpo.methods import registry
from conftest import REPO
from imdb_dpo.lifecycle.manifests import read_manifest
from slurm_cluster import SlurmCluster, slurm_installed

if not slurm_installed():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but SLURM is not installed: .ci/run must install slurm-wlm and munge")
    pytest.skip("SLURM (slurm-wlm, munge) is not installed here; CI installs it and runs these tests",
                allow_module_level=True)

# Each job is warned once, mid-work, the way SLURM's `--signal=B:USR1@N` warns it before its time limit: USR1 to the
# batch shell alone (`scancel --batch`), sent by the test once the stage has saved something. Waiting out a real time
# limit instead (one minute, SLURM's shortest, warned 10-40 s in) needs a job longer than 40 s on the fastest machine,
# hence minutes of requeues on a slow one; the limit here is long enough never to be reached.
JOB_LIMITS = ["--time=15", "--gres=gpu:1", "--mem-per-gpu=1G", "--cpus-per-gpu=1"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def drive_to_end(cluster, jobs: dict, timeout: float = 900) -> dict[str, dict]:
    """Wait for the jobs to end, warning each (USR1 to its batch shell) the first time it is running and
    `jobs[job_id]()` says it has made progress. SLURM holds a requeued job back (BeginTime) for about two minutes
    while the node cleans up; once it has been pending 10 s and the node has a free core again, releasing it only
    shortens the test (released at once, the relaunch can race slurmd's cleanup and fail)."""
    deadline = time.time() + timeout
    pending_since, ended, warned = {}, {}, set()
    while time.time() < deadline:
        for job_id, progressed in jobs.items():
            if job_id in ended:
                continue
            out = cluster.run("scontrol", "show", "job", job_id).stdout
            fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
            state = fields.get("JobState")
            if state in ENDED:
                ended[job_id] = fields
            elif state == "RUNNING" and job_id not in warned and progressed():
                cluster.run("scancel", "--batch", "--signal=USR1", job_id, check=True)
                warned.add(job_id)
            elif state == "PENDING" and fields.get("Reason") == "BeginTime":
                pending_since.setdefault(job_id, time.time())
                node_free = cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() in ("idle", "mixed")
                if time.time() - pending_since[job_id] > 10 and node_free:
                    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            else:
                pending_since.pop(job_id, None)
        if len(ended) == len(jobs):
            return ended
        time.sleep(0.5)
    raise AssertionError(f"jobs {list(jobs)} did not end in {timeout} s\n{cluster.logs()}")


def job_env(output_root, **extra):
    return {"OUTPUT_ROOT": str(output_root), "PYTHONPATH": REPO, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"],
            "TQDM_DISABLE": "1", **extra}


DPO_ARGS = "--frontier_eval= --max_steps 30 --save_steps 5 --logging_steps 1 --per_device_train_batch_size 16 --dataloader_num_workers 0"
PAIR_ARGS = ["--num_prompts", "120", "--batch_size", "1", "--max_new_tokens", "48"]


@pytest.fixture(scope="module")
def requeued(cluster, tiny_base, tiny_sft, tiny_pairs, tmp_path_factory):
    """A DPO job and a pair-shard job, submitted together (each asks for one core) and each warned once it has saved
    something; then the same work run straight through outside SLURM, both at once, for comparison."""
    top = tmp_path_factory.mktemp("requeued")
    dpo_root, pairs_root = top / "dpo_run", top / "pairs_run"
    shutil.copytree(tiny_sft, dpo_root / "outputs/tiny/sft")
    shutil.copytree(os.path.dirname(tiny_pairs), dpo_root / "generations/tiny")
    shutil.copytree(tiny_base["dir"], pairs_root / "outputs/tiny/base")
    shutil.copytree(tiny_sft, pairs_root / "outputs/tiny/sft")
    dpo_log, pairs_log = top / "dpo_job.out", top / "pairs_job.out"
    dpo_job = cluster.submit(*JOB_LIMITS, f"--output={dpo_log}", "--array=0", "slurm/train.sbatch", "dpo", "tiny",
                             env=job_env(dpo_root, TRAIN_ARGS=DPO_ARGS, OMP_NUM_THREADS="1"))  # beta 0.1
    pairs_job = cluster.submit(*JOB_LIMITS, f"--output={pairs_log}", "--array=0", "slurm/pairs.sbatch", "tiny", "2",
                               *PAIR_ARGS, env=job_env(pairs_root, OMP_NUM_THREADS="1"))
    checkpoints = dpo_root / "outputs/tiny/dpo/sigmoid_beta0.1"
    completions = pairs_root / "generations/tiny/shards/0-of-2/completions.jsonl"
    ended = drive_to_end(cluster, {
        dpo_job: lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")),
        pairs_job: lambda: completions.exists() and completions.stat().st_size > 0})

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = [
        subprocess.Popen([sys.executable, "dpo.py", "--config", "configs/tiny/dpo.yaml", "--betas", "0.1",
                          *DPO_ARGS.split(), "--model_name_or_path", str(dpo_root / "outputs/tiny/sft"),
                          "--pairs_file", str(dpo_root / "generations/tiny/pairs.jsonl"),
                          "--output_dir", str(top / "dpo_straight")],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "preference_pairs.py", "--config", "configs/tiny/preference_pairs.yaml",
                          *PAIR_ARGS, "--shard_index", "0", "--num_shards", "2",
                          "--model_name_or_path", str(pairs_root / "outputs/tiny/sft"),
                          "--train_file", str(pairs_root / "outputs/tiny/base/data/train.jsonl"),
                          "--output_dir", str(top / "pairs_straight")],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
    ]
    for proc in straight:
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
    return {"top": top, "dpo_root": dpo_root, "pairs_root": pairs_root, "dpo": ended[dpo_job], "pairs": ended[pairs_job],
            "dpo_log": dpo_log, "pairs_log": pairs_log}


def test_dpo_job_is_warned_checkpoints_requeues_and_matches_an_uninterrupted_run(cluster, requeued):
    fields, text = requeued["dpo"], requeued["dpo_log"].read_text()
    assert fields["JobState"] == "COMPLETED", text[-3000:] + cluster.logs()
    assert int(fields["Restarts"]) == 1, text[-3000:]  # warned once, requeued once
    assert "asking the stage to save and stop" in text and "requeueing job" in text

    run_dir = requeued["dpo_root"] / "outputs/tiny/dpo/sigmoid_beta0.1"
    manifest = read_manifest(run_dir)
    assert manifest["finished"] and manifest["global_step"] == 30
    logged = [e["step"] for e in json.load(open(run_dir / "trainer_state.json"))["log_history"] if "loss" in e]
    assert logged == list(range(1, 31))  # no step lost, none done twice
    straight = read_manifest(requeued["top"] / "dpo_straight/sigmoid_beta0.1")
    assert manifest["checkpoints"] == straight["checkpoints"]  # the stop's checkpoint only resumed the run

    from helpers import state_dicts_equal
    from transformers import AutoModelForCausalLM
    assert state_dicts_equal(AutoModelForCausalLM.from_pretrained(run_dir),
                             AutoModelForCausalLM.from_pretrained(requeued["top"] / "dpo_straight/sigmoid_beta0.1")) == []


def test_pair_shard_job_flushes_requeues_and_matches_an_uninterrupted_shard(cluster, requeued):
    fields, text = requeued["pairs"], requeued["pairs_log"].read_text()
    assert fields["JobState"] == "COMPLETED", text[-3000:] + cluster.logs()
    assert int(fields["Restarts"]) == 1, text[-3000:]  # warned once, requeued once
    shard = requeued["pairs_root"] / "generations/tiny/shards/0-of-2"
    assert read_manifest(shard)["finished"]
    straight = requeued["top"] / "pairs_straight/shards/0-of-2/completions.jsonl"
    assert (shard / "completions.jsonl").read_bytes() == straight.read_bytes()


def test_submit_preset_chains_every_stage_with_afterok(cluster, tmp_path):
    """The tiny preset with seeds added to two of its methods (in a copy of the repository's scripts and configs): an
    array task per run."""
    repo = tmp_path / "repo"
    for part in ("slurm", "configs", "imdb_dpo"):
        shutil.copytree(os.path.join(REPO, part), repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    with open(repo / "configs/tiny/dpo.yaml", "a") as f:
        f.write("seeds: [0, 1]\n")
    with open(repo / "configs/tiny/preferred_ft.yaml", "a") as f:
        f.write("seeds: [4, 5, 6]\n")
    env = {**cluster.env, "SBATCH_EXTRA": "--hold", "OUTPUT_ROOT": str(tmp_path),
           "ARRAY_LIMIT": "2"}
    proc = subprocess.run(["slurm/submit_preset.sh", "tiny", "3"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ids = dict(line.split()[:2] for line in proc.stdout.splitlines())
    # Every method of the registry whose config the tiny preset has, after its shared pass where it has one.
    methods = [m for m in registry().values() if (repo / f"configs/tiny/{m.key}.yaml").exists()]
    shared = {m.key: f"{m.key}_{m.shared_pass_name}" for m in methods if m.shared_pass}
    assert list(ids) == ["sft", "pairs", "merge", *(k for m in methods for k in (shared.get(m.key), m.key) if k),
                         "eval"]
    try:
        def dependency(job):  # the job ids it waits for with afterok (an array shows as <id>_*)
            out = cluster.run("scontrol", "show", "job", job).stdout
            return sorted(re.findall(r"afterok:(\d+)", out.split("Dependency=")[1].split()[0]))

        job_of = {"preference_pairs": "merge"}
        waits = [("sft", "pairs"), ("pairs", "merge")]
        for m in methods:
            if m.key in shared:
                waits += [(job_of.get(need, need), shared[m.key]) for need in m.needs] + [(shared[m.key], m.key)]
            else:
                waits += [(job_of.get(need, need), m.key) for need in m.needs]
        for before, after in waits:
            assert dependency(ids[after]) == [ids[before]], (after, dependency(ids[after]))
        # The evaluation waits for every method's training.
        assert dependency(ids["eval"]) == sorted(ids[m.key] for m in methods)
        pairs_tasks = cluster.run("squeue", "-h", "-r", "-j", ids["pairs"], "-o", "%i").stdout.split()
        dpo_tasks = cluster.run("squeue", "-h", "-r", "-j", ids["dpo"], "-o", "%i").stdout.split()
        rloo_tasks = cluster.run("squeue", "-h", "-r", "-j", ids["rloo"], "-o", "%i").stdout.split()
        assert len(pairs_tasks) == 3 and len(dpo_tasks) == 6 and len(rloo_tasks) == 2  # shards; betas x seeds; KL coefs
        unlikelihood_tasks = cluster.run("squeue", "-h", "-r", "-j", ids["unlikelihood"], "-o", "%i").stdout.split()
        preferred_ft_tasks = cluster.run("squeue", "-h", "-r", "-j", ids["preferred_ft"], "-o", "%i").stdout.split()
        assert len(unlikelihood_tasks) == 1 and len(preferred_ft_tasks) == 3  # alphas; seeds
        for m in methods:
            job = cluster.run("scontrol", "show", "job", ids[m.key]).stdout
            assert f"JobName={m.key}" in job and f"train.sbatch {m.key} tiny" in job, m.key
            assert "ArrayTaskThrottle=2" in job, m.key  # ARRAY_LIMIT; not the shards
        assert "ArrayTaskThrottle=2" not in cluster.run("scontrol", "show", "job", ids["pairs"]).stdout
        assert "(6 runs: betas 0.1 1.0 5.0 x seeds 0 1)" in proc.stdout and "(2 runs: KL coefficients 0.01 0.1)" in proc.stdout
        assert "(1 run: alphas 1.0)" in proc.stdout and "(3 runs: seeds 4 5 6)" in proc.stdout
    finally:
        cluster.run("scancel", *ids.values())


TWO_TASKS = """#!/bin/bash
source slurm/common.sh
echo "accelerate: $(LAUNCH=accelerate bash -c 'source slurm/common.sh; echo "$LAUNCH"')"
# Task 1 fails at once; task 0 would wait for it for ten minutes, as a rank waits for a dead node in NCCL.
run_requeueable $LAUNCH bash -c 'if [ "$SLURM_PROCID" = 1 ]; then exit 3; fi; sleep 600'
"""


def test_a_two_task_job_ends_when_one_task_fails(cluster, tmp_path):
    """LAUNCH=srun gains --kill-on-bad-exit: the surviving task is killed and the job fails at once, instead of
    holding its GPUs until the time limit; an `accelerate` launch in the same job is given its 2 GPUs."""
    script, log = tmp_path / "two_tasks.sbatch", tmp_path / "two_tasks.out"
    script.write_text(TWO_TASKS)
    started = time.time()
    job = cluster.submit("--time=15", "--ntasks=2", "--gres=gpu:2", "--mem-per-gpu=100M", "--cpus-per-gpu=1",
                         f"--output={log}", str(script), env=job_env(tmp_path, LAUNCH="srun --ntasks=2"))
    try:
        assert cluster.wait(job, timeout=180) == "FAILED", log.read_text() if log.exists() else cluster.logs()
    finally:
        cluster.run("scancel", job)
    assert time.time() - started < 180
    text = log.read_text()
    assert "accelerate: accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2" in text
    assert "srun --kill-on-bad-exit=1 --ntasks=2 bash -c" in text  # the command line the job logged
