"""What a stage will cost, known before it runs (imdb_dpo/planning/costs.py, plan.py): the memory estimates against measured
peaks, the plan's counts against what the tiny run did, the gpt2-large plan offline, and the refusal before loading."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from imdb_dpo.methods import registry
from conftest import REPO, TEST_DEVICE
from imdb_dpo.planning import costs
from imdb_dpo.configuration.arguments import parse_config

from imdb_dpo.methods import dpo

LINUX_PROC = os.path.isfile("/proc/self/clear_refs")


def probe(*args: str) -> dict:
    """tests/memory_probe.py in a fresh process, whose freed tensors leave it at once (see its docstring)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "memory_probe.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:])


@pytest.mark.skipif(not LINUX_PROC, reason="measures the resident high-water mark through /proc (Linux)")
def test_the_dpo_step_estimate_is_within_25_percent_of_a_real_steps_peak(tiny_sft, tiny_pairs, tmp_path):
    # The tiny model's shape at 256 pairs a step, so that the step (not the interpreter's own allocations) is measured.
    result = probe("dpo", tiny_sft, tiny_pairs, "256", "cpu", str(tmp_path / "dpo"))
    assert result["measured"] > 200 * 2**20
    assert result["estimate"] == pytest.approx(result["measured"], rel=0.25), result


@pytest.mark.skipif(not LINUX_PROC, reason="measures the resident high-water mark through /proc (Linux)")
def test_the_sampling_estimate_is_within_25_percent_of_a_real_batchs_peak(tiny_sft, tiny_pairs):
    result = probe("sampling", tiny_sft, tiny_pairs, "128", "16", "48", "cpu")
    assert result["measured"] > 100 * 2**20
    assert result["estimate"] == pytest.approx(result["measured"], rel=0.25), result


@pytest.mark.gpu
def test_on_the_gpu_the_dpo_estimate_is_within_25_percent_of_max_memory_allocated(gpt2_stand_in, tmp_path):
    import random

    rng = random.Random(0)
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for i in range(128):
            ids = lambda n: [rng.randrange(1, 50000) for _ in range(n)]  # noqa: E731
            f.write(json.dumps({"prompt_id": f"p{i}", "prompt_ids": ids(8), "chosen_ids": ids(64),
                                "rejected_ids": ids(64)}) + "\n")
    result = probe("dpo", gpt2_stand_in, str(pairs), "32", TEST_DEVICE, str(tmp_path / "dpo"))
    assert result["estimate"] == pytest.approx(result["measured"], rel=0.25), result


def test_a_checkpoint_weighs_what_the_plan_counts(tiny_sft):
    """The plan's disk figures count 4 bytes a parameter: the size of the weights a run saves."""
    saved = os.path.getsize(os.path.join(tiny_sft, "model.safetensors"))
    assert costs.model_shape(tiny_sft).fp32_bytes == pytest.approx(saved, rel=0.01)


def plan_table(output: str) -> dict[str, dict]:
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for line in lines[1:]
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}


def run_plan(preset: str, output_root: str, tmp_path) -> tuple[str, float]:
    """`./run_pipeline.sh <preset> --plan` as a user runs it, offline with an empty Hugging Face cache."""
    env = {**os.environ, "OUTPUT_ROOT": output_root, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHON": sys.executable}
    started = time.perf_counter()
    proc = subprocess.run(["./run_pipeline.sh", preset, "--plan"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, time.perf_counter() - started


def test_the_plan_counts_the_steps_and_checkpoints_the_tiny_run_made(tiny_run, tmp_path):
    output, _ = run_plan("tiny", str(tiny_run["root"]), tmp_path)
    table = plan_table(output)
    assert "<=" not in output  # every count read from what the run made, so no footnote about a missing pair file
    outputs = tiny_run["root"] / "outputs" / "tiny"
    runs = {"dpo": ["dpo/sigmoid_beta0.1", "dpo/sigmoid_beta1", "dpo/sigmoid_beta5"],
            "rloo": ["rloo/rloo_kl0.01", "rloo/rloo_kl0.1"], "rloo_rm": ["rloo_rm/rloo_rm_kl0.05"],
            "preferred_ft": ["preferred_ft/preferred_ft"], "unlikelihood": ["unlikelihood/unlikelihood_alpha1"],
            "kto": ["kto/kto_beta0.1"], "orpo": ["orpo/orpo_beta0.1"], "simpo": ["simpo/simpo_beta2_gamma0.5"],
            "online_dpo": ["online_dpo/online_sigmoid_beta0.1"], "reward_model": ["reward_model"], "sft": ["sft"]}
    for stage, folders in runs.items():
        manifests = [json.loads((outputs / folder / "manifest.json").read_text()) for folder in folders]
        assert table[stage]["runs"] == str(len(folders)), stage
        assert {m["global_step"] for m in manifests} == {int(table[stage]["steps a run"].replace(",", ""))}, stage
        if stage != "sft":  # SFT's checkpoints are for resuming only and its manifest does not list them
            counted = int(table[stage]["checkpoints a run"].split()[0])
            assert {len(m["checkpoints"]) for m in manifests} == {counted}, stage


def test_the_gpt2_large_plan_runs_offline_in_seconds_and_fits_one_node(tmp_path):
    output, seconds = run_plan("gpt2-large", str(tmp_path / "nothing_yet"), tmp_path)
    assert seconds < 60, seconds  # about 12 s on 2 cores, most of it importing TRL
    table = plan_table(output)
    assert list(table) == ["sft", "preference_pairs", *registry(), "eval", "**total**"]  # every method has a config
    assert table["kto"]["steps a run"] == "<= 1,563"  # 25,000 prompts x 4 samples, each labelled / 64
    assert table["dpo"]["runs"] == "12"  # 4 betas x 3 seeds
    # No pair file yet: counted from the most pairs stage 2's settings allow (25,000 prompts x 6), and marked so.
    assert table["dpo"]["steps a run"] == "<= 2,344"  # 150,000 pairs / 64
    assert "<=: counted from the most pairs stage 2's settings allow" in output
    assert table["dpo"]["checkpoints a run"] == "<= 11 points in memory, 0 to resume"  # lr-log, frontier_eval
    assert table["sft"]["steps a run"] == "391"  # IMDb's 25,000 training reviews / (16 x 4): exact
    gb = lambda cell: float(re.search(r"([\d.]+) GB", cell).group(1))  # noqa: E731
    assert gb(table["**total**"]["kept when finished"]) < 100
    # keep_final_model_seeds: [0]: seed 0's four final models (3.1 GB each) and every run's records.
    assert 12.4 < gb(table["dpo"]["kept when finished"]) < 14
    assert gb(table["**total**"]["most on disk while it runs"]) < 100
    assert all(float(row["peak GPU memory"].split()[0].strip("*")) < 80 for row in table.values())
    assert not (tmp_path / "nothing_yet").exists()  # a plan writes nothing
    # The seeds of each method, and the cost of 3 for those with 1: their runs' hours twice more.
    one_seed = ["kto", "orpo", "orpo_base", "cpo", "simpo", "online_dpo"]
    seeds = re.search(r"Seeds: dpo, rloo, rloo_rm, preferred_ft, unlikelihood, grpo run 3 or more seeds a setting; "
                      + ", ".join(f"{stage} 1" for stage in one_seed) + r": .* would add ([\d.]+) GPU hours", output)
    hours = lambda cell: float(cell.strip("*<= "))  # noqa: E731
    assert seeds and float(seeds.group(1)) == pytest.approx(2 * sum(hours(table[s]["GPU hours (h100)"])
                                                                   for s in one_seed), abs=0.05)


def test_a_stage_that_would_not_fit_stops_before_loading_with_the_numbers_and_the_fix(monkeypatch):
    _, training_args, _ = parse_config(dpo.STAGES, ["--config", os.path.join(REPO, "configs/gpt2-large/dpo.yaml"),
                                                    "--use_cpu", "true", "--per_device_train_batch_size", "64",
                                                    "--activation_checkpointing", "false"])
    peak = costs.dpo_memory(training_args, costs.model_shape("gpt2-large"), 72)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a busy GPU")
    with pytest.raises(costs.NotEnoughMemory) as refused:
        costs.check_memory("DPO", peak, "cuda")
    message = str(refused.value)
    assert f"needs about {costs.size(peak.memory.total * 1.1)}" in message and "10% for what the allocator" in message
    assert "a busy GPU with 20.0 GiB free of 80.0 GiB: the smallest card that holds it is the RTX A6000 48 GB" in message
    assert "Lower per_device_train_batch_size" in message and "activations" in message
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (peak.memory.total * 1.05, 80 * 2**30))
    with pytest.raises(costs.NotEnoughMemory):  # the estimate alone would fit; the allocator's margin does not
        costs.check_memory("DPO", peak, "cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (79 * 2**30, 80 * 2**30))
    costs.check_memory("DPO", peak, "cuda")  # fits
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * 2**30, 80 * 2**30))
    monkeypatch.setenv(costs.SKIP_VARIABLE, "1")
    costs.check_memory("DPO", peak, "cuda")  # the user knows better
    costs.check_memory("DPO", peak, "cpu")  # nothing to check on the CPU


@pytest.mark.parametrize("config,change,message", [
    ("dpo.yaml", ("per_device_train_batch_size: 32", "per_device_train_batch_size: 0"), "per_device_train_batch_size=0"),
    ("dpo.yaml", ("save_steps: 25", "save_steps: -1"), "save_steps=-1"),
    ("preference_pairs.yaml", ("samples_per_prompt: 4", "samples_per_prompt: 1"), "a pair needs at least 2 samples"),
    ("eval.yaml", ("num_prompts: 64", "num_prompts: 0"), "num_prompts=0: must be a finite number > 0"),
    ("preference_pairs.yaml", None, "no preference_pairs.yaml of this preset writes it"),
    ("rloo.yaml", ("seed: 0", "seed: 0\nseeds: [0, 1]\nkeep_final_model_seeds: [-1]"), "keep_final_model_seeds=[-1]"),
    ("rloo.yaml", ("seed: 0", "seed: 0\ngeneration_compile: true"), "generation_compile: true compiles the generation"),
    ("online_dpo.yaml", ("seed: 0", "seed: 0\ngeneration_dtype: float8"), "generation_dtype='float8'"),
])
def test_the_plan_refuses_what_the_stages_refuse(config, change, message, tmp_path):
    """Settings a stage would refuse are refused by the plan too, naming the file, never planned as 0 or 1 steps."""
    import shutil

    preset = tmp_path / "preset"
    shutil.copytree(os.path.join(REPO, "configs", "tiny"), preset)
    if change:
        text = (preset / config).read_text()
        assert change[0] in text
        (preset / config).write_text(text.replace(change[0], change[1]))
    else:
        (preset / config).unlink()
    proc = subprocess.run([sys.executable, "plan.py", str(preset)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OUTPUT_ROOT": str(tmp_path / "out")})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "| stage |" not in proc.stdout  # no table


def gpt2_large(config: str, *flags: str):
    from imdb_dpo.methods import rloo

    return parse_config(rloo.STAGES, ["--config", os.path.join(REPO, "configs/gpt2-large", config), "--use_cpu",
                                      "true", *H100_SIZES, *flags])


# The sizes the gpt2-large preset fits to an H100 (plan.py gpt2-large), pinned: these tests count parts, not fits.
H100_SIZES = ("--per_device_train_batch_size", "64", "--activation_checkpointing", "false")
H100_EVAL_SIZES = ("--batch_size", "128", "--kl_batch_size", "64", "--reward_batch_size", "256")


def rloo_rm_peak(world: int = 1) -> costs.Peak:
    """rloo_rm's estimate with configs/gpt2-large/eval.yaml evaluating it in memory, from a learned reward model of
    GPT-2 Large's shape (what reward_model.py trains)."""
    script_args, training_args, _ = gpt2_large("rloo_rm.yaml")
    (eval_args,) = parse_config(costs_eval_stages(), ["--config", os.path.join(REPO, "configs/gpt2-large/eval.yaml"),
                                                      *H100_EVAL_SIZES])
    policy = costs.model_shape("gpt2-large")
    learned = costs.model_shape("gpt2-large", classifier=True)
    return costs.rloo_memory(training_args, policy, 8, learned, script_args.reward_dtype, eval_args,
                             costs.classifier_shape(eval_args.reward_model), generation_dtype=script_args.generation_dtype,
                             generation_compile=script_args.generation_compile, learned_reward=True)


def costs_eval_stages():
    from imdb_dpo.configuration.arguments import EvalArguments

    return (EvalArguments,)


def test_the_estimate_counts_everything_resident_at_each_step(monkeypatch):
    """After its first in-memory evaluation a run keeps the evaluation's models through every later step, and an
    evaluation runs beside everything the method keeps: RLOO's reference, its reward model, the generation copy and
    its static cache, and for rloo_rm the learned reward model loaded once more by the evaluation."""
    peak = rloo_rm_peak()
    assert peak.step.startswith("evaluating a checkpoint while training")
    parts = peak.memory
    policy = costs.model_shape("gpt2-large")
    for name in ("reference model", "reward model", "generation copy", "its static KV cache",
                 "reference and evaluated model", "classifier", "learned reward model", "optimizer state"):
        assert parts.get(name, 0) > 0, name
    assert parts["reference model"] == policy.fp32_bytes
    assert parts["learned reward model"] == pytest.approx(policy.fp32_bytes, rel=0.01)
    assert 44 * 2**30 < parts.total < 50 * 2**30  # 39.3 GiB before these were counted
    # A training step counts the evaluation's models too: they stay loaded after the first evaluation.
    script_args, training_args, _ = gpt2_large("rloo_rm.yaml")
    alone = costs.rloo_memory(training_args, policy, 8, costs.model_shape("gpt2-large", classifier=True),
                              script_args.reward_dtype, generation_dtype=script_args.generation_dtype,
                              generation_compile=script_args.generation_compile, learned_reward=True)
    (eval_args,) = parse_config(costs_eval_stages(), ["--config", os.path.join(REPO, "configs/gpt2-large/eval.yaml"),
                                                      *H100_EVAL_SIZES])
    with_eval = costs.with_frontier(alone, training_args, policy, eval_args, costs.classifier_shape(eval_args.reward_model),
                                    proxy=costs.model_shape("gpt2-large", classifier=True))
    models = costs.evaluation_models(eval_args, policy, costs.classifier_shape(eval_args.reward_model),
                                     costs.model_shape("gpt2-large", classifier=True))
    assert with_eval.memory.total >= alone.memory.total + models.total


def test_ddp_counts_its_gradient_buckets_on_every_process(monkeypatch):
    from transformers import TrainingArguments

    _, training_args, _ = gpt2_large("rloo.yaml")
    policy = costs.model_shape("gpt2-large")
    assert "DDP gradient buckets" not in costs.resident_training_state(policy, training_args)
    assert "DDP gradient buckets" not in rloo_rm_peak().memory
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    assert costs.resident_training_state(policy, training_args)["DDP gradient buckets"] == policy.fp32_bytes
    assert costs.trainer_memory(policy, training_args, 8, 72)["DDP gradient buckets"] == policy.fp32_bytes
    assert rloo_rm_peak().memory["DDP gradient buckets"] == policy.fp32_bytes
    assert "DDP gradient buckets" not in costs.resident_training_state(policy, training_args, lora=True)
