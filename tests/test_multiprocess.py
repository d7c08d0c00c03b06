"""Two processes on CPU (gloo), launched by torchrun, the elastic launcher behind `accelerate launch`:
SFT trains, pair sampling splits the prompts and merges them into the one-process files, and DPO keeps
the same number of pairs per optimizer step."""

import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import torch

import preference_pairs
from conftest import CPU_FLAGS, REPO, dpo_argv
from helpers import wait_until
from imdb_dpo.lifecycle.checkpoints import checkpoint_steps
from imdb_dpo.configuration.arguments import parse_config
from imdb_dpo.lifecycle.manifests import read_manifest
from test_frontier_eval import eval_config
from test_preference_pairs import pairs_argv
from transformers import AutoModelForCausalLM


def launch_two(script: str, args: list[str]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), script, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_two_process_sft_trains_and_saves_once(tiny_base, tmp_path):
    out = tmp_path / "sft"
    launch_two("sft.py", ["--config", os.path.join(REPO, "configs/tiny/sft.yaml"), "--model_name_or_path", tiny_base["model"],
                          "--train_file", tiny_base["train"], "--test_file", tiny_base["test"], "--output_dir", str(out),
                          "--max_steps", "4", "--per_device_train_batch_size", "8", *CPU_FLAGS])
    manifest = read_manifest(out)
    assert manifest["finished"] and manifest["global_step"] == 4
    AutoModelForCausalLM.from_pretrained(out)


def one_thread(run):
    """Run `run()` on one CPU thread, as each process under launch_two (OMP_NUM_THREADS=1): another thread count
    can change a logit in the last bits, and so, rarely, a sampled token (imdb_dpo/models/sampling.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def test_two_process_sampling_merges_into_the_one_process_files(tiny_base, tiny_sft, tmp_path):
    argv = pairs_argv(tiny_base, tiny_sft, tmp_path / "one")
    assert one_thread(lambda: preference_pairs.main(*parse_config(preference_pairs.STAGES, argv))) == 0
    launch_two("preference_pairs.py", pairs_argv(tiny_base, tiny_sft, tmp_path / "two"))
    assert sorted(d for d in os.listdir(tmp_path / "two" / "shards") if not d.endswith(".lock")) == ["0-of-2", "1-of-2"]
    for name in ("completions.jsonl", "pairs.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_two_process_dpo_sees_the_same_pairs_per_optimizer_step(tiny_base, tiny_sft, tiny_pairs, tmp_path):
    extra = ["--betas", "0.1", "--max_train_pairs", "128", "--examples_per_step", "32", "--save_steps", "100"]
    subprocess.run([sys.executable, "dpo.py", *dpo_argv(tiny_sft, tiny_pairs, tmp_path / "one", *extra)], cwd=REPO,
                   check=True, capture_output=True)
    # The two processes also evaluate each checkpoint as it is saved, each sampling every other batch.
    evaluation = eval_config(tmp_path, tiny_base, tiny_sft, "eval", tmp_path / "two" / "dpo")
    launch_two("dpo.py", dpo_argv(tiny_sft, tiny_pairs, tmp_path / "two" / "dpo", *extra, "--frontier_eval", evaluation))
    one = read_manifest(tmp_path / "one" / "sigmoid_beta0.1")
    two = read_manifest(tmp_path / "two" / "dpo" / "sigmoid_beta0.1")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["examples_per_step"] == two["examples_per_step"] == 32
    assert one["global_step"] == two["global_step"] == 4
    assert two["config"]["training"]["per_device_train_batch_size"] == 16

    # One run id on both ranks: the records of every checkpoint lie in one folder, whole and in prompt order.
    runs = glob.glob(str(tmp_path / "eval" / "eval" / "records" / "*" / "sigmoid_beta0.1" / "*"))
    assert [os.path.basename(r) for r in runs] == [two["run_id"]]
    assert two["checkpoints"] == [2, 3, 4] and checkpoint_steps(tmp_path / "two" / "dpo" / "sigmoid_beta0.1") == []
    for step in two["checkpoints"]:
        records = [json.loads(line) for line in open(os.path.join(runs[0], f"step-{step}", "records.jsonl"))]
        ids = [(r["prompt_id"], r["sample"]) for r in records]
        assert len(set(ids)) == 12 * 4 and [i for _, i in ids] == [0, 1, 2, 3] * 12
        assert read_manifest(os.path.join(runs[0], f"step-{step}"))["n"] == 12 * 4


def test_two_process_evaluation_equals_the_one_process_evaluation(tiny_base, tiny_sft, tiny_dpo, tmp_path):
    import eval as eval_stage
    from test_eval import eval_argv

    dpo_root = tmp_path / "runs" / "dpo"  # one run of the preset's sweep
    shutil.copytree(tiny_dpo, dpo_root / os.path.basename(tiny_dpo))
    argv = eval_argv(tiny_base, tiny_sft, dpo_root, tmp_path / "one")
    assert one_thread(lambda: eval_stage.main(*parse_config(eval_stage.STAGES, argv))) == 0
    launch_two("eval.py", eval_argv(tiny_base, tiny_sft, dpo_root, tmp_path / "two"))
    assert (tmp_path / "two/summary.csv").read_bytes() == (tmp_path / "one/summary.csv").read_bytes()
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("records.jsonl"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("records.jsonl"))
    assert one == two and len(one) >= 3
    for path in one:
        assert (tmp_path / "two" / path).read_bytes() == (tmp_path / "one" / path).read_bytes()


def test_two_process_dpo_stops_together_on_the_stop_file_and_resumes(tiny_sft, tiny_pairs, tmp_path):
    import json
    import time

    stop_file = tmp_path / "stop"
    argv = dpo_argv(tiny_sft, tiny_pairs, tmp_path / "out", "--betas", "0.1", "--max_steps", "40", "--save_steps", "1000",
                    "--logging_steps", "1", "--per_device_train_batch_size", "8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMDB_DPO_STOP_FILE": str(stop_file)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(port), "dpo.py", *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "out" / "sigmoid_beta0.1"
    wait_until(lambda: (run_dir / "manifest.json").exists(), proc, interval=0.1)
    time.sleep(4)  # into training
    stop_file.touch()
    proc.wait(timeout=300)
    assert proc.returncode != 0  # torchrun reports any non-zero worker exit as its own failure...
    assert (tmp_path / "stop.saved").exists()  # ...so the stage also leaves this for the job script
    checkpoints = [d.name for d in run_dir.iterdir() if d.name.startswith("checkpoint-")]
    assert len(checkpoints) == 1 and 0 < int(checkpoints[0].split("-")[1]) < 40  # both ranks stopped at one step

    stop_file.unlink()
    launch_two("dpo.py", argv)
    assert read_manifest(run_dir)["global_step"] == 40
    logged = [e["step"] for e in json.load(open(run_dir / "trainer_state.json"))["log_history"] if "loss" in e]
    assert logged == list(range(1, 41))


MAIN_FIRST = """
import os, sys, time
from imdb_dpo.lifecycle.distributed import main_process_first, process_state
log, fail = sys.argv[1], sys.argv[2] == "fail"
state = process_state(True)
try:
    with main_process_first():
        if state.is_main_process:
            time.sleep(1.5)  # a slow download: the other process must still wait for it
        with open(log, "a") as f:
            f.write(f"{state.process_index} ")
        if fail:
            raise ValueError("no such file")
except ValueError:
    pass
state.wait_for_everyone()
"""


def test_the_main_process_fills_the_datasets_cache_first_and_a_failure_there_hangs_no_one(tmp_path):
    """Every rank loads the reviews into one datasets cache: the main process first (load_reviews, DPO's pair file);
    where it raises, the others are released to meet the error themselves, not left at a barrier for NCCL's 30 min."""
    script = tmp_path / "main_first.py"
    script.write_text(f"import sys; sys.path.insert(0, {REPO!r})\n" + MAIN_FIRST)
    for fail in ("ok", "fail"):
        log = tmp_path / f"{fail}.log"
        launch_two(str(script), [str(log), fail])
        assert log.read_text().split() == ["0", "1"], fail


def test_two_processes_with_one_batch_agree_that_a_damaged_checkpoint_is_not_evaluated(tiny_base, tiny_sft,
                                                                                       dpo_with_checkpoints, tmp_path):
    """One batch for two processes: the second samples nothing and loads nothing, yet it must skip the checkpoint the
    first could not load, or their collectives go out of step (a hang, or a crash) instead of "Not evaluated"."""
    from test_eval import eval_argv

    run = tmp_path / "runs" / "dpo" / "sigmoid_beta0.1"
    shutil.copytree(dpo_with_checkpoints, run)
    steps = read_manifest(run)["checkpoints"]
    with open(run / f"checkpoint-{steps[0]}" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    out = tmp_path / "eval"
    launch_two("eval.py", eval_argv(tiny_base, tiny_sft, tmp_path / "runs" / "dpo", out, "--num_prompts", "8",
                                    "--batch_size", "8", "--best_of_n_samples", "4", "--max_new_tokens", "16"))
    report = (out / "report.md").read_text()
    assert f"`{run / f'checkpoint-{steps[0]}'}`: it does not load" in report
    rows = list(csv.DictReader(open(out / "summary.csv")))
    evaluated = {int(r["step"]) for r in rows if r["run"] == "sigmoid_beta0.1"}
    assert evaluated == set(steps[1:]) | {read_manifest(run)["global_step"]}
