"""What a rerun does to an output folder: a failed start never blocks the corrected one, unfinished work is never
mixed with other settings, --overwrite replaces a finished folder only once the new work has finished, and an
evaluation reports what it could not evaluate instead of failing."""

import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from imdb_dpo.methods import dpo
import eval as eval_stage
import preference_pairs
from conftest import REPO, dpo_argv
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.lifecycle.preemption import EXIT_RESUMABLE, STOP_FILE_VARIABLE
from test_eval import eval_argv
from test_user_errors import digest, pairs_argv, refused

SMALL = ["--num_prompts", "32", "--batch_size", "16"]


def test_a_failed_first_start_does_not_block_the_corrected_one(tiny_base, tiny_sft, gpt2_classifier, tmp_path):
    broken = tmp_path / "classifier"
    shutil.copytree(gpt2_classifier, broken)
    (broken / "model.safetensors").write_bytes(b"cut short by a full disk")
    out = tmp_path / "pairs"
    with pytest.raises(Exception):  # a damaged classifier is found only when it loads, after the shard started
        run_stage(preference_pairs.main, preference_pairs.STAGES,
                  pairs_argv(tiny_base, tiny_sft, out, *SMALL, "--reward_model", str(broken)))
    assert read_manifest(out / "shards" / "0-of-1")["finished"] is False
    assert run_stage(preference_pairs.main, preference_pairs.STAGES, pairs_argv(tiny_base, tiny_sft, out, *SMALL)) == 0
    assert read_manifest(out)["num_prompts"] == 32


def test_unfinished_work_is_not_mixed_with_other_settings(capsys, tiny_base, tiny_sft, tmp_path, monkeypatch):
    out, shard = tmp_path / "pairs", tmp_path / "pairs" / "shards" / "0-of-1"
    stop_file = tmp_path / "stop"
    stop_file.write_text("")
    monkeypatch.setenv(STOP_FILE_VARIABLE, str(stop_file))
    assert run_stage(preference_pairs.main, preference_pairs.STAGES, pairs_argv(tiny_base, tiny_sft, out, *SMALL)) \
        == EXIT_RESUMABLE
    monkeypatch.delenv(STOP_FILE_VARIABLE)
    half_done = digest(shard)
    refused(capsys, preference_pairs, pairs_argv(tiny_base, tiny_sft, out, *SMALL, "--temperature", "0.7"),
            f"{shard} holds an unfinished pair shard started with other settings",
            "config.generation.temperature: 1.0 before, 0.7 now", "resuming would mix the two", "--overwrite true")
    assert digest(shard) == half_done
    assert run_stage(preference_pairs.main, preference_pairs.STAGES,
                     pairs_argv(tiny_base, tiny_sft, out, *SMALL, "--temperature", "0.7", "--overwrite", "true")) == 0
    assert read_manifest(out)["config"]["generation"]["temperature"] == 0.7


def test_overwrite_replaces_a_finished_folder_only_once_the_new_one_has_finished(tiny_base, tiny_sft, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "pairs"
    assert run_stage(preference_pairs.main, preference_pairs.STAGES, pairs_argv(tiny_base, tiny_sft, out, *SMALL)) == 0
    first, first_id = digest(out), read_manifest(out)["run_id"]
    stop_file = tmp_path / "stop"
    stop_file.write_text("")
    monkeypatch.setenv(STOP_FILE_VARIABLE, str(stop_file))
    redo = pairs_argv(tiny_base, tiny_sft, out, *SMALL, "--temperature", "0.7", "--overwrite", "true")
    assert run_stage(preference_pairs.main, preference_pairs.STAGES, redo) == EXIT_RESUMABLE
    assert digest(out) == first and (tmp_path / ".pairs.new").is_dir()  # stopped: the finished folder is untouched
    monkeypatch.delenv(STOP_FILE_VARIABLE)
    assert run_stage(preference_pairs.main, preference_pairs.STAGES, redo) == 0  # resumes the replacement
    manifest = read_manifest(out)
    assert manifest["finished"] and manifest["run_id"] != first_id
    assert manifest["config"]["generation"]["temperature"] == 0.7
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("stop")) == [".pairs.lock", "pairs"]


def test_dpo_overwrite_keeps_the_finished_run_until_the_new_one_has_finished(tiny_sft, tiny_pairs, tmp_path,
                                                                            monkeypatch):
    out = tmp_path / "dpo"
    argv = dpo_argv(tiny_sft, tiny_pairs, out, "--betas", "0.1", "--max_train_pairs", "64", "--save_steps", "1")
    assert run_stage(dpo.main, dpo.STAGES, argv) == 0
    run_dir = out / "sigmoid_beta0.1"
    before, first_id = digest(run_dir), read_manifest(run_dir)["run_id"]
    redo = [*argv, "--learning_rate", "1e-4", "--overwrite", "true"]
    stop_file = tmp_path / "stop"
    stop_file.write_text("")
    monkeypatch.setenv(STOP_FILE_VARIABLE, str(stop_file))
    assert run_stage(dpo.main, dpo.STAGES, redo) == EXIT_RESUMABLE  # stopped after step 1 of the replacement
    assert digest(run_dir) == before
    assert (out / ".sigmoid_beta0.1.new" / "checkpoint-1").is_dir()
    monkeypatch.delenv(STOP_FILE_VARIABLE)
    assert run_stage(dpo.main, dpo.STAGES, redo) == 0  # a requeued job resumes the replacement, then swaps it in
    manifest = read_manifest(run_dir)
    assert manifest["run_id"] != first_id and manifest["config"]["training"]["learning_rate"] == 1e-4
    assert manifest["checkpoints"] == [2] and not (out / ".sigmoid_beta0.1.new").exists()


def test_eval_reports_unfinished_runs_and_unloadable_checkpoints_and_goes_on(tiny_base, tiny_sft, dpo_with_checkpoints,
                                                                             tmp_path):
    runs = tmp_path / "dpo"
    good, unfinished = runs / "sigmoid_beta0.1", runs / "sigmoid_beta0.5"
    shutil.copytree(dpo_with_checkpoints, good)
    shutil.copytree(dpo_with_checkpoints, unfinished)
    manifest = read_manifest(unfinished)
    manifest["finished"] = False
    (unfinished / "manifest.json").write_text(json.dumps(manifest))
    steps = read_manifest(good)["checkpoints"]
    os.remove(good / f"checkpoint-{steps[0]}" / "model.safetensors")
    with open(good / f"checkpoint-{steps[1]}" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    out = tmp_path / "eval"
    argv = eval_argv(tiny_base, tiny_sft, runs, out, "--num_prompts", "8", "--batch_size", "8",
                     "--best_of_n_samples", "4", "--max_new_tokens", "16")
    assert run_stage(eval_stage.main, eval_stage.STAGES, argv) == 0
    summary = (out / "summary.csv").read_text()
    assert "sigmoid_beta0.5" not in summary
    evaluated = {int(row["step"]) for row in csv.DictReader(io.StringIO(summary)) if row["run"] == "sigmoid_beta0.1"}
    assert evaluated == set(steps[2:]) | {read_manifest(good)["global_step"]}
    report = (out / "report.md").read_text()
    assert "## Not evaluated" in report
    assert f"`{unfinished}`: the DPO run is unfinished" in report
    assert f"`{good / f'checkpoint-{steps[0]}'}`: the directory has no weights" in report
    assert f"`{good / f'checkpoint-{steps[1]}'}`: it does not load" in report


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_a_message_naming_the_file_and_the_rerun_resumes(tiny_base, tiny_sft, tmp_path):
    """The file-size limit stands in for a full disk: the write fails the same way, with no path in the error."""
    reviews = tmp_path / "reviews.jsonl"
    with open(tiny_base["train"]) as source:
        reviews.write_text("".join(next(source) for _ in range(200)))
    out = tmp_path / "pairs"
    argv = [sys.executable, "preference_pairs.py", *pairs_argv(tiny_base, tiny_sft, out, "--num_prompts", "32",
                                                               "--batch_size", "32", "--train_file", str(reviews))]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache")}
    subprocess.run([sys.executable, "-c", "import sys; from imdb_dpo.data.reviews import load_reviews; "
                    "from imdb_dpo.configuration.arguments import PairsArguments as A; load_reviews(A(train_file=sys.argv[1]), 'train')",
                    str(reviews)], cwd=REPO, env=env, check=True)  # caches the data set before the limit
    full = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=_limit_file_size(30_000))
    shard_log = out / "shards" / "0-of-1" / "completions.jsonl"
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"error: File too large while writing {shard_log}" in full.stderr and "Traceback" not in full.stderr
    assert "run the same command again" in full.stderr
    assert subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True).returncode == 0
    assert read_manifest(out)["num_prompts"] == 32


def test_a_checkpoint_cut_short_by_a_kill_or_a_full_disk_is_passed_over_on_resume(tiny_sft, tiny_pairs, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "dpo"
    argv = dpo_argv(tiny_sft, tiny_pairs, out, "--betas", "0.1", "--max_train_pairs", "96", "--save_steps", "1")
    stop_file = tmp_path / "stop"
    stop_file.write_text("")
    monkeypatch.setenv(STOP_FILE_VARIABLE, str(stop_file))
    assert run_stage(dpo.main, dpo.STAGES, argv) == EXIT_RESUMABLE
    monkeypatch.delenv(STOP_FILE_VARIABLE)
    run_dir = out / "sigmoid_beta0.1"
    torn = run_dir / "checkpoint-2"  # what a save cut short leaves: the config, no weights, no trainer state
    torn.mkdir()
    shutil.copy(run_dir / "checkpoint-1" / "config.json", torn)
    assert run_stage(dpo.main, dpo.STAGES, argv) == 0
    manifest = read_manifest(run_dir)
    assert manifest["global_step"] == 3 and manifest["checkpoints"] == [2, 3]  # lr-log: no step 1 (warm-up)
    assert (torn / "trainer_state.json").is_file() and (torn / "model.safetensors").is_file()


def test_eval_rerun_changes_nothing_and_other_settings_need_overwrite(capsys, tiny_base, tiny_sft, tmp_path):
    out = tmp_path / "eval"
    argv = eval_argv(tiny_base, tiny_sft, "", out, "--num_prompts", "8", "--batch_size", "8",
                     "--best_of_n_samples", "4", "--max_new_tokens", "16")
    assert run_stage(eval_stage.main, eval_stage.STAGES, argv) == 0
    finished = digest(out)
    assert run_stage(eval_stage.main, eval_stage.STAGES, argv) == 0
    assert "finished with these settings and models; skipping" in capsys.readouterr().out
    assert digest(out) == finished  # report.md too, with its date
    refused(capsys, eval_stage, [*argv, "--seed", "1"], "holds a finished evaluation made with other settings",
            "seed: 0 before, 1 now", "--overwrite true")
    assert digest(out) == finished
    assert run_stage(eval_stage.main, eval_stage.STAGES, [*argv, "--seed", "1", "--overwrite", "true"]) == 0
    assert len(os.listdir(out / "records")) == 2  # the first evaluation's records are kept
    # --overwrite true with the same settings does not exit 0 having done nothing: it writes the outputs again.
    (out / "summary.csv").write_text("damaged\n")
    capsys.readouterr()
    assert run_stage(eval_stage.main, eval_stage.STAGES, [*argv, "--seed", "1", "--overwrite", "true"]) == 0
    assert "summary, plots and report are written again" in capsys.readouterr().out
    assert (out / "summary.csv").read_text().startswith("method,run,")


def test_a_runs_root_given_on_the_command_line_must_exist(tiny_base, tiny_sft, dpo_with_checkpoints, tmp_path,
                                                          capsys):
    """A misspelt --runs_root would evaluate no method and exit 0; a config's may be absent (nothing was run)."""
    runs = tmp_path / "runs" / "dpo"
    shutil.copytree(dpo_with_checkpoints, runs / "sigmoid_beta0.1")
    out = tmp_path / "eval"
    argv = eval_argv(tiny_base, tiny_sft, tmp_path / "runz" / "dpo", out, "--num_prompts", "8", "--batch_size", "8")
    assert run_stage(eval_stage.main, eval_stage.STAGES, argv) == 2
    err = capsys.readouterr().err
    assert f"--runs_root {tmp_path / 'runz'}: no such folder" in err
    assert "Traceback" not in err and not out.exists()


def test_a_moved_output_root_keeps_its_records_those_evaluated_while_training_included(tiny_run, tmp_path):
    """The tiny run copied to another OUTPUT_ROOT: its data files (by content), reference (by run id) and runs are the
    same, so eval.py finds every record, the in-memory points whose checkpoints were deleted too, and samples
    nothing (a key that named the files by path lost 75 points here)."""
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run["root"], moved)
    proc = subprocess.run([sys.executable, "eval.py", "--config", "configs/tiny/eval.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OUTPUT_ROOT": str(moved)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not evaluated" not in proc.stdout
    records = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("records.jsonl"))  # noqa: E731
    assert records(moved / "outputs/tiny/eval/records") == records(tiny_run["root"] / "outputs/tiny/eval/records")
    before = list(csv.DictReader(open(tiny_run["root"] / "outputs/tiny/eval/summary.csv")))
    after = list(csv.DictReader(open(moved / "outputs/tiny/eval/summary.csv")))
    assert [(r["run"], r["step"], r["reward_mean"], r["kl_mean"]) for r in after] == [
        (r["run"], r["step"], r["reward_mean"], r["kl_mean"]) for r in before]
