"""Every preset's YAML parses, and every stage of the gpt2-large preset runs a step or two with the model,
data and reward model swapped for tiny local ones on the command line (as a user would override them)."""

import glob
import os

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

import dpo
import eval as eval_stage
import preference_pairs
import sft
from conftest import CPU_FLAGS, REPO
from imdb_dpo.config import TinyBaseArguments, parse_config
from imdb_dpo.manifests import read_manifest
from imdb_dpo.pairs import read_pairs

PARSERS = {"sft": sft.STAGES, "preference_pairs": preference_pairs.STAGES, "dpo": dpo.STAGES,
           "eval": eval_stage.STAGES, "base": (TinyBaseArguments,)}


STAGE_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*", "*.yaml"))
                       if os.path.basename(os.path.dirname(p)) != "accelerate")  # those are read by accelerate


@pytest.mark.parametrize("path", STAGE_CONFIGS)
def test_every_preset_config_parses(path, monkeypatch):
    monkeypatch.setenv("OUTPUT_ROOT", "/somewhere")
    stage = os.path.splitext(os.path.basename(path))[0]
    parsed = parse_config(PARSERS[stage], ["--config", path, *(CPU_FLAGS if stage in ("sft", "dpo") else [])])
    paths = [getattr(p, name) for p in parsed for name in ("output_dir", "model_name_or_path", "sft_model")
             if isinstance(getattr(p, name, None), str)]
    assert all("$" not in p for p in paths)
    assert any(p.startswith("/somewhere/") for p in paths)


@pytest.fixture(scope="module")
def tiny_classifier(tiny_base, tmp_path_factory):
    """A stand-in for siebert/sentiment-roberta-large-english: labels NEGATIVE/POSITIVE."""
    out = tmp_path_factory.mktemp("classifier")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base["model"])
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_gpt2_large_preset_runs_every_stage_on_tiny_stand_ins(tiny_base, tiny_classifier, tmp_path, monkeypatch):
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    data = ["--train_file", tiny_base["train"], "--test_file", tiny_base["test"]]
    config = os.path.join(REPO, "configs", "gpt2-large")

    argv = ["--config", f"{config}/sft.yaml", "--model_name_or_path", tiny_base["model"], *data, "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--max_eval_samples", "8",
            *CPU_FLAGS]
    assert sft.main(*parse_config(sft.STAGES, argv)) == 0
    sft_dir = tmp_path / "outputs/gpt2-large/sft"
    assert read_manifest(sft_dir)["finished"]

    argv = ["--config", f"{config}/preference_pairs.yaml", *data, "--num_prompts", "8", "--batch_size", "4",
            "--max_new_tokens", "8", "--reward_model", tiny_classifier, "--reward_batch_size", "8"]
    assert preference_pairs.main(*parse_config(preference_pairs.STAGES, argv)) == 0
    pairs = read_pairs(str(tmp_path / "generations/gpt2-large/pairs.jsonl"))
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)

    argv = ["--config", f"{config}/dpo.yaml", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--save_steps", "1", "--optim", "rmsprop", *CPU_FLAGS]
    assert dpo.main(*parse_config(dpo.STAGES, argv)) == 0
    runs = sorted(os.listdir(tmp_path / "outputs/gpt2-large/dpo"))
    assert [r for r in runs if not r.startswith(".")] == ["sigmoid_beta0.05", "sigmoid_beta0.1", "sigmoid_beta1"]

    argv = ["--config", f"{config}/eval.yaml", *data, "--base_model", tiny_base["model"], "--num_prompts", "4",
            "--batch_size", "4", "--max_new_tokens", "8", "--reward_model", tiny_classifier]
    assert eval_stage.main(*parse_config(eval_stage.STAGES, argv)) == 0
    assert os.path.isfile(tmp_path / "outputs/gpt2-large/eval/report.md")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "accelerate", "*.yaml"))))
def test_accelerate_configs_are_valid_launch_configs(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(path)
    assert config.num_processes >= 1 and config.mixed_precision == "bf16"
