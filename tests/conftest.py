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
    """The tiny preset's base model and data, built by its own builder."""
    from imdb_dpo.config import TinyBaseArguments, parse_config
    from imdb_dpo.tiny import build_tiny_base

    out = tmp_path_factory.mktemp("tiny_base")
    args = parse_config([TinyBaseArguments], ["--config", os.path.join(REPO, "configs/tiny/base.yaml"),
                                              "--output_dir", str(out)])[0]
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


@pytest.fixture(scope="session")
def tiny_sft(tiny_base, tmp_path_factory):
    """The tiny preset's SFT run, as configured, on the tiny base."""
    import sft
    from imdb_dpo.config import parse_config

    out = tmp_path_factory.mktemp("tiny_sft")
    argv = ["--config", os.path.join(REPO, "configs/tiny/sft.yaml"), "--model_name_or_path", tiny_base["model"],
            "--train_file", tiny_base["train"], "--test_file", tiny_base["test"], "--output_dir", str(out), *CPU_FLAGS]
    assert sft.main(*parse_config(sft.STAGES, argv)) == 0
    return str(out)


@pytest.fixture(scope="session")
def tiny_pairs(tiny_base, tiny_sft, tmp_path_factory):
    """The tiny preset's preference pairs, sampled from `tiny_sft`."""
    import preference_pairs
    from imdb_dpo.config import parse_config

    out = tmp_path_factory.mktemp("tiny_pairs")
    argv = ["--config", os.path.join(REPO, "configs/tiny/preference_pairs.yaml"), "--model_name_or_path", tiny_sft,
            "--train_file", tiny_base["train"], "--test_file", tiny_base["test"], "--output_dir", str(out)]
    assert preference_pairs.main(*parse_config(preference_pairs.STAGES, argv)) == 0
    return str(out / "pairs.jsonl")


def dpo_argv(tiny_sft, pairs_file, output_dir, *extra):
    return ["--config", os.path.join(REPO, "configs/tiny/dpo.yaml"), "--model_name_or_path", tiny_sft,
            "--pairs_file", pairs_file, "--output_dir", str(output_dir), *CPU_FLAGS, *extra]


@pytest.fixture(scope="session")
def tiny_dpo(tiny_sft, tiny_pairs, tmp_path_factory):
    """The tiny preset's DPO run for beta 0.1, as configured."""
    import dpo
    from imdb_dpo.config import parse_config

    out = tmp_path_factory.mktemp("tiny_dpo")
    assert dpo.main(*parse_config(dpo.STAGES, dpo_argv(tiny_sft, tiny_pairs, out, "--betas", "0.1"))) == 0
    return str(out / "sigmoid_beta0.1")
