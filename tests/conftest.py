"""Shared fixtures: the tiny base model and data are built once per session from the preset's own code."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_IMDB = os.environ.get("IMDB_SAMPLE_DIR", os.path.join(REPO, "..", "shared", "data", "imdb"))
SHARED_GPT2_TOKENIZER = os.environ.get("GPT2_TOKENIZER_DIR", os.path.join(REPO, "..", "shared", "tokenizers", "gpt2"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite is CI's CPU suite wherever it runs: on a GPU node the GPUs are hidden from it (and from every stage it
# starts), so fp32 numbers compare exactly and one- and two-process runs use CPU processes. The tests marked `gpu`
# need the GPU: benchmarks/gpu_check.py runs them with IMDB_DPO_TEST_DEVICE=cuda python -m pytest -m gpu.
TEST_DEVICE = os.environ.get("IMDB_DPO_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_collection_modifyitems(config, items):
    import torch

    if TEST_DEVICE == "cuda" and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: IMDB_DPO_TEST_DEVICE=cuda python -m pytest -m gpu on a GPU node "
                                   "(benchmarks/gpu_check.py does this)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

# The tiny preset evaluates its runs while they train (frontier_eval) under its eval.yaml, whose folders are the
# preset's own: a test's runs elsewhere keep their checkpoints instead.
NO_FRONTIER_EVAL = ["--frontier_eval", ""]
CPU_FLAGS = ["--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--activation_checkpointing", "false"]


@pytest.fixture(scope="session")
def imdb_sample(tmp_path_factory):
    """Real IMDb reviews, never copied into the project: ../shared/data/imdb (or IMDB_SAMPLE_DIR) where it exists,
    else a balanced sample of the same size drawn from `stanfordnlp/imdb` in the Hugging Face cache (downloaded once
    where a network exists)."""
    train = os.path.join(SHARED_IMDB, "imdb_train.jsonl")
    test = os.path.join(SHARED_IMDB, "imdb_test.jsonl")
    if os.path.isfile(train) and os.path.isfile(test):
        return {"train": train, "test": test}
    from data_sources import hub_reviews

    return hub_reviews(tmp_path_factory.mktemp("imdb"), missing=SHARED_IMDB)


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory):
    """GPT-2's own tokenizer (the one gpt2-large uses): ../shared/tokenizers/gpt2 (or GPT2_TOKENIZER_DIR) where it
    exists, else `gpt2`'s from the Hugging Face cache (downloaded once where a network exists)."""
    if os.path.isfile(os.path.join(SHARED_GPT2_TOKENIZER, "vocab.json")):
        return SHARED_GPT2_TOKENIZER
    from data_sources import hub_tokenizer

    return hub_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"), missing=SHARED_GPT2_TOKENIZER)


@pytest.fixture(scope="session")
def gpt2_stand_in(gpt2_tokenizer_dir, tmp_path_factory):
    """Random weights at gpt2-large's vocabulary and context, with its tokenizer (no pad token: EOS pads)."""
    from helpers import build_gpt2_stand_in

    return build_gpt2_stand_in(tmp_path_factory.mktemp("gpt2_stand_in"), gpt2_tokenizer_dir)


@pytest.fixture(scope="session")
def gpt2_classifier(gpt2_tokenizer_dir, tmp_path_factory):
    """A stand-in for siebert/sentiment-roberta-large-english (labels NEGATIVE/POSITIVE) on GPT-2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    out = tmp_path_factory.mktemp("gpt2_classifier")
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token  # the pipeline pads batches; siebert's RoBERTa has a pad token of its own
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        pad_token_id=tokenizer.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny preset run end to end by `./run_pipeline.sh tiny`, as a user runs it (OUTPUT_ROOT in a temporary
    folder). The stage fixtures below are its folders: tests read them and never change them.

    IMDB_DPO_TINY_RUN=<OUTPUT_ROOT of a finished `./run_pipeline.sh tiny` by this checkout> uses that run in place
    instead, to iterate on one test in seconds; CI never sets it."""
    if os.environ.get("IMDB_DPO_TINY_RUN"):
        import pathlib

        return {"root": pathlib.Path(os.environ["IMDB_DPO_TINY_RUN"]).resolve(), "stdout": ""}
    root = tmp_path_factory.mktemp("tiny_run")
    env = {**os.environ, "OUTPUT_ROOT": str(root), "PYTHON": sys.executable}
    proc = subprocess.run(["./run_pipeline.sh", "tiny"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"root": root, "stdout": proc.stdout}


@pytest.fixture(scope="session")
def tiny_base(tiny_run):
    """The tiny preset's base model and data, built by its own builder."""
    base = tiny_run["root"] / "outputs/tiny/base"
    return {"dir": str(base), "model": str(base / "model"), "train": str(base / "data/train.jsonl"),
            "test": str(base / "data/test.jsonl")}


def run_script(script: str, args: list[str], env: dict | None = None, timeout: int = 600, check: bool = True):
    """Run one of the project's top-level scripts as a user would, in a fresh Python process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def _stage_in_process(script: str, args: list[str]) -> int:
    """A top-level script's stage run in this process as its `__main__` runs it (imdb_dpo.launch.cli.run_stage), without a
    fresh process's ten-odd seconds of imports; its exit status."""
    import importlib

    from imdb_dpo.launch.cli import run_stage

    module = importlib.import_module(script.removesuffix(".py"))
    if not hasattr(module, "STAGES"):  # train.py: its first argument names the method
        return module.main(args)
    return run_stage(module.main, module.STAGES, args)


def run_in_process(script: str, args: list[str]) -> None:
    """Run a stage to the end in this process: for the uninterrupted runs that kill-and-resume tests compare with."""
    assert _stage_in_process(script, args) == 0, script


def refused_in_process(script: str, args: list[str], capsys) -> str:
    """Run a stage in this process that must stop at a user error: asserts exit status 2 with one message and no
    traceback, and returns stderr."""
    capsys.readouterr()
    code = _stage_in_process(script, args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (code, err[-3000:])
    return err


def kill_once_saved(script: str, args: list[str], checkpoint, settle: float = 0.0) -> None:
    """Start one of the top-level scripts and SIGKILL it `settle` seconds after `checkpoint` is complete (the
    Trainer writes its trainer_state.json last)."""
    import signal
    import time

    from helpers import wait_until

    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: os.path.isfile(os.path.join(checkpoint, "trainer_state.json")), proc)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def tiny_sft(tiny_run):
    """The tiny preset's SFT run, as configured, on the tiny base."""
    return str(tiny_run["root"] / "outputs/tiny/sft")


@pytest.fixture(scope="session")
def tiny_pairs(tiny_run):
    """The tiny preset's preference pairs, sampled from `tiny_sft`."""
    return str(tiny_run["root"] / "generations/tiny/pairs.jsonl")


def dpo_argv(tiny_sft, pairs_file, output_dir, *extra):
    return ["--config", os.path.join(REPO, "configs/tiny/dpo.yaml"), "--model_name_or_path", tiny_sft,
            "--pairs_file", pairs_file, "--output_dir", str(output_dir), *CPU_FLAGS, *NO_FRONTIER_EVAL, *extra]


@pytest.fixture(scope="session")
def dpo_with_checkpoints(tiny_sft, tiny_pairs, tmp_path_factory):
    """A short DPO run (beta 0.1, 192 pairs: 6 steps) that keeps its checkpoints 1, 2 and 4 for eval.py, as a run
    without frontier_eval does (step 6 is the run folder's final model). Tests copy it and never change it."""
    root = tmp_path_factory.mktemp("dpo_with_checkpoints") / "dpo"  # <runs_root>/dpo, as eval.py finds the runs
    run_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, root, "--betas", "0.1", "--max_train_pairs", "192"))
    return str(root / "sigmoid_beta0.1")


@pytest.fixture(scope="session")
def tiny_dpo(tiny_run):
    """The tiny preset's DPO run for beta 0.1, as configured."""
    return str(tiny_run["root"] / "outputs/tiny/dpo/sigmoid_beta0.1")
