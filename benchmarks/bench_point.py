"""One frontier point while training: evaluated from a saved checkpoint (as before) against in memory (now).

Saved: the policy written as a checkpoint (weights, and an optimizer state of RMSprop's size, one fp32 value a
weight), loaded back, sampled, then the KL pass of policy and reference over the samples. In memory: the weights
copied into the resident evaluation model, sampled with the reference decoding in lockstep, which sums the KL as
it samples (no second pass). The reward is the same work either way and is left out. Two random GPT-2 models of
the given shape play policy and reference; the script reports each part's seconds and how far the two KLs differ.

    python benchmarks/bench_point.py --size tiny --prompts 64
    python benchmarks/bench_point.py --size gpt2-large --prompts 2 --new_tokens 16   # on a CPU: minutes
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import SIZES, Timer, build_device, build_policy, emit, synthetic_prompts  # noqa: E402
from imdb_dpo.configuration.arguments import EvalArguments  # noqa: E402
from imdb_dpo.evaluation.in_training import LiveCopy  # noqa: E402
from imdb_dpo.evaluation.kl import sequence_kls  # noqa: E402
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer  # noqa: E402
from imdb_dpo.models.sampling import plan_batches, sample_batch  # noqa: E402

SAMPLES = 4


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="prompts sampled at once")
    parser.add_argument("--output")
    args = parser.parse_args()
    device = build_device()
    with tempfile.TemporaryDirectory() as work:
        policy_dir = build_policy(args.size, os.path.join(work, "policy"), seed=1)
        reference = load_causal_lm(build_policy(args.size, os.path.join(work, "reference"), seed=2), device=device)
        tokenizer = load_tokenizer(policy_dir)
        live = load_causal_lm(policy_dir, device=device)  # the training run's policy, in memory
        prompts = synthetic_prompts(args.prompts, live.config.vocab_size)
        batches = plan_batches(prompts, args.batch)
        times = {}

        with Timer() as t:  # the checkpoint a frontier point used to be: weights and optimizer state, written and read
            checkpoint = os.path.join(work, "checkpoint")
            live.save_pretrained(checkpoint)
            torch.save({k: torch.zeros_like(v) for k, v in live.state_dict().items()}, os.path.join(checkpoint, "optimizer.pt"))
            tokenizer.save_pretrained(checkpoint)
            loaded = load_causal_lm(checkpoint, device=device)
        times["saved: write and load"] = t.seconds
        with Timer() as t:
            samples = [sample_batch(loaded, tokenizer, b, SAMPLES, args.new_tokens, seed=0) for b in batches]
        times["saved: sample"] = t.seconds
        flat = [(p, c) for b, cs in zip(batches, samples) for p, row in zip(b, cs) for c in row]
        with Timer() as t:
            before = sequence_kls(loaded, reference, [p["prompt_ids"] for p, _ in flat], [c["ids"] for _, c in flat],
                                  tokenizer.pad_token_id, args.batch * SAMPLES)[0]
        times["saved: KL pass"] = t.seconds

        with Timer() as t:
            copy = LiveCopy(EvalArguments(), device)
            copy.update(live)  # builds the resident model once (a run's first point)
        times["in memory: build the resident model (once a run)"] = t.seconds
        with Timer() as t:
            policy = copy.update(live).sampler
        times["in memory: copy the weights"] = t.seconds
        with Timer() as t:
            lockstep = [sample_batch(policy, tokenizer, b, SAMPLES, args.new_tokens, seed=0, kl_reference=reference)
                        for b in batches]
        times["in memory: sample with the KL in lockstep"] = t.seconds
        now = [c["kl_exact"] for cs in lockstep for row in cs for c in row]
        same = [c["ids"] for cs in samples for row in cs for c in row] == [c["ids"] for cs in lockstep for row in cs for c in row]
    saved = sum(v for k, v in times.items() if k.startswith("saved"))
    memory = times["in memory: copy the weights"] + times["in memory: sample with the KL in lockstep"]
    emit({"size": args.size, "prompts": args.prompts, "samples": SAMPLES, "new_tokens": args.new_tokens,
          "threads": torch.get_num_threads(), "seconds": {k: round(v, 3) for k, v in times.items()},
          "saved seconds a point": round(saved, 3), "in-memory seconds a point": round(memory, 3),
          "speed-up": round(saved / memory, 2), "same samples": same,
          "largest relative KL difference": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(now, before)),
          "mean KL": sum(before) / len(before)}, args.output)


if __name__ == "__main__":
    main()
