"""Stage-2 sampling: the project's sampler against a plain `generate` loop with default settings.

    python benchmarks/bench_sampling.py --size gpt2-large --output sampling.json    # on a GPU

Both sample 4 completions of up to 64 tokens for prompts of 2-8 tokens. The plain loop is what a user writes
first: one prompt at a time, the model as loaded (fp32), generation defaults. The project batches length-sorted
prompts (left padding), each sample from a random stream of its own (imdb_dpo/models/sampling.py), in bf16 on a GPU.
Each is timed on a slice and projected to the paper's 25,000 prompts.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from benchmarks.common import SIZES, Timer, build_policy, emit, synthetic_prompts, word_tokenizer  # noqa: E402
from imdb_dpo.models.sampling import plan_batches, sample_batch  # noqa: E402

PAPER_PROMPTS, SAMPLES, NEW_TOKENS = 25_000, 4, 64


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--prompts", type=int, default=None, help="slice for the project sampler")
    parser.add_argument("--plain_prompts", type=int, default=None, help="slice for the plain loop")
    parser.add_argument("--batch", type=int, default=None, help="prompts per batch (x4 rows)")
    parser.add_argument("--output")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    n_project = args.prompts or (1024 if gpu else 32)
    n_plain = args.plain_prompts or (32 if gpu else 8)
    batch = args.batch or (256 if gpu else 16)
    model_dir = build_policy(args.size, tempfile.mkdtemp(prefix="bench_sampling_"))
    vocab = SIZES[args.size]["vocab_size"]
    tokenizer = word_tokenizer(vocab)
    tokenizer.padding_side = "left"
    prompts = synthetic_prompts(n_project, vocab)

    plain_model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    with Timer() as plain:
        for p in prompts[:n_plain]:
            ids = torch.tensor([p["prompt_ids"]], device=device)
            plain_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, num_return_sequences=SAMPLES,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=0)
    del plain_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if gpu else torch.float32,
                                                 attn_implementation="sdpa").to(device).eval()
    sample_batch(model, tokenizer, prompts[:batch], SAMPLES, NEW_TOKENS, seed=0)  # warm-up
    with Timer() as project:
        for b, chunk in enumerate(plan_batches(prompts, batch)):
            sample_batch(model, tokenizer, chunk, SAMPLES, NEW_TOKENS, seed=b)
    results = []
    for name, seconds, n in (("plain_generate_loop", plain.seconds, n_plain), ("project_sampler", project.seconds, n_project)):
        results.append({"variant": name, "prompts_timed": n, "seconds": seconds, "prompts_per_s": n / seconds,
                        "projected_25k_prompts_min": PAPER_PROMPTS / (n / seconds) / 60})
    emit({"benchmark": "sampling", "size": args.size, "batch_prompts": batch, "results": results,
          "speedup": results[1]["prompts_per_s"] / results[0]["prompts_per_s"]}, args.output)


if __name__ == "__main__":
    main()
