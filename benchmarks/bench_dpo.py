"""DPO training throughput: the project's settings against TRL's DPOTrainer with its defaults, side by side.

    python benchmarks/bench_dpo.py --size gpt2-large --output dpo.json     # on a GPU
    python benchmarks/bench_dpo.py --size tiny                             # on CPU, a smoke run

Each variant runs in a process of its own (clean peak memory). Reported per variant: step time, tokens/s
(real prompt+completion tokens of chosen and rejected), peak memory, and MFU = useful FLOPs / time / the
device's bf16 peak, where useful FLOPs = 6N per policy token, plus 2N per reference token when the reference
runs inside the step (TRL's default; the project precomputes it once, timed separately as `reference_s`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from benchmarks.common import (SIZES, build_policy, emit, peak_memory_gb, peak_tflops, reset_peak_memory,  # noqa: E402
                               synthetic_pairs, sync, word_tokenizer)
from imdb_dpo.methods.dpo import PretokenizedDPOTrainer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.durations, self.start = warmup, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        if state.global_step > self.warmup:
            self.durations.append(time.perf_counter() - self.start)


def run_variant(variant: str, size: str, steps: int, warmup: int, batch: int) -> dict:
    gpu = torch.cuda.is_available()
    workdir = tempfile.mkdtemp(prefix="bench_dpo_")
    model_dir = build_policy(size, os.path.join(workdir, "model"))
    vocab = SIZES[size]["vocab_size"]
    common = dict(output_dir=os.path.join(workdir, "out"), max_steps=steps + warmup, save_strategy="no",
                  report_to="none", logging_steps=10_000, bf16=gpu, use_cpu=not gpu, dataloader_num_workers=0)
    if variant == "trl_defaults":
        # What a user gets from DPOConfig without changes: batch 8, gradient checkpointing on, the reference
        # model run in every step, text re-tokenised by the trainer (with EOS appended).
        per_device = 8
        pairs = synthetic_pairs(per_device * (steps + warmup), vocab)
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        config, trainer_class, ref_in_step, eos = DPOConfig(**common), DPOTrainer, True, 1
    else:
        per_device = batch
        pairs = synthetic_pairs(per_device * (steps + warmup), vocab)
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs])
        config = DPOConfig(**common, per_device_train_batch_size=per_device, activation_checkpointing=False,
                           precompute_ref_log_probs=True, precompute_ref_batch_size=4 * per_device, max_length=128,
                           model_init_kwargs={"attn_implementation": "sdpa"})
        trainer_class, ref_in_step, eos = PretokenizedDPOTrainer, False, 0
    timer = StepTimer(warmup)
    reset_peak_memory()
    start = time.perf_counter()
    trainer = trainer_class(model=model_dir, args=config, train_dataset=dataset, processing_class=word_tokenizer(vocab),
                            callbacks=[timer])
    setup_s = time.perf_counter() - start  # model loading, tokenising, and for the project the reference pass
    trainer.train()
    n_params = sum(p.numel() for p in trainer.model.parameters())
    tokens_per_pair = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) + 2 * eos
                          for p in pairs) / len(pairs)
    step_s = sum(timer.durations) / len(timer.durations)
    tokens_per_s = tokens_per_pair * per_device / step_s
    useful_flops = (6 + (2 if ref_in_step else 0)) * n_params * tokens_per_pair * per_device
    peak = peak_tflops()
    return {"variant": variant, "per_device_batch": per_device, "step_s": step_s, "tokens_per_s": tokens_per_s,
            "pairs_per_s": per_device / step_s, "peak_memory_gb": peak_memory_gb(), "setup_s": setup_s,
            "mfu": useful_flops / step_s / (peak * 1e12) if peak else None, "parameters": n_params,
            "gradient_checkpointing": config.gradient_checkpointing, "reference_in_step": ref_in_step}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="project per-device batch (64 on GPU, 8 on CPU)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--output")
    args = parser.parse_args()
    batch = args.batch or (64 if torch.cuda.is_available() else 8)
    if args.variant:  # one variant, in this process
        print("RESULT " + json.dumps(run_variant(args.variant, args.size, args.steps, args.warmup, batch)))
        return
    results = []
    for variant in ("trl_defaults", "project"):
        proc = subprocess.run([sys.executable, __file__, "--size", args.size, "--steps", str(args.steps), "--warmup",
                               str(args.warmup), "--batch", str(batch), "--variant", variant],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:]))
    emit({"benchmark": "dpo_training", "size": args.size, "results": results,
          "speedup_tokens_per_s": results[1]["tokens_per_s"] / results[0]["tokens_per_s"]}, args.output)


if __name__ == "__main__":
    main()
