"""The frontier in the run's tracker: each point evaluated while training reaches wandb and tensorboard at its step,
equal to its records and once, also across a kill; eval.py logs its tables, plots and report to a wandb run.

Real trackers, offline: wandb writes its offline run files and tensorboard its event files, and the tests read them
back with wandb's own record classes (tests/offline_wandb.py) and tensorboard's EventAccumulator."""

import base64
import csv
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import wandb
import yaml

from conftest import REPO, dpo_argv, refused_in_process, run_in_process
from helpers import wait_until
from imdb_dpo.lifecycle.checkpoints import checkpoint_steps, is_complete
from imdb_dpo.lifecycle.manifests import read_manifest
from offline_wandb import artifacts, history, offline_runs
from test_frontier_eval import eval_config, records
from test_tracking import no_credentials  # noqa: F401  a fixture: online, with no wandb key anywhere

# 96 pairs at 32 a step: 3 steps, points at 2 and 3 on the preset's lr-log schedule.
STEPS = [2, 3]
RUN = "sigmoid_beta0.1"
TRACKED = ("reward", "kl", "kl_logratio", "length", "win_rate_vs_sft")


@pytest.fixture(scope="module")
def tracked(tiny_base, tiny_sft, tiny_pairs, tmp_path_factory):
    """The tiny SFT model evaluated by eval.py, then a DPO run logging to wandb (offline) and tensorboard, killed
    after its checkpoint of step 2 and resumed, then eval.py gathering its points with report_to wandb."""
    tmp = tmp_path_factory.mktemp("tracker")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp), "WANDB_DATA_DIR": str(tmp / "wandb_data"),
           "WANDB_CACHE_DIR": str(tmp / "wandb_cache"), "WANDB_PROJECT": "tracker_test",
           "WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL": "0.05"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        wandb.teardown()  # wandb reads its environment once per process
        config = small_eval_config(tmp, tiny_base, tiny_sft)
        # The SFT model's records first, as README says: the points then have a win rate.
        run_in_process("eval.py", ["--config", config, "--runs_root", ""])
        dpo_config = tmp / "dpo.yaml"
        with open(os.path.join(REPO, "configs/tiny/dpo.yaml")) as f:
            dpo_config.write_text(yaml.safe_dump({**yaml.safe_load(f), "report_to": ["wandb", "tensorboard"]}))
        argv = dpo_argv(tiny_sft, tiny_pairs, tmp / "run/dpo", "--betas", "0.1", "--max_train_pairs", "96",
                        "--frontier_eval", config, "--resume_minutes", "0.00001")  # a checkpoint after every step
        argv[argv.index("--config") + 1] = str(dpo_config)
        del argv[argv.index("--report_to"):argv.index("--report_to") + 2]  # the config's two trackers
        run_dir = tmp / "run/dpo" / RUN
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "dpo.py"), *argv], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Killed once its checkpoint of step 2 is complete and wandb has written that step's point to its offline
        # file (which it does every WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL seconds, 15 by default: a kill loses
        # what it had not written yet).
        wait_until(lambda: is_complete(run_dir / "checkpoint-2") and 2 in logged_steps(tmp), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not read_manifest(run_dir).get("finished")
        killed_at = [s for s, p in checkpoint_steps(run_dir) if is_complete(p)]
        run_in_process("dpo.py", argv)
        run_in_process("eval.py", ["--config", config, "--report_to", "wandb"])
    wandb.teardown()
    return {"tmp": tmp, "config": config, "run_dir": run_dir, "killed_at": killed_at}


def small_eval_config(tmp, tiny_base, tiny_sft) -> str:
    """test_frontier_eval's evaluation config on 4 prompts of 16 tokens: a point costs a second."""
    config = eval_config(tmp, tiny_base, tiny_sft, "run")
    with open(config) as f:
        settings = yaml.safe_load(f)
    with open(config, "w") as f:
        yaml.safe_dump({**settings, "num_prompts": 4, "max_new_tokens": 16}, f)
    return config


def logged_steps(wandb_dir) -> list[int]:
    """The steps of the points in the offline wandb runs under `wandb_dir` so far, each start's in turn."""
    files = sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "*.wandb")))  # none before wandb starts
    return [row["train/global_step"] for file in files for row in history(os.path.dirname(file))
            if "train/frontier/reward" in row]


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def sft_records(tracked) -> dict:
    (path,) = glob.glob(str(tracked["tmp"] / "run/eval/records/*/sft/step-0/records.jsonl"))
    with open(path) as f:
        return {(r["prompt_id"], r["sample"]): r["reward"] for r in map(json.loads, f)}


def expected(step_records: list[dict], sft: dict) -> dict:
    """The point's numbers, computed here from its records: every prompt has the same number of samples, so the
    mean over prompts of per-prompt means is the plain mean."""
    wins = [1.0 if r["reward"] > sft[(r["prompt_id"], r["sample"])] else
            0.5 if r["reward"] == sft[(r["prompt_id"], r["sample"])] else 0.0 for r in step_records]
    return {"reward": np.mean([r["reward"] for r in step_records]),
            "kl": np.mean([r["kl_exact"] for r in step_records]),
            "kl_logratio": np.mean([r["kl_logratio"] for r in step_records]),
            "length": np.mean([len(r["completion_ids"]) for r in step_records]), "win_rate_vs_sft": np.mean(wins)}


def test_every_point_reaches_wandb_once_at_its_step_equal_to_its_records(tracked):
    folders = offline_runs(tracked["tmp"])[RUN]
    assert len(folders) == 2  # the killed start and the resumed one, one wandb run id
    assert tracked["killed_at"] and min(tracked["killed_at"]) >= 2
    rows = [row for folder in folders for row in history(folder) if "train/frontier/reward" in row]
    # Once each across both starts: the resumed run passed step 2 again (it resumed from a checkpoint at or after
    # it) and did not log it again.
    assert sorted(row["train/global_step"] for row in rows) == STEPS
    by_step, sft = records(tracked["config"]), sft_records(tracked)
    assert sorted(by_step) == STEPS
    for row in rows:
        step = row["train/global_step"]
        want = expected(by_step[step], sft)
        for name in TRACKED:
            assert row["train/frontier/" + name] == pytest.approx(want[name], rel=1e-12), (step, name)
        assert row["train/frontier/reward_lo"] < row["train/frontier/reward"] < row["train/frontier/reward_hi"]
        assert row["train/frontier/kl_lo"] < row["train/frontier/kl"] < row["train/frontier/kl_hi"]
    # The same numbers as eval.py's summary rows of those steps.
    summary = {int(r["step"]): r for r in read_csv(tracked["tmp"] / "run/eval/summary.csv") if r["run"] == RUN}
    for row in rows:
        line = summary[row["train/global_step"]]
        for name, column in (("reward", "reward_mean"), ("reward_lo", "reward_lo"), ("kl_hi", "kl_hi"),
                             ("win_rate_vs_sft", "win_rate_vs_sft"), ("distinct_2", "distinct_2")):
            assert row["train/frontier/" + name] == pytest.approx(float(line[column]), rel=1e-9), name


def test_a_table_of_samples_is_logged_beside_each_point(tracked):
    tables = {}
    for folder in offline_runs(tracked["tmp"])[RUN]:
        for row in history(folder):
            if "train/frontier/samples/path" in row:
                with open(os.path.join(folder, "files", row["train/frontier/samples/path"])) as f:
                    tables[row["train/global_step"]] = json.load(f)
    assert sorted(tables) == STEPS
    for step, table in tables.items():
        first = [r for r in records(tracked["config"])[step] if r["sample"] == 0][:8]
        assert table["columns"] == ["step", "prompt", "completion", "reward", "kl", "length"]
        assert table["data"] == [[step, r["prompt"], r["text"], r["reward"], r["kl_exact"], len(r["completion_ids"])]
                                 for r in first]


def test_every_point_reaches_tensorboard_once_at_its_step(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step, sft = records(tracked["config"]), sft_records(tracked)
    folders = sorted(glob.glob(str(tracked["run_dir"] / "runs" / "*")))
    assert len(folders) == 2  # an event file per start
    seen = {}
    for folder in folders:
        events = EventAccumulator(folder)
        events.Reload()
        for name in ("reward", "kl"):
            for scalar in events.Scalars("train/frontier/" + name) if "train/frontier/" + name in events.Tags()["scalars"] else []:
                assert (name, scalar.step) not in seen, (name, scalar.step)
                seen[(name, scalar.step)] = scalar.value
    assert sorted(seen) == [(name, step) for name in ("kl", "reward") for step in STEPS]
    for (name, step), value in seen.items():
        assert value == pytest.approx(expected(by_step[step], sft)[name], rel=1e-6)  # stored as float32


def test_eval_logs_its_tables_plots_and_report_to_a_wandb_run(tracked):
    out = tracked["tmp"] / "run/eval"
    (folder,) = offline_runs(tracked["tmp"])["tiny-eval"]
    assert read_manifest(out)["wandb_run"] == os.path.basename(folder).split("-")[-1]
    (row,) = history(folder)
    for name in ("summary", "comparisons", "frontier_budget"):
        with open(os.path.join(folder, "files", row[f"eval/{name}/path"])) as f:
            table = json.load(f)
        rows = read_csv(out / f"{name}.csv")
        assert table["columns"] == list(rows[0]) and len(table["data"]) == len(rows) > 0, name
        for logged, line in zip(table["data"], rows):
            assert [str(v) if v is not None else "" for v in logged] == [
                str(float(v)) if is_number(v) else v for v in line.values()], name
    for plot in ("reward_vs_kl", "reward_vs_kl_full", "overoptimisation"):
        with open(out / f"{plot}.png", "rb") as f:
            assert row[f"eval/{plot}/sha256"] == hashlib.sha256(f.read()).hexdigest(), plot
    (artifact,) = [a for a in artifacts(folder) if a.type == "evaluation"]
    assert artifact.name == "tiny-eval"
    digests = {entry.path: entry.digest for entry in artifact.manifest.contents}
    with open(out / "report.md", "rb") as f:
        assert digests["report.md"] == base64.b64encode(hashlib.md5(f.read()).digest()).decode()


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_a_finished_evaluation_is_logged_once(tracked, monkeypatch):
    """Run again, eval.py logs nothing new; an evaluation finished without a tracker is logged once, when asked."""
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tracked["tmp"])),
                        ("WANDB_DATA_DIR", str(tracked["tmp"] / "wandb_data"))):
        monkeypatch.setenv(name, value)
    wandb.teardown()
    out = tracked["tmp"] / "run/eval"
    run_in_process("eval.py", ["--config", tracked["config"], "--report_to", "wandb"])
    assert len(offline_runs(tracked["tmp"])["tiny-eval"]) == 1
    manifest = read_manifest(out)
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "wandb_run"}))
    before = offline_runs(tracked["tmp"])["tiny-eval"]
    for _ in range(2):
        run_in_process("eval.py", ["--config", tracked["config"], "--report_to", "wandb"])
    (new,) = set(offline_runs(tracked["tmp"])["tiny-eval"]) - set(before)
    assert read_manifest(out)["wandb_run"] == os.path.basename(new).split("-")[-1]
    (row,) = history(new)
    assert {"eval/summary/path", "eval/comparisons/path", "eval/reward_vs_kl/path"} <= set(row)
    wandb.teardown()


def test_eval_refuses_a_tracker_it_does_not_log_to_and_a_missing_wandb_key_before_any_work(
        tiny_base, tiny_sft, tmp_path, no_credentials, capsys):
    wandb.teardown()  # wandb reads its environment once per process: no_credentials's, from here
    config = eval_config(tmp_path, tiny_base, tiny_sft, "refused")
    err = refused_in_process("eval.py", ["--config", config, "--report_to", "tensorboard"], capsys)
    assert "report_to='tensorboard'" in err and "wandb" in err and "none" in err
    err = refused_in_process("eval.py", ["--config", config, "--report_to", "wandb"], capsys)
    assert "no wandb API key" in err and "WANDB_MODE=offline" in err and "--report_to none" in err
    assert not (tmp_path / "refused").exists()
    wandb.teardown()
