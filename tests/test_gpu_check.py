"""benchmarks/gpu_check.py, the one-command GPU check, as a CPU dry run at tiny shape: every stage of the gpt2-large
preset and every benchmark runs and lands in the table, nothing is written outside --work, and the weights are
gone when it ends. (On a GPU the same command runs the real shapes and the tests marked `gpu`.)"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.gpu_check import rate_of
from conftest import REPO
from imdb_dpo.methods import registry

# The CPU dry run's methods are those the registry marks on_cpu; on a GPU the check runs every method with a check.
DRY_RUN_METHODS = [m.key for m in registry().values() if m.gpu_check and m.gpu_check.on_cpu]
STAGES = ["sft", "preference_pairs", *DRY_RUN_METHODS, "eval"]
BENCHMARKS = ["bench_eval_precision", "bench_sampling", "bench_dpo", "bench_eval", "bench_decode_ops",
              "bench_reward_precision"]


def repository_outputs() -> dict:
    found = {}
    for top in ("outputs", "generations"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                path = os.path.join(root, name)
                found[path] = os.stat(path).st_mtime_ns
    return found


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, gpt2_tokenizer_dir, imdb_sample):
    work = tmp_path_factory.mktemp("gpu_check") / "work"
    before = repository_outputs()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--work", str(work), "--size", "tiny",
                           "--tokenizer", gpt2_tokenizer_dir, "--reviews", os.path.dirname(imdb_sample["train"])],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert repository_outputs() == before  # the user's outputs are never touched
    with open(work / "results" / "gpu_check.json") as f:
        return {"work": work, "stdout": proc.stdout, "result": json.load(f)}


def test_every_stage_runs_and_reports_time_memory_and_throughput(dry_run):
    rows = {r["name"]: r for r in dry_run["result"]["rows"]}
    assert [r["name"] for r in dry_run["result"]["rows"] if r["kind"] == "stage"] == STAGES
    for name in STAGES:
        assert rows[name]["exit"] == 0 and rows[name]["wall_s"] > 0 and rows[name]["peak_rss_gib"] > 0
    for name in ("sft", *DRY_RUN_METHODS):
        assert rows[name]["train_samples_per_s"] > 0 and rows[name]["steps"] >= 2, name
    table = dry_run["stdout"]
    for name in STAGES + BENCHMARKS:
        assert f"| {name} | 0 |" in table, name
    assert "dry run: not an estimate for a GPU" in table and "| total |" in table


def test_the_projection_covers_every_stage_of_the_preset_at_plan_scale(dry_run):
    """Every stage plan.py counts is projected; a stage the check ran (or one sharing its trainer) gets its time from
    the measured rate and plan.py's samples, the reward model (not run) none."""
    from imdb_dpo.planning import plan as planning

    projected = {name: (work, seconds) for name, work, seconds in dry_run["result"]["projection"]}
    preset = planning.build(os.path.join(REPO, "configs", "gpt2-large"))
    assert list(projected) == [row.stage for row in preset.rows]
    rows = {r["name"]: r for r in dry_run["result"]["rows"]}
    for row in preset.rows:
        if row.stage in ("preference_pairs", "eval"):
            continue
        measured = rows.get(rate_of(row.stage))
        if measured is None:  # the reward model; orpo, simpo and online DPO run on a GPU only
            assert projected[row.stage][1] is None, row.stage
            continue
        expected = row.runs * row.samples / measured["train_samples_per_s"]
        assert projected[row.stage][1] == pytest.approx(expected, rel=1e-9), row.stage
        assert f"{row.samples:,} samples" in projected[row.stage][0]
    assert projected["eval"][1] > 0 and projected["eval"][0].endswith("+ SFT and base x 500 prompts")
    assert "unlikelihood" not in dry_run["stdout"].split("| total |")[1].split("\n")[0]  # measured: in the total


def test_the_benchmarks_report_their_figures(dry_run):
    benchmarks = dry_run["result"]["benchmarks"]
    assert sorted(benchmarks) == sorted(BENCHMARKS)
    variants = {r["variant"]: r for r in benchmarks["bench_dpo"]["results"]}
    assert variants["trl_defaults"]["gradient_checkpointing"] and variants["trl_defaults"]["reference_in_step"]
    assert not variants["project"]["gradient_checkpointing"] and not variants["project"]["reference_in_step"]
    for r in variants.values():
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_gb"] > 0 and "mfu" in r
    assert benchmarks["bench_sampling"]["speedup"] > 0
    assert all(r["prompts_per_s"] > 0 and r["projected_25k_prompts_min"] > 0 for r in benchmarks["bench_sampling"]["results"])
    assert all(benchmarks["bench_eval"][k] > 0 for k in ("sampling_s", "reward_s", "kl_s", "projected_500_prompts_s"))
    decode = benchmarks["bench_decode_ops"]  # counted at GPT-2 Large's 36 layers whatever --size (the count is exact)
    assert decode["fp32: operators a token"] < decode["bf16 autocast: operators a token"]
    timed = [v for k, v in decode.items() if ": ms a token" in k]
    assert len(timed) == 4 and all(v > 0 for v in timed)  # fp32, autocast, the bf16 copy eager and compiled
    evaluation = benchmarks["bench_eval_precision"]  # on the CPU both passes are fp32: the same samples, no difference
    assert not evaluation["tf32_available"] and evaluation["same_tokens"] == evaluation["samples"] > 0
    assert evaluation["kl_abs_diff_max"] == evaluation["reward_abs_diff_max"] == 0 and evaluation["kl_mean_fp32"] > 0
    precision = benchmarks["bench_reward_precision"]
    assert precision["texts"] == 64 and 0 <= precision["mean_abs_diff"] <= precision["max_abs_diff"] < 1


def test_the_work_folder_keeps_results_not_weights(dry_run):
    work = dry_run["work"]
    left = [os.path.join(root, n) for root, _, files in os.walk(work) for n in files
            if n.endswith((".safetensors", ".bin", ".pt"))]
    assert left == []
    results = os.listdir(work / "results")
    assert {"gpu_check.md", "gpu_check.json", "eval_summary.csv", "eval_report.md"} <= set(results)
    assert dry_run["result"]["peak_disk_gb"] > 0


def test_a_folder_the_check_did_not_write_is_refused(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.tex").write_text("mine")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--work", str(tmp_path / "work"), "--size", "tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "holds files that no GPU check wrote" in proc.stderr
    assert (tmp_path / "work" / "thesis.tex").read_text() == "mine"


def test_a_killed_check_stops_its_stage_drops_the_weights_and_reruns(tmp_path, gpt2_tokenizer_dir, imdb_sample):
    """Run from another folder with relative paths; SIGTERM once SFT has finished (the pairs stage is running)."""
    import signal

    from helpers import wait_until

    tokenizer = os.path.relpath(gpt2_tokenizer_dir, tmp_path)
    reviews = os.path.relpath(os.path.dirname(imdb_sample["train"]), tmp_path)
    argv = [sys.executable, os.path.join(REPO, "benchmarks/gpu_check.py"), "--work", "work", "--size", "tiny",
            "--tokenizer", tokenizer, "--reviews", reviews]
    check = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The log is opened just before the stage starts: the kill may land while it starts (held off, then stopped).
    wait_until(lambda: (tmp_path / "work/results/preference_pairs.log").exists(), check, timeout=600)
    check.send_signal(signal.SIGTERM)
    assert check.wait(timeout=120) == 143 and "interrupted" in check.stderr.read()
    assert json.loads((tmp_path / "work/results/sft.resources.json").read_text())["exit_code"] == 0
    # What ended before the kill is in the table; the stage the kill stopped is not.
    assert "| sft | 0 |" in (tmp_path / "work/results/gpu_check.md").read_text()
    assert [r["name"] for r in json.loads((tmp_path / "work/results/gpu_check.json").read_text())["rows"]] == ["sft"]
    assert not [p for p in (tmp_path / "work").rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
    running = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True).stdout
    assert running == "", running  # no stage left behind
    # The same command again is accepted (the folder is the check's own); here it stops at a bad input, untouched.
    proc = subprocess.run(argv[:-1] + ["nowhere"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "holds no imdb_train.jsonl" in proc.stderr
    assert (tmp_path / "work/results/sft.log").exists()


def test_a_time_limit_runs_no_step_it_cannot_give_time_and_still_writes_the_table(tmp_path, gpt2_tokenizer_dir,
                                                                                   imdb_sample):
    argv = [sys.executable, "benchmarks/gpu_check.py", "--work", str(tmp_path / "work"), "--size", "tiny",
            "--tokenizer", gpt2_tokenizer_dir, "--reviews", os.path.dirname(imdb_sample["train"])]
    for bad in ("0", "inf"):
        refused = subprocess.run([*argv, "--time_limit", bad], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and f"--time_limit {bad}: give a number of seconds > 0" in refused.stderr
        assert not (tmp_path / "work").exists()
    proc = subprocess.run([*argv, "--time_limit", "20"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "work/results/gpu_check.json").read_text())
    # Under 30 s left for each: every stage and benchmark is in the table, none run.
    assert [r["name"] for r in result["rows"]] == [*STAGES, *BENCHMARKS]
    assert {r["exit"] for r in result["rows"]} == {"not run (time limit)"}
    table = (tmp_path / "work/results/gpu_check.md").read_text()
    assert "| eval | not run (time limit) | 0 |" in table and "--time_limit 20 s left no time for: sft, " in table
    assert "| total | | - |" in table  # nothing measured, nothing projected
    assert not [p for p in (tmp_path / "work").rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]


def test_missing_inputs_are_refused_before_anything_is_written(tmp_path, gpt2_tokenizer_dir, imdb_sample):
    work = tmp_path / "work"
    for argv, message in ((["--tokenizer", gpt2_tokenizer_dir, "--reviews", str(tmp_path / "nowhere")],
                           "holds no imdb_train.jsonl and imdb_test.jsonl"),
                          (["--reviews", str(tmp_path)], "which needs GPT-2's tokenizer: pass --tokenizer DIR"),
                          (["--reviews", os.path.dirname(imdb_sample["train"]), "--tokenizer", str(tmp_path)],
                           "has no vocab.json or merges.txt")):
        proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--work", str(work), "--size", "tiny", *argv],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not work.exists()


def test_a_kill_that_lands_while_a_stage_starts_is_held_off_until_the_stage_can_be_stopped():
    """SIGTERM inside Popen (after the fork, before Popen returns) would orphan the stage: the check's handler holds it
    off until the child is assigned, then ends the check, whose `run` stops that child."""
    from benchmarks.gpu_check import Kill, stop

    kill, child = Kill(), None
    with pytest.raises(SystemExit) as ended:
        with kill.held_off():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            kill()  # the signal, as if it arrived inside Popen
    assert ended.value.code == 143 and child is not None and child.poll() is None
    stop(child)
    assert child.returncode == -15
    with pytest.raises(SystemExit):  # outside a start, at once
        kill()
