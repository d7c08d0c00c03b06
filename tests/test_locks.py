"""One run per output folder: a second run fails at once naming the holder; a killed holder's lock is taken."""

import json
import os
import signal
import subprocess
import sys

import pytest

from imdb_dpo.methods import dpo
import eval as eval_stage
from conftest import REPO, dpo_argv
from helpers import wait_until
from imdb_dpo.configuration.arguments import parse_config
from imdb_dpo.lifecycle.locks import FolderInUse, folder_lock, lock_path
from test_eval import eval_argv

HOLD = "import sys, time; from imdb_dpo.lifecycle.locks import folder_lock\nwith folder_lock(sys.argv[1], 'test'):\n    time.sleep(600)"


def hold(directory) -> subprocess.Popen:
    """Another process holding `directory`'s lock, once its holder record is written."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO)
    wait_until(lambda: os.path.isfile(lock_path(directory)) and os.path.getsize(lock_path(directory)) > 0, proc, timeout=60)
    return proc


def test_a_held_folder_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken(tmp_path):
    folder = tmp_path / "run"
    proc = hold(folder)
    with pytest.raises(FolderInUse, match=rf"{folder} is in use by another dpo\.py run \(host .*, pid {proc.pid}, started "):
        with folder_lock(str(folder), "dpo.py"):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with folder_lock(str(folder), "dpo.py"):  # the kernel released the dead holder's lock
        assert json.load(open(lock_path(folder)))["pid"] == os.getpid()


def test_dpo_on_a_run_folder_in_use_fails_before_touching_it(tiny_sft, tiny_pairs, tmp_path):
    proc = hold(tmp_path / "dpo" / "sigmoid_beta0.1")
    try:
        with pytest.raises(FolderInUse, match=r"sigmoid_beta0\.1 is in use by another dpo\.py run"):
            dpo.main(*parse_config(dpo.STAGES, dpo_argv(tiny_sft, tiny_pairs, tmp_path / "dpo", "--betas", "0.1")))
        assert not (tmp_path / "dpo" / "sigmoid_beta0.1").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_second_evaluation_of_one_folder_is_refused_and_the_first_writes_each_record_once(tiny_base, tiny_sft,
                                                                                             tmp_path):
    out = tmp_path / "eval"
    argv = eval_argv(tiny_base, tiny_sft, "", out, "--num_prompts", "12")
    first = subprocess.Popen([sys.executable, "eval.py", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_until(lambda: os.path.isfile(lock_path(out)) and os.path.getsize(lock_path(out)) > 0, first)
    with pytest.raises(FolderInUse, match=rf"eval is in use by another eval\.py run \(host .*, pid {first.pid}"):
        eval_stage.main(*parse_config(eval_stage.STAGES, argv))
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    records_dir = next((out / "records").iterdir())
    sft = [json.loads(line) for line in open(records_dir / "sft" / "step-0" / "records.jsonl")]
    assert len(sft) == 12 * 16 and len({(r["prompt_id"], r["sample"]) for r in sft}) == len(sft)


def test_an_output_folder_that_is_a_file_is_named_and_left_alone(tmp_path):
    from imdb_dpo.configuration.arguments import ConfigError

    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    with pytest.raises(ConfigError, match="is a file, but reward_model.py writes a folder there"):
        with folder_lock(str(afile), "reward_model.py"):
            pass
    assert afile.read_text() == "mine\n" and not os.path.exists(lock_path(str(afile)))
