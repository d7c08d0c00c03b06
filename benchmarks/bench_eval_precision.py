"""The evaluation in TF32 against fp32, on a trained checkpoint: what `eval_precision: tf32` changes per sample.

The same prompts, the same random streams (each sample draws its own uniforms, imdb_dpo/models/sampling.py), the policy
sampled with the reference decoding in lockstep for the exact KL (as configs/gpt2-large/eval.yaml evaluates), and
the classifier's reward, once with IEEE fp32 matrix products and once on TF32 tensor cores
(`precision.evaluation_precision`). A sample whose tokens are the same both ways gives a per-sample KL and reward
difference; the others are counted. On a CPU TF32 does not exist: both passes are fp32 and every difference is 0
(a dry run of the machinery). The GPU check runs it on its trained DPO checkpoint.

    python benchmarks/bench_eval_precision.py --policy DPO_RUN --reference SFT_DIR \\
        [--reward_model siebert/sentiment-roberta-large-english] [--test_file imdb_test.jsonl] [--output p.json]
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import build_device, emit  # noqa: E402
from imdb_dpo.configuration.arguments import EvalArguments  # noqa: E402
from imdb_dpo.data.reviews import load_reviews, make_prompts  # noqa: E402
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer  # noqa: E402
from imdb_dpo.configuration.precision import evaluation_precision  # noqa: E402
from imdb_dpo.models.reward import make_reward  # noqa: E402
from imdb_dpo.models.sampling import plan_batches, sample_batch  # noqa: E402


def evaluate(policy, reference, tokenizer, reward, prompts, batch, samples, new_tokens, precision) -> list[dict]:
    """Each sample's ids, exact KL and reward, under `precision`."""
    rows = []
    with evaluation_precision(precision):
        for b, chunk in enumerate(plan_batches(prompts, batch)):
            drawn = sample_batch(policy, tokenizer, chunk, samples, new_tokens, seed=b, kl_reference=reference)
            texts = [p["prompt"] + c["text"] for p, cs in zip(chunk, drawn) for c in cs]
            rows += [{"ids": c["ids"], "kl": c["kl_exact"], "reward": r}
                     for c, r in zip((c for cs in drawn for c in cs), reward(texts), strict=True)]
    return rows


def stats(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error."""
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    return mean, spread / math.sqrt(len(values))


def compare(fp32: list[dict], tf32: list[dict]) -> dict:
    same = [(a, b) for a, b in zip(fp32, tf32, strict=True) if a["ids"] == b["ids"]]
    kl_diff = [abs(a["kl"] - b["kl"]) for a, b in same]
    kl_rel = [abs(a["kl"] - b["kl"]) / max(abs(a["kl"]), 1e-6) for a, b in same]
    reward_diff = [abs(a["reward"] - b["reward"]) for a, b in same]
    result = {"samples": len(fp32), "same_tokens": len(same)}
    for name, values in (("kl_abs_diff", kl_diff), ("kl_rel_diff", kl_rel), ("reward_abs_diff", reward_diff)):
        result[f"{name}_mean"] = sum(values) / len(values) if values else None
        result[f"{name}_max"] = max(values) if values else None
    for key in ("kl", "reward"):
        for name, rows in (("fp32", fp32), ("tf32", tf32)):
            mean, error = stats([r[key] for r in rows])
            result[f"{key}_mean_{name}"], result[f"{key}_stderr_{name}"] = mean, error
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="a trained checkpoint (a finished run's folder)")
    parser.add_argument("--reference", required=True, help="its reference (the SFT model)")
    parser.add_argument("--reward_model", default="siebert/sentiment-roberta-large-english")
    parser.add_argument("--test_file", help="reviews (jsonl, json, csv or parquet); default: stanfordnlp/imdb's test split")
    parser.add_argument("--prompts", type=int, default=None, help="default 128 on a GPU, 8 on a CPU")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--output")
    args = parser.parse_args()
    device = build_device()
    gpu = device == "cuda"
    policy = load_causal_lm(args.policy, torch.float32, device)
    reference = load_causal_lm(args.reference, torch.float32, device)
    tokenizer = load_tokenizer(args.reference)
    reward = make_reward(args.reward_model, 64, "POSITIVE", device, torch.float32)
    reviews = load_reviews(EvalArguments(test_file=args.test_file), "test")
    prompts = make_prompts(reviews, tokenizer, args.prompts or (128 if gpu else 8), "test")
    new_tokens = args.new_tokens if gpu else min(args.new_tokens, 16)
    runs = {name: evaluate(policy, reference, tokenizer, reward, prompts, args.batch, args.samples, new_tokens, name)
            for name in ("fp32", "tf32")}
    emit({"benchmark": "eval_precision", "policy": args.policy, "prompts": len(prompts), "new_tokens": new_tokens,
          "tf32_available": gpu, **compare(runs["fp32"], runs["tf32"])}, args.output)


if __name__ == "__main__":
    main()
