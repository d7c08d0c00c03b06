"""Stage 4 for one checkpoint: sampling, reward (a classifier of the siebert model's shape through the
transformers pipeline) and both KL estimators, timed apart and projected to the preset's 500 prompts. The
precisions are the gpt2-large preset's (configs/gpt2-large/eval.yaml: fp32 throughout, docs/precision.md), and so are its
batch sizes: auto, fitted to the GPU as eval.py fits them (imdb_dpo/planning/fitting.py); on a CPU the batches are smaller.

    python benchmarks/bench_eval.py --size gpt2-large --output eval.json    # on a GPU
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import (SIZES, Timer, build_classifier, build_policy, emit, synthetic_prompts,  # noqa: E402
                               word_tokenizer)
from imdb_dpo.configuration.arguments import EvalArguments, parse_config  # noqa: E402
from imdb_dpo.evaluation.kl import sequence_kls  # noqa: E402
from imdb_dpo.planning import costs  # noqa: E402
from imdb_dpo.models.modeling import load_causal_lm  # noqa: E402
from imdb_dpo.configuration.precision import DTYPES  # noqa: E402
from imdb_dpo.models.reward import SentimentClassifierReward  # noqa: E402
from imdb_dpo.models.sampling import plan_batches, sample_batch  # noqa: E402

PRESET_PROMPTS, SAMPLES, NEW_TOKENS = 500, 4, 64
PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "gpt2-large", "eval.yaml")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--output")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    (preset,) = parse_config((EvalArguments,), ["--config", PRESET, "--num_prompts", str(PRESET_PROMPTS)])
    dtype, reward_dtype = DTYPES[preset.sampling_dtype], DTYPES[preset.reward_dtype]
    assert preset.kl_dtype == preset.sampling_dtype  # one copy of each model samples and enters the KL pass
    n = args.prompts or (256 if gpu else 16)
    work = tempfile.mkdtemp(prefix="bench_eval_")
    policy_dir, reference_dir = (build_policy(args.size, os.path.join(work, name), seed=seed)
                                 for name, seed in (("policy", 1), ("reference", 0)))
    classifier_dir = build_classifier(args.size, os.path.join(work, "classifier"))
    shapes = costs.model_shape(policy_dir), costs.model_shape(classifier_dir, classifier=True)
    costs.check_memory("bench_eval", lambda: costs.evaluation_memory(preset, *shapes, with_sft=False), device,
                       evaluation=preset)
    batch = args.batch or (preset.batch_size if gpu else 8)
    policy = load_causal_lm(policy_dir, dtype, device)
    reference = load_causal_lm(reference_dir, dtype, device)
    reward = SentimentClassifierReward(classifier_dir, device=device, batch_size=preset.reward_batch_size,
                                       dtype=reward_dtype)
    vocab = SIZES[args.size]["vocab_size"]
    tokenizer = word_tokenizer(vocab)
    prompts = synthetic_prompts(n, vocab)

    samples = []
    with Timer() as sampling:
        for b, chunk in enumerate(plan_batches(prompts, batch)):
            for p, cs in zip(chunk, sample_batch(policy, tokenizer, chunk, SAMPLES, NEW_TOKENS, seed=b)):
                samples += [(p, c) for c in cs]
    with Timer() as scoring:
        reward([p["prompt"] + c["text"] for p, c in samples])
    with Timer() as kl:
        sequence_kls(policy, reference, [p["prompt_ids"] for p, _ in samples], [c["ids"] for _, c in samples], 0,
                     batch_size=preset.kl_batch_size if gpu else 16)
    total = sampling.seconds + scoring.seconds + kl.seconds
    emit({"benchmark": "eval_one_checkpoint", "size": args.size, "prompts_timed": n, "samples_per_prompt": SAMPLES,
          "dtypes": {k: getattr(preset, k) for k in ("sampling_dtype", "kl_dtype", "reward_dtype")},
          "batch_sizes": {"prompts": batch, "reward": preset.reward_batch_size, "kl": preset.kl_batch_size if gpu else 16},
          "sampling_s": sampling.seconds, "reward_s": scoring.seconds, "kl_s": kl.seconds,
          "projected_500_prompts_s": total * PRESET_PROMPTS / n}, args.output)


if __name__ == "__main__":
    main()
