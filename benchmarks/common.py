"""Shared pieces of the benchmarks: models of the real shapes with random weights (nothing is downloaded),
a word-level tokenizer with one token per word, IMDb-like synthetic prompts and completions, and timing."""

import json
import os
import platform
import random
import resource
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

from imdb_dpo.planning.costs import KNOWN_CONFIGS

# GPT-2 Large and RoBERTa Large (the siebert classifier's shape), from their published configs.
SIZES = {
    "gpt2-large": KNOWN_CONFIGS["gpt2-large"][1],
    "tiny": dict(n_embd=64, n_layer=2, n_head=2, vocab_size=2048, n_positions=256),
}
CLASSIFIER_SIZES = {
    "gpt2-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=50265),
    "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=2048),
}
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16 tensor-core peaks


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Token i is the word `w<i>`; token 0 is EOS. Text and ids map one to one, so TRL's text path and the
    project's id path see exactly the same token counts."""
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    return tokenizer


def build_device() -> str:
    """Where random weights are drawn: a GPU initialises GPT-2 Large's 774M weights in seconds, a CPU in tens."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_policy(size: str, directory: str, seed: int = 0) -> str:
    """A GPT-2 of the given shape with random weights, saved with its tokenizer; returns the directory."""
    torch.manual_seed(seed)
    config = GPT2Config(**SIZES[size], bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with torch.device(build_device()):
        GPT2LMHeadModel(config).save_pretrained(directory)
    word_tokenizer(config.vocab_size).save_pretrained(directory)
    return directory


def build_classifier(size: str, directory: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    config = RobertaConfig(**CLASSIFIER_SIZES[size], num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                           label2id={"NEGATIVE": 0, "POSITIVE": 1}, max_position_embeddings=514, pad_token_id=0,
                           bos_token_id=0, eos_token_id=0)
    with torch.device(build_device()):
        RobertaForSequenceClassification(config).save_pretrained(directory)
    word_tokenizer(config.vocab_size).save_pretrained(directory)
    return directory


def synthetic_prompts(n: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """Prompts of 2-8 tokens, as in the paper's IMDb prefixes."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        ids = [rng.randrange(1, vocab_size) for _ in range(rng.randint(2, 8))]
        prompts.append({"prompt_id": f"p{i}", "prompt_ids": ids, "prompt": " ".join(f"w{t}" for t in ids)})
    return prompts


def synthetic_pairs(n: int, vocab_size: int, completion_tokens: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = []
    for p in synthetic_prompts(n, vocab_size, seed):
        chosen = [rng.randrange(1, vocab_size) for _ in range(completion_tokens)]
        rejected = [rng.randrange(1, vocab_size) for _ in range(completion_tokens)]
        pairs.append({**p, "chosen_ids": chosen, "rejected_ids": rejected,
                      "chosen": " " + " ".join(f"w{t}" for t in chosen), "rejected": " " + " ".join(f"w{t}" for t in rejected)})
    return pairs


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.seconds = time.perf_counter() - self.start


def emit(result: dict, path: str | None) -> None:
    result = {"device": device_name(), "date": time.strftime("%Y-%m-%d"), **result}
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
