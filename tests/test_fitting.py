"""`auto` pass sizes fitted to the card (imdb_dpo/planning/fitting.py): the largest that fit, the same results at any
size, and the plan of each card."""

import functools
import json
import os
import re

import pytest

from conftest import CPU_FLAGS, REPO, refused_in_process, run_in_process
from imdb_dpo.configuration.arguments import ConfigError, EvalArguments, PairsArguments, parse_config
from imdb_dpo.methods import dpo, registry
from imdb_dpo.planning import cards, costs, fitting
from imdb_dpo.planning.plan import build

GiB = 2**30
MEMORY = fitting.MEMORY_VARIABLE


def gpt2_large(stage: str, *flags: str):
    parsers = registry()[stage].stages if stage in registry() else (EvalArguments,)
    cpu = ["--use_cpu", "true"] if stage in registry() else []
    return parse_config(parsers, ["--config", os.path.join(REPO, "configs/gpt2-large", f"{stage}.yaml"), *cpu, *flags])


def test_auto_is_read_from_the_config_and_the_command_line_and_a_number_wins():
    _, training, _ = gpt2_large("dpo")
    assert training.auto_sizes == ("activation_checkpointing", "per_device_train_batch_size",
                                   "precompute_ref_batch_size")
    # On a CPU the fallback is the field's default, split to keep examples_per_step; checkpointing off.
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (8, 8)
    assert training.activation_checkpointing is False and training.gradient_checkpointing is False
    _, training, _ = gpt2_large("dpo", "--per_device_train_batch_size", "16", "--activation_checkpointing=true")
    assert training.auto_sizes == ("precompute_ref_batch_size",)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 4)
    assert training.activation_checkpointing is True
    (evaluation,) = parse_config((EvalArguments,), ["--config", os.path.join(REPO, "configs/tiny/eval.yaml"),
                                                    "--kl_batch_size", "auto"])
    assert evaluation.auto_sizes == ("kl_batch_size",) and evaluation.kl_batch_size == 32


def test_auto_is_a_pass_size_only_and_other_settings_keep_their_own_parsers():
    with pytest.raises(ConfigError, match="learning_rate.*'auto'"):  # a float: its parser names it
        gpt2_large("dpo", "--learning_rate", "auto")
    with pytest.raises(ConfigError, match="examples_per_step.*'auto'"):  # what a run is: never fitted
        gpt2_large("dpo", "--examples_per_step", "auto")
    _, _, model = gpt2_large("dpo", "--dtype", "auto")  # TRL's own auto, untouched
    assert model.dtype == "auto"


def test_auto_rows_need_examples_per_step_and_kto_keeps_its_pass_size(tiny_sft, tiny_pairs, tmp_path, capsys):
    config = os.path.join(REPO, "configs/tiny/dpo.yaml")
    with pytest.raises(ConfigError, match="per_device_train_batch_size: auto needs examples_per_step"):
        parse_config(dpo.STAGES, ["--config", config, *CPU_FLAGS, "--per_device_train_batch_size", "auto"])
    # KTO's KL term is taken over each pass's rows: its pass size is a setting of its results, never fitted.
    err = refused_in_process("train.py", ["kto", "--config", os.path.join(REPO, "configs/tiny/kto.yaml"), *CPU_FLAGS,
                                          "--model_name_or_path", tiny_sft, "--per_device_train_batch_size", "auto",
                                          "--examples_per_step", "32", "--output_dir", str(tmp_path / "kto")], capsys)
    assert "decides its results and is not fitted to the card" in err
    assert not (tmp_path / "kto").exists()


def dpo_step(training, rows: int) -> float:
    """A DPO step's estimate at `rows` pairs a pass, recomputed from the memory model's parts."""
    shape = costs.model_shape("gpt2-large")
    return costs.dpo_memory(_with_rows(training, rows), shape, 72).memory.total


def _with_rows(training, rows):
    import copy

    copied = copy.copy(training)
    fitting.set_rows(copied, rows)
    return copied


@pytest.mark.parametrize("free_gib", [23.5, 39.5, 79.1])
def test_the_fit_takes_the_largest_pass_that_fits_and_keeps_the_step(free_gib):
    _, training, _ = gpt2_large("dpo", "--frontier_eval", "")
    shape = costs.model_shape("gpt2-large")
    peak, chosen = fitting.fit(lambda: costs.dpo_memory(training, shape, 72), int(free_gib * GiB), "a card",
                               {"training": training}, costs.ALLOCATOR_MARGIN)
    rows = training.per_device_train_batch_size
    assert rows * training.gradient_accumulation_steps == 64  # examples_per_step stays
    assert chosen.fits and peak.memory.total * 1.1 <= free_gib * GiB
    # The next pass size up (64 divides into passes of 1, 2, 4, ..., 64) would not have fitted.
    if rows < 64:
        assert dpo_step(training, 2 * rows) * 1.1 > free_gib * GiB
    assert training.activation_checkpointing is False  # a pass of at least one pair fits without recomputing


def test_checkpointing_turns_on_only_where_one_row_does_not_fit_without_it():
    _, training, _ = gpt2_large("dpo", "--frontier_eval", "")
    shape = costs.model_shape("gpt2-large")

    def at(rows: int, checkpointing: bool) -> int:  # the estimate at these sizes, made independently of the fit
        import copy

        args = copy.copy(training)
        fitting.set_rows(args, rows)
        args.activation_checkpointing = args.gradient_checkpointing = checkpointing
        return costs.dpo_memory(args, shape, 72).memory.total * (1 + costs.ALLOCATOR_MARGIN)

    one_pair = at(1, False)
    assert at(1, True) < one_pair
    for budget, on in ((one_pair + 2**20, False), ((at(1, True) + one_pair) / 2, True)):
        _, training, _ = gpt2_large("dpo", "--frontier_eval", "")
        _, chosen = fitting.fit(lambda: costs.dpo_memory(training, shape, 72), int(budget), "a card",
                                {"training": training}, costs.ALLOCATOR_MARGIN)
        assert chosen.fits and training.activation_checkpointing is on and training.gradient_checkpointing is on
        rows = training.per_device_train_batch_size
        assert (rows == 1) if not on else at(rows, True) <= budget  # off: the one pair that fits without it
        assert rows * training.gradient_accumulation_steps == 64


@functools.cache
def plan_of(kind: str):
    preset = build("gpt2-large", card=cards.card(kind))
    return {row.stage: row for row in preset.rows}


def test_every_stage_fits_an_a100_40gb_and_the_24gb_cards_run_the_papers_stages():
    rows = plan_of("a100-40gb")
    for stage, row in rows.items():
        assert row.fit.fits and row.peak.memory.total <= 36 * GiB, (stage, row.peak.memory.total / GiB)
    rows = plan_of("rtx4090")
    for stage in ("sft", "preference_pairs", "dpo", "eval"):
        assert rows[stage].fit.fits and rows[stage].peak.memory.total <= 21.6 * GiB, stage
    for stage, row in rows.items():  # the others fit, or their row names the smallest card that holds them
        if not row.fit.fits:
            needed = row.peak.memory.total * 1.1
            assert cards.smallest_fitting(needed).kind == "a100-40gb", stage


def run_plan(*argv) -> tuple[int, str, str]:
    import plan

    from imdb_dpo.launch.cli import run_stage

    return run_stage(plan.main, (plan.PlanArguments,), list(argv))


def test_the_plan_of_a_card_prints_its_sizes_and_rates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    capsys.readouterr()
    assert run_plan("--preset", "gpt2-large", "--gpu", "RTX_4090") == 0  # case, spaces, _ and - aside
    out = capsys.readouterr().out
    assert "each run on one RTX 4090 24 GB" in out and "GPU hours (rtx4090)" in out and "165 TFLOP/s bf16" in out
    assert re.search(r"- dpo: .*fitted: training.activation_checkpointing off, training.per_device_train_batch_size "
                     r"\d+", out)
    assert "| rloo | " in out and "**does not fit** the RTX 4090 24 GB" in out and "needs the A100 SXM 40 GB" in out
    # The card's totals and seeds are of the stages it runs.
    assert "**total** (peak and hours without rloo, rloo_rm, online_dpo, grpo: they do not fit)" in out
    assert re.search(r"Seeds: dpo, preferred_ft, unlikelihood run 3 or more seeds a setting; kto 1", out)
    assert run_plan("--preset", "gpt2-large", "--gpu", "v100") == 2
    assert "--gpu 'v100' is not a card this project knows" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # a plan writes nothing


def budget_for(peak: costs.Peak) -> str:
    """IMDB_DPO_GPU_MEMORY for a simulated card that just holds `peak` and the allocator's margin."""
    return f"{(peak.memory.total * (1 + costs.ALLOCATOR_MARGIN) + 2**10) / GiB:.9f}"


def test_pairs_sampled_in_passes_fitted_to_a_small_card_are_byte_identical(tiny_run, tmp_path, monkeypatch, capsys):
    """Every sample has its own random stream: the tiny preset's pairs, sampled 4 prompts a pass on a simulated card
    that holds no more, are the fixed-size run's (64 prompts a pass), line for line."""
    root = tiny_run["root"]
    monkeypatch.setenv("OUTPUT_ROOT", str(root))
    argv = ["--config", os.path.join(REPO, "configs/tiny/preference_pairs.yaml"), "--num_prompts", "24",
            "--output_dir", str(tmp_path / "pairs"), "--batch_size", "auto", "--reward_batch_size", "auto"]
    (args,) = parse_config((PairsArguments,), argv)
    args.batch_size = 4
    monkeypatch.setenv(MEMORY, budget_for(costs.pairs_memory(args, costs.model_shape(args.model_name_or_path), None)))
    capsys.readouterr()
    run_in_process("preference_pairs.py", argv)
    assert "Stage 2: pass sizes fitted to a simulated card" in capsys.readouterr().out
    assert json.load(open(tmp_path / "pairs/manifest.json"))["performance"]["sizes"]["sampling.batch_size"] == 4
    with open(tmp_path / "pairs/pairs.jsonl", "rb") as f:
        small = f.read().splitlines()
    prompts = {json.loads(line)["prompt_id"] for line in small}
    with open(root / "generations/tiny/pairs.jsonl", "rb") as f:
        fixed = [line for line in f.read().splitlines() if json.loads(line)["prompt_id"] in prompts]
    assert len(small) > 24 and small == fixed


def test_a_gpt2_large_stage_on_a_simulated_40gb_card_passes_its_check_at_fitted_sizes(imdb_sample, tmp_path, monkeypatch,
                                                                                        capsys):
    """sft.py with the preset's config unedited (but the CPU's fp32 and the local reviews) on a simulated A100 40 GB:
    the fitted sizes pass its memory check, where the sizes the preset had before auto stop there. The stage is
    stopped right after its check, and its check of the model's files is skipped: GPT-2 Large is not in this machine's
    cache, and its published config (costs.KNOWN_CONFIGS) is all the estimate reads."""
    import sft

    from imdb_dpo.launch.cli import run_stage

    monkeypatch.setenv(MEMORY, f"{cards.CARDS['a100-40gb'].usable_bytes / GiB:.3f}")
    checked = []
    monkeypatch.setattr(sft, "check_model", lambda *args, **kw: None)  # gpt2-large is not in this machine's cache
    monkeypatch.setattr(sft, "train", lambda training_args, *rest: checked.append(training_args) or 0)
    argv = ["--config", os.path.join(REPO, "configs/gpt2-large/sft.yaml"),
            "--train_file", imdb_sample["train"], "--test_file", imdb_sample["test"], "--max_train_samples", "64",
            "--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--output_dir", str(tmp_path / "sft")]
    capsys.readouterr()
    assert run_stage(sft.main, sft.STAGES, argv) == 0
    out = capsys.readouterr().out
    (training,) = checked
    assert "SFT: pass sizes fitted to a simulated card with 39.5" in out
    assert f"training.per_device_train_batch_size {training.per_device_train_batch_size}" in out
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 64
    estimate = costs.sft_memory(training, costs.model_shape("gpt2-large")).memory.total
    assert estimate <= 36 * GiB
    # The same stage at the preset's former sizes (16 rows a pass, no checkpointing) stops at its check.
    code = run_stage(sft.main, sft.STAGES, [*argv, "--per_device_train_batch_size", "16",
                                            "--activation_checkpointing", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "SFT needs about" in err and "smallest card that holds it" in err and len(checked) == 1
