"""The reward in bf16 against fp32: the same classifier, the same texts (real reviews cut to the length the pipeline
scores), scored by the project's `SentimentClassifierReward` at both precisions on one device.

    python benchmarks/bench_reward_precision.py --reviews ../shared/data/imdb --tokenizer ../shared/tokenizers/gpt2
    python benchmarks/bench_reward_precision.py --reviews imdb_test.jsonl --classifier siebert/sentiment-roberta-large-english

Without `--classifier` the classifier is a random-weight stand-in of siebert's shape (RoBERTa Large, `--size
gpt2-large`) on a tokenizer built from GPT-2's. Reported: mean and largest |reward_bf16 - reward_fp32|, the mean
rewards, and how often bf16 reorders two texts of a group of 4 (the pairs stage 2 would make from 4 samples),
with each precision's scoring time.
"""

import argparse
import itertools
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import Timer, emit  # noqa: E402
from benchmarks.stand_ins import build_classifier  # noqa: E402
from imdb_dpo.models.reward import SentimentClassifierReward  # noqa: E402

GROUP = 4  # samples per prompt in stage 2


def review_texts(path: str, count: int, characters: int) -> list[str]:
    """The first `count` reviews of a jsonl file (or of imdb_test.jsonl in a folder), each cut to `characters`."""
    if os.path.isdir(path):
        path = os.path.join(path, "imdb_test.jsonl")
    texts = []
    with open(path) as f:
        for line in f:
            texts.append(json.loads(line)["text"].replace("<br />", "\n")[:characters])
            if len(texts) == count:
                break
    return texts


def pair_flips(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of within-group pairs (i, j) whose order differs between the two scorings (ties count)."""
    flips = total = 0
    for start in range(0, len(a) - GROUP + 1, GROUP):
        for i, j in itertools.combinations(range(start, start + GROUP), 2):
            flips += np.sign(a[i] - a[j]) != np.sign(b[i] - b[j])
            total += 1
    return flips / total if total else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", required=True, help="a jsonl file of reviews, or a folder with imdb_test.jsonl")
    parser.add_argument("--classifier", help="a classifier to load (default: a random stand-in of siebert's shape)")
    parser.add_argument("--tokenizer", help="GPT-2's tokenizer folder, for the stand-in")
    parser.add_argument("--size", choices=["gpt2-large", "tiny"], default="gpt2-large", help="the stand-in's shape")
    parser.add_argument("--texts", type=int, default=None, help="texts to score (default 1,024 on a GPU, 64 on CPU)")
    parser.add_argument("--characters", type=int, default=300, help="each review cut to this many characters "
                        "(about the 72 tokens of a prompt and its completion)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--output")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = args.classifier
    if classifier is None:
        if not args.tokenizer:
            parser.error("--tokenizer (GPT-2's tokenizer folder) is needed for the stand-in; or pass --classifier")
        classifier = build_classifier(args.size, args.tokenizer, tempfile.mkdtemp(prefix="bench_reward_"), device)
    texts = review_texts(args.reviews, args.texts or (1024 if device == "cuda" else 64), args.characters)
    scores, seconds = {}, {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        reward = SentimentClassifierReward(classifier, batch_size=args.batch, device=device, dtype=dtype)
        reward(texts[: args.batch])  # warm-up
        with Timer() as timer:
            scores[name] = np.array(reward(texts))
        seconds[name] = timer.seconds
        del reward
    diff = np.abs(scores["bfloat16"] - scores["float32"])
    emit({"benchmark": "reward_precision", "classifier": args.classifier or f"random stand-in ({args.size} shape)",
          "texts": len(texts), "characters": args.characters, "mean_reward_fp32": float(scores["float32"].mean()),
          "mean_reward_bf16": float(scores["bfloat16"].mean()), "reward_std_fp32": float(scores["float32"].std()),
          "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
          "pair_order_flips": pair_flips(scores["float32"], scores["bfloat16"]),
          "seconds_fp32": seconds["float32"], "seconds_bf16": seconds["bfloat16"]}, args.output)


if __name__ == "__main__":
    main()
