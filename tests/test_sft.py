"""Stage 1: SFT learns, resumes exactly after a kill, reports bad input clearly, and saves a loadable model."""

import glob
import json
import os
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import sft
from conftest import CPU_FLAGS, REPO, kill_once_saved, run_in_process, run_script
from helpers import mean_token_nll, state_dicts_equal
from imdb_dpo.lifecycle.checkpoints import checkpoint_steps
from imdb_dpo.configuration.arguments import ConfigError, parse_config
from imdb_dpo.data.reviews import DataError, normalise_review
from imdb_dpo.lifecycle.manifests import read_manifest

TINY_SFT = os.path.join(REPO, "configs/tiny/sft.yaml")


def sft_argv(tiny_base, output_dir, *extra):
    return ["--config", TINY_SFT, "--model_name_or_path", tiny_base["model"], "--train_file", tiny_base["train"],
            "--test_file", tiny_base["test"], "--output_dir", str(output_dir), *CPU_FLAGS, *extra]


def held_out_texts(path, n=60):
    with open(path) as f:
        return [normalise_review(json.loads(line)["text"]) for line in f][:n]


def test_tiny_sft_lowers_held_out_loss_and_saves_a_loadable_model(tiny_base, tiny_sft):
    out = tiny_sft

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_base["model"])
    texts = held_out_texts(tiny_base["test"])
    before, after = mean_token_nll(base, tokenizer, texts), mean_token_nll(model, tokenizer, texts)
    assert after < before - 4.0, (before, after)  # from chance (~ln 900 = 6.8 nats) to a model of reviews
    manifest = read_manifest(out)
    assert manifest["finished"] and manifest["global_step"] > 0
    assert manifest["inputs"]["train"]["sha256"] and manifest["versions"]["trl"]

    # A finished run is skipped, not retrained.
    weights = os.path.join(out, "model.safetensors")
    mtime = os.path.getmtime(weights)
    assert sft.main(*parse_config(sft.STAGES, sft_argv(tiny_base, out))) == 0
    assert os.path.getmtime(weights) == mtime


def test_a_finished_run_keeps_no_checkpoint(tiny_base, tiny_sft, tmp_path):
    """Its checkpoints (weights and AdamW state) were for resuming only. A kill between finishing and deleting them
    leaves them, or a checkpoint half-deleted under its hidden name, to the next run, which deletes them and
    changes nothing else."""
    assert checkpoint_steps(tiny_sft) == [] and not glob.glob(os.path.join(tiny_sft, ".checkpoint-*"))
    assert read_manifest(tiny_sft)["global_step"] == 125  # it saved every 50 steps while it ran
    run = tmp_path / "sft"
    shutil.copytree(tiny_sft, run)
    shutil.copytree(run, run / "checkpoint-100", ignore=shutil.ignore_patterns("checkpoint-*"))
    (run / ".checkpoint-125.deleting").mkdir()
    (run / ".checkpoint-125.deleting" / "optimizer.pt").write_bytes(b"half deleted")
    mtime = os.path.getmtime(run / "model.safetensors")
    assert sft.main(*parse_config(sft.STAGES, sft_argv(tiny_base, run))) == 0
    assert sorted(os.listdir(run)) == sorted(os.listdir(tiny_sft))
    assert os.path.getmtime(run / "model.safetensors") == mtime


def test_sft_on_real_imdb_reviews_lowers_held_out_loss(tiny_base, imdb_sample, tmp_path):
    out = tmp_path / "sft_imdb"
    argv = sft_argv(tiny_base, out, "--max_steps", "40", "--max_train_samples", "1280", "--max_eval_samples", "50",
                    "--max_length", "128")
    argv[argv.index("--train_file") + 1] = imdb_sample["train"]
    argv[argv.index("--test_file") + 1] = imdb_sample["test"]
    assert sft.main(*parse_config(sft.STAGES, argv)) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = held_out_texts(imdb_sample["test"], n=40)
    assert all("<br" not in t for t in texts)
    before = mean_token_nll(AutoModelForCausalLM.from_pretrained(tiny_base["model"]), tokenizer, texts)
    after = mean_token_nll(AutoModelForCausalLM.from_pretrained(out), tokenizer, texts)
    assert after < before - 0.5, (before, after)


def test_killed_sft_resumes_to_the_same_weights_as_an_uninterrupted_run(tiny_base, tmp_path):
    steps = ["--max_steps", "40", "--save_steps", "10", "--save_total_limit", "5"]
    run_in_process("sft.py", sft_argv(tiny_base, tmp_path / "straight", *steps))

    killed = tmp_path / "killed"
    kill_once_saved("sft.py", sft_argv(tiny_base, killed, *steps), killed / "checkpoint-20")
    assert not read_manifest(killed)["finished"]

    resumed = run_script("sft.py", sft_argv(tiny_base, killed, *steps))
    assert "checkpoint" in resumed.stderr + resumed.stdout
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight")
    b = AutoModelForCausalLM.from_pretrained(killed)
    assert state_dicts_equal(a, b) == []
    assert read_manifest(killed)["global_step"] == 40 and checkpoint_steps(killed) == []


def test_lora_sft_saves_a_plain_causal_lm(tiny_base, tmp_path):
    out = tmp_path / "lora"
    argv = sft_argv(tiny_base, out, "--max_steps", "5", "--use_peft", "true", "--lora_target_modules", "c_attn",
                    "--lora_r", "4")
    assert sft.main(*parse_config(sft.STAGES, argv)) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in model.state_dict())
    assert state_dicts_equal(model, AutoModelForCausalLM.from_pretrained(tiny_base["model"]))  # it did train


def test_wandb_offline_writes_a_run_directory(tiny_base, tmp_path):
    argv = sft_argv(tiny_base, tmp_path / "wb", "--max_steps", "3", "--logging_steps", "1")
    argv[argv.index("--report_to") + 1] = "wandb"
    run_script("sft.py", argv, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "t"})
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1 and os.path.getsize(runs[0]) > 0


def test_unknown_config_key_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "sft.yaml"
    bad.write_text(open(TINY_SFT).read() + "learnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"sft\.yaml.*'learnig_rate'.*did you mean 'learning_rate'"):
        parse_config(sft.STAGES, ["--config", str(bad)])


def test_missing_data_file_is_named(tiny_base, tmp_path):
    argv = sft_argv(tiny_base, tmp_path / "x")
    argv[argv.index("--train_file") + 1] = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"train_file=.*nope\.jsonl.*file not found"):
        sft.main(*parse_config(sft.STAGES, argv))
    assert not (tmp_path / "x").exists()


def test_empty_data_file_is_named(tiny_base, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = sft_argv(tiny_base, tmp_path / "x")
    argv[argv.index("--test_file") + 1] = str(empty)
    with pytest.raises(DataError, match=r"test_file=.*empty\.jsonl.*empty"):
        sft.main(*parse_config(sft.STAGES, argv))


def test_data_without_the_text_column_is_named(tiny_base, tmp_path):
    other = tmp_path / "reviews.jsonl"
    other.write_text('{"review": "fine film", "label": 1}\n')
    argv = sft_argv(tiny_base, tmp_path / "x")
    argv[argv.index("--train_file") + 1] = str(other)
    with pytest.raises(DataError, match=r"no column 'text'.*\['review', 'label'\].*text_column"):
        sft.main(*parse_config(sft.STAGES, argv))


def test_html_breaks_are_normalised():
    assert normalise_review("Great.<br /><br />Really<BR>good<br/>") == "Great.\n\nReally\ngood"
