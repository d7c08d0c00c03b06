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
from imdb_dpo.kl import sequence_kls
from imdb_dpo.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.reward import make_reward
from imdb_dpo.sampling import sample_batch

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
