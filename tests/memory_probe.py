"""Run in a fresh process by tests/test_costs.py: the peak memory of a real DPO training step (dpo.py's own trainer)
or of a real sampling batch, beside imdb_dpo/planning/costs.py's estimate of it; prints one JSON line.

    python tests/memory_probe.py dpo MODEL PAIRS_FILE PAIRS_PER_STEP DEVICE OUTPUT_DIR
    python tests/memory_probe.py sampling MODEL PAIRS_FILE PROMPTS SAMPLES NEW_TOKENS DEVICE

On the CPU the peak is the process's resident high-water mark (VmHWM, reset first) above its resident memory when
the measured part starts; run it with MALLOC_MMAP_THRESHOLD_ small, so that freed tensors leave the process at once
and the high-water mark follows the live tensors. On CUDA it is torch.cuda.max_memory_allocated above the memory
allocated at the start.
"""

import gc
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from imdb_dpo.methods import dpo  # noqa: E402
from imdb_dpo.planning import costs  # noqa: E402
from imdb_dpo.configuration.arguments import parse_config  # noqa: E402
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer, set_model_init_kwargs  # noqa: E402
from imdb_dpo.models.sampling import sample_batch  # noqa: E402


class Peak:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self.base = self._status("VmRSS:")

    def bytes(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return self._status("VmHWM:") - self.base


class MeasureTraining(TrainerCallback):
    """From the start of training (the model and the optimizer built, no step taken) to its end."""

    def __init__(self, peak: Peak):
        self.peak, self.measured = peak, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.peak.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.measured = self.peak.bytes()


def pairs_of(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def probe_dpo(model: str, pairs_file: str, per_step: int, device: str, output_dir: str) -> dict:
    on_gpu = ["--bf16", "true", "--use_cpu", "false"] if device == "cuda" else ["--bf16", "false", "--use_cpu", "true"]
    script_args, training_args, model_args = parse_config(dpo.STAGES, [
        "--config", os.path.join(REPO, "configs/tiny/dpo.yaml"), "--model_name_or_path", model, "--pairs_file",
        pairs_file, "--output_dir", output_dir, "--frontier_eval", "", "--max_steps", "2", "--per_device_train_batch_size", str(per_step), "--max_train_pairs", str(2 * per_step),
        "--precompute_ref_batch_size", "16", "--save_strategy", "no", "--report_to", "none", *on_gpu])
    set_model_init_kwargs(training_args, model_args)
    dataset = dpo.load_pairs_dataset(script_args, os.path.join(output_dir, ".datasets_cache"))
    tokenizer = load_tokenizer(model, padding_side="right")
    measure = MeasureTraining(Peak(device))
    dpo.new_trainer(training_args, model_args, dataset, tokenizer, [measure]).train()
    tokens = costs.longest_pair(pairs_of(pairs_file)[: 2 * per_step])
    estimate = costs.trainer_memory(costs.model_shape(model), training_args, 2 * per_step, tokens)
    estimate.pop("weights")  # loaded before the measurement starts
    return {"measured": measure.measured, "estimate": estimate.total, "parts": dict(estimate)}


def probe_sampling(model: str, pairs_file: str, prompts: int, samples: int, new_tokens: int, device: str) -> dict:
    seen, batch = set(), []
    for pair in pairs_of(pairs_file):
        if pair["prompt_id"] not in seen and len(batch) < prompts:
            seen.add(pair["prompt_id"])
            batch.append({"prompt_id": pair["prompt_id"], "prompt_ids": pair["prompt_ids"]})
    tokenizer, policy = load_tokenizer(model), load_causal_lm(model, device=device)
    sample_batch(policy, tokenizer, batch[:2], 2, 4, seed=0)  # the first call's one-off allocations
    peak = Peak(device)
    peak.start()
    sample_batch(policy, tokenizer, batch, samples, new_tokens, seed=0)
    measured = peak.bytes()
    context = max(len(p["prompt_ids"]) for p in batch) + new_tokens
    estimate = costs.sampling_batch(costs.model_shape(model), len(batch) * samples, context, 4)
    return {"measured": measured, "estimate": estimate.total, "parts": dict(estimate)}


if __name__ == "__main__":
    kind, model, pairs_file, *rest = sys.argv[1:]
    if kind == "dpo":
        result = probe_dpo(model, pairs_file, int(rest[0]), rest[1], rest[2])
    else:
        result = probe_sampling(model, pairs_file, int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
    print("PROBE " + json.dumps(result))
