"""Every preset's YAML parses and every accelerate config loads. The gpt2-large preset's stages run, with
GPT-2's tokenizer on real reviews, in tests/test_real_inputs.py."""

import glob
import os

import pytest

from conftest import CPU_FLAGS, REPO
from imdb_dpo.configuration.arguments import TinyBaseArguments, parse_config
from imdb_dpo.planning.plan import stages_of


def parsers(stage: str) -> tuple:
    return (TinyBaseArguments,) if stage == "base" else stages_of(stage)[0]


STAGE_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*", "*.yaml"))
                       if os.path.basename(os.path.dirname(p)) != "accelerate")  # those are read by accelerate


@pytest.mark.parametrize("path", STAGE_CONFIGS)
def test_every_preset_config_parses(path, monkeypatch):
    monkeypatch.setenv("OUTPUT_ROOT", "/somewhere")
    stage = os.path.splitext(os.path.basename(path))[0]
    parsed = parse_config(parsers(stage), ["--config", path, *(CPU_FLAGS if stage not in ("preference_pairs", "eval", "base") else [])])
    paths = [getattr(p, name) for p in parsed for name in ("output_dir", "model_name_or_path", "sft_model")
             if isinstance(getattr(p, name, None), str)]
    assert all("$" not in p for p in paths)
    assert any(p.startswith("/somewhere/") for p in paths)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "accelerate", "*.yaml"))))
def test_accelerate_configs_are_valid_launch_configs(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(path)
    # accelerate's "pass --num_processes": a fixed count crashes its extra ranks on a node with fewer GPUs.
    assert config.num_processes == -1
    # DeepSpeed's bf16 would save bf16 weights (refused by the stages: imdb_dpo/configuration/checks.check_saved_precision).
    assert config.mixed_precision == ("no" if config.distributed_type == "DEEPSPEED" else "bf16")
