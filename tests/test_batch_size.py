"""A run's examples per optimizer step do not depend on how many processes train it (imdb_dpo/configuration/batch_size.py)."""

import glob
import os

import pytest
from transformers import TrainingArguments

from conftest import CPU_FLAGS, REPO
from imdb_dpo.configuration.batch_size import BatchArguments, per_process_batch
from imdb_dpo.configuration.arguments import ConfigError, parse_config
from imdb_dpo.methods import registry
from test_presets import parsers

TRAINING_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*", "*.yaml"))
                          if "accelerate" not in p and any(isinstance(c, type) and issubclass(c, BatchArguments)
                                 for c in parsers(os.path.splitext(os.path.basename(p))[0])))


def processes(monkeypatch, n: int) -> None:
    """A stand-in for a launch of n processes: TrainingArguments read the count from the distributed state."""
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: n))


def parse(path, *flags):
    stage = os.path.splitext(os.path.basename(path))[0]
    return parse_config(parsers(stage), ["--config", path, *CPU_FLAGS, *flags])


def step_of(parsed) -> tuple[int, int, int]:
    script = next(p for p in parsed if isinstance(p, BatchArguments))
    training = next(p for p in parsed if isinstance(p, TrainingArguments))
    per_step = training.world_size * training.per_device_train_batch_size * training.gradient_accumulation_steps
    return script.examples_per_step, per_step, training.per_device_train_batch_size


def test_every_training_stage_is_covered():
    stages = {os.path.splitext(os.path.basename(p))[0] for p in TRAINING_CONFIGS}
    assert {"sft", *registry()} <= stages


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "configs")))
@pytest.mark.parametrize("n", [2, 8])
def test_a_config_takes_the_same_examples_a_step_on_any_number_of_processes(path, n, monkeypatch):
    monkeypatch.setenv("OUTPUT_ROOT", "/somewhere")
    one, _, most_rows = step_of(parse(path))
    processes(monkeypatch, n)
    if one % n:
        with pytest.raises(ConfigError, match=f"does not divide among {n} process"):
            parse(path)
        return
    parsed = parse(path)
    examples, per_step, rows = step_of(parsed)
    assert examples == per_step == one
    assert rows <= most_rows  # never more rows a pass than the memory check counted
    training = next(p for p in parsed if isinstance(p, TrainingArguments))
    if hasattr(training, "generation_batch_size"):  # RLOO: one generation batch a step, as on one process
        assert training.generation_batch_size == one
        assert training.steps_per_generation == training.gradient_accumulation_steps


def test_sft_on_eight_gpus_keeps_its_steps_and_warm_up(monkeypatch):
    path = os.path.join(REPO, "configs", "gpt2-large", "sft.yaml")
    processes(monkeypatch, 8)
    (_, training, _) = parse(path, "--per_device_train_batch_size", "16")  # what the preset fits to an H100
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (8, 1)
    processes(monkeypatch, 2)
    (_, training, _) = parse(path, "--per_device_train_batch_size", "16")
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 2)


def test_a_smaller_pass_is_made_up_by_accumulation(monkeypatch):
    (script, training, _) = parse(os.path.join(REPO, "configs", "tiny", "dpo.yaml"))
    assert script.examples_per_step == training.per_device_train_batch_size == 32  # unset: the config's own batch
    path = os.path.join(REPO, "configs", "gpt2-large", "dpo.yaml")  # examples_per_step: 64
    (script, training, _) = parse(path, "--per_device_train_batch_size", "24")
    assert (script.examples_per_step, training.per_device_train_batch_size, training.gradient_accumulation_steps) == (
        64, 16, 4)
    processes(monkeypatch, 2)
    (script, training, _) = parse(path, "--per_device_train_batch_size", "24")
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 2)


def test_conflicting_or_indivisible_batches_are_refused(monkeypatch):
    path = os.path.join(REPO, "configs", "gpt2-large", "dpo.yaml")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=2 are both set"):
        parse(path, "--examples_per_step", "64", "--gradient_accumulation_steps", "2")
    processes(monkeypatch, 3)
    with pytest.raises(ConfigError, match="examples_per_step=64 does not divide among 3 process"):
        parse(path)


def test_a_process_share_is_split_into_the_fewest_passes_that_fit():
    for examples in range(1, 97):
        for n in (1, 2, 4, 8):
            if examples % n:
                continue
            for most in range(1, 70):
                rows, passes = per_process_batch(examples, n, most)
                assert rows <= most and rows * passes * n == examples
                assert all((examples // n) % p or (examples // n) // p > most for p in range(1, passes))


def test_kto_is_refused_a_split_of_one_row_a_pass_before_anything_loads():
    """KTO's KL term pairs each row with another of its pass: TRL refuses 1 row only once the models are loaded."""
    from imdb_dpo.methods.kto import check

    (_, training, _) = parse(os.path.join(REPO, "configs", "tiny", "kto.yaml"), "--examples_per_step", "5",
                             "--per_device_train_batch_size", "2")
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 5)
    with pytest.raises(ConfigError, match="KTO needs at least 2 rows a pass"):
        check(training)
    (_, training, _) = parse(os.path.join(REPO, "configs", "tiny", "kto.yaml"), "--examples_per_step", "4",
                             "--per_device_train_batch_size", "2")
    check(training)
