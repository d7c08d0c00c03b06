"""On a CUDA GPU (marked `gpu`: skipped elsewhere; benchmarks/gpu_check.py runs them with IMDB_DPO_TEST_DEVICE=cuda):
models run where their stage puts them, in the precision their settings name, and fp32 on the GPU gives the CPU's
numbers."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from imdb_dpo.evaluation.kl import sequence_kls
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.models.reward import make_reward
from imdb_dpo.models.sampling import sample_batch

pytestmark = pytest.mark.gpu
TEXTS = ["This movie was a delight from start to finish.", "Dull, slow and far too long.", "I watched it twice",
         "The acting was fine but the plot made no sense at all."]


def test_the_reward_runs_in_its_setting_and_fp32_matches_the_cpu(gpt2_classifier):
    cpu = make_reward(gpt2_classifier, device="cpu")(TEXTS)
    fp32 = make_reward(gpt2_classifier, device="cuda")
    assert {(p.dtype, p.device.type) for p in fp32.classifier.model.parameters()} == {(torch.float32, "cuda")}
    assert fp32(TEXTS) == pytest.approx(cpu, abs=1e-5)
    bf16 = make_reward(gpt2_classifier, device="cuda", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.classifier.model.parameters()} == {torch.bfloat16}


def test_the_fp32_kl_on_the_gpu_equals_the_cpus(gpt2_stand_in, gpt2_tokenizer_dir, tmp_path):
    from helpers import build_gpt2_stand_in

    tokenizer = load_tokenizer(gpt2_stand_in)
    other = build_gpt2_stand_in(tmp_path / "policy", gpt2_tokenizer_dir, seed=1)
    prompts = [{"prompt_id": f"text-{i}", "prompt_ids": tokenizer(t)["input_ids"][:6]} for i, t in enumerate(TEXTS)]
    samples = sample_batch(load_causal_lm(other), tokenizer, prompts, 4, 24, seed=0)
    prompt_ids = [p["prompt_ids"] for p, cs in zip(prompts, samples) for _ in cs]
    completion_ids = [c["ids"] for cs in samples for c in cs]
    on = {device: sequence_kls(load_causal_lm(other, device=device), load_causal_lm(gpt2_stand_in, device=device),
                               prompt_ids, completion_ids, tokenizer.pad_token_id)[0] for device in ("cpu", "cuda")}
    assert on["cuda"] == pytest.approx(on["cpu"], rel=1e-4, abs=1e-4)  # no TF32 in the KL pass
    assert min(on["cpu"]) > 0


@pytest.mark.parametrize("use_cpu", [False, True])
def test_a_stage_uses_the_gpu_unless_use_cpu(use_cpu, gpt2_stand_in, gpt2_classifier, tmp_path):
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"text": f"{t} " * 8, "label": 1}) + "\n" for t in TEXTS * 4))
    report = tmp_path / "resources.json"
    argv = ["--config", os.path.join(REPO, "configs/gpt2-large/preference_pairs.yaml"), "--model_name_or_path",
            gpt2_stand_in, "--train_file", str(reviews), "--test_file", str(reviews), "--num_prompts", "8",
            "--reward_model", gpt2_classifier, "--output_dir", str(tmp_path / "pairs"), "--use_cpu", str(use_cpu)]
    proc = subprocess.run([sys.executable, "preference_pairs.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "IMDB_DPO_RESOURCE_REPORT": str(report)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = json.loads(report.read_text())
    if use_cpu:
        assert used["device"] == "cpu"
    else:
        assert used["device"] != "cpu" and used["peak_gpu_allocated_gib"] > 0


def test_a_plain_stage_on_a_node_with_several_gpus_uses_one(gpt2_stand_in, gpt2_classifier, tmp_path):
    """Without a launcher a stage pins the first visible GPU (imdb_dpo/lifecycle/one_gpu.py): TRL would otherwise spread the
    model over every GPU, or wrap it in DataParallel."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs a node with 2 or more GPUs")
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"text": f"{t} " * 8, "label": 1}) + "\n" for t in TEXTS * 4))
    report = tmp_path / "resources.json"
    argv = ["--config", os.path.join(REPO, "configs/gpt2-large/preference_pairs.yaml"), "--model_name_or_path",
            gpt2_stand_in, "--train_file", str(reviews), "--test_file", str(reviews), "--num_prompts", "8",
            "--reward_model", gpt2_classifier, "--output_dir", str(tmp_path / "pairs")]
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "preference_pairs.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**env, "IMDB_DPO_RESOURCE_REPORT": str(report)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(report.read_text())["visible_gpus"] == 1
    assert proc.stdout.startswith("GPU: ") and "CUDA_VISIBLE_DEVICES=0)" in proc.stdout.splitlines()[0]


def test_a_model_trained_in_bf16_on_the_gpu_is_saved_in_the_dtype_its_manifest_states(gpt2_stand_in, gpt2_classifier,
                                                                                      tmp_path):
    """The presets' bf16 autocast keeps fp32 weights, and those are saved (under DeepSpeed, whose bf16 would save
    bf16 weights, the stages refuse bf16: tests/test_devices.py)."""
    from conftest import NO_FRONTIER_EVAL
    from imdb_dpo.lifecycle.manifests import read_manifest
    from test_devices import saved_dtypes

    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"text": f"{t} " * 8, "label": 1}) + "\n" for t in TEXTS * 4))
    pairs = ["--config", os.path.join(REPO, "configs/gpt2-large/preference_pairs.yaml"), "--model_name_or_path",
             gpt2_stand_in, "--train_file", str(reviews), "--test_file", str(reviews), "--num_prompts", "8",
             "--max_new_tokens", "16", "--reward_model", gpt2_classifier, "--output_dir", str(tmp_path / "pairs"), *cpu]
    dpo = ["--config", os.path.join(REPO, "configs/gpt2-large/dpo.yaml"), "--model_name_or_path", gpt2_stand_in,
           "--pairs_file", str(tmp_path / "pairs" / "pairs.jsonl"), "--output_dir", str(tmp_path / "dpo"), "--betas",
           "0.1", "--seeds", "0", "--max_steps", "2", "--per_device_train_batch_size", "4", "--examples_per_step", "4",
           "--report_to", "none", *NO_FRONTIER_EVAL, *cpu]
    for script, argv in (("preference_pairs.py", pairs), ("dpo.py", dpo)):
        proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "dpo" / "sigmoid_beta0.1_seed0"
    manifest = read_manifest(run)
    assert manifest["config"]["training"]["bf16"] and manifest["config"]["model"]["dtype"] == "float32"
    assert saved_dtypes(run) == {"F32"}


GPU_CHECK_RESULTS = "IMDB_DPO_GPU_CHECK_RESULTS"


def test_every_stage_of_the_gpu_check_peaks_within_15_percent_of_its_estimate():
    """The memory check's estimate (imdb_dpo/planning/costs.py) against torch.cuda.max_memory_allocated, for every stage the
    GPU check ran at GPT-2 Large's shape, rloo_rm with its points evaluated in memory included."""
    results = os.environ.get(GPU_CHECK_RESULTS)
    if not results:
        pytest.skip(f"reads the resource reports of benchmarks/gpu_check.py's stages ({GPU_CHECK_RESULTS}), which "
                    "runs this test after them")
    reports = {}
    for name in sorted(os.listdir(results)):
        if name.endswith(".resources.json"):
            with open(os.path.join(results, name)) as f:
                report = json.load(f)
            if report.get("exit_code") == 0 and report.get("estimated_peak_gib") and report.get("peak_gpu_allocated_gib"):
                reports[name.split(".")[0]] = report
    assert "rloo_rm" in reports and "dpo" in reports, sorted(reports)
    off = {name: (r["estimated_peak_gib"], r["peak_gpu_allocated_gib"]) for name, r in reports.items()
           if abs(r["estimated_peak_gib"] / r["peak_gpu_allocated_gib"] - 1) > 0.15}
    assert not off, off
