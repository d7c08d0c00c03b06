"""Shared fixtures: the tiny base model and data are built once per session from the preset's own code."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_IMDB = os.environ.get("IMDB_SAMPLE_DIR", os.path.join(REPO, "..", "shared", "data", "imdb"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CPU_FLAGS = ["--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--gradient_checkpointing", "false"]


@pytest.fixture(scope="session")
def imdb_sample():
    """The real IMDb sample beside the project (never copied into it)."""
    train = os.path.join(SHARED_IMDB, "imdb_train.jsonl")
    test = os.path.join(SHARED_IMDB, "imdb_test.jsonl")
    if not (os.path.isfile(train) and os.path.isfile(test)):
        pytest.fail(f"IMDb sample not found in {SHARED_IMDB}: set IMDB_SAMPLE_DIR to the folder with imdb_train.jsonl")
    return {"train": train, "test": test}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny base model and data, built by the tiny preset's builder (smaller corpus than the preset's)."""
    from imdb_dpo.config import TinyBaseArguments, parse_config
    from imdb_dpo.tiny import build_tiny_base

    out = tmp_path_factory.mktemp("tiny_base")
    args = parse_config([TinyBaseArguments], ["--config", os.path.join(REPO, "configs/tiny/base.yaml"),
                                              "--output_dir", str(out), "--num_train_reviews", "1500",
                                              "--num_test_reviews", "200"])[0]
    build_tiny_base(args)
    return {"dir": str(out), "model": str(out / "model"), "train": str(out / "data/train.jsonl"),
            "test": str(out / "data/test.jsonl")}


def run_script(script: str, args: list[str], env: dict | None = None, timeout: int = 600, check: bool = True):
    """Run one of the project's top-level scripts as a user would, in a fresh Python process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc
