"""The real inputs of the tests where ../shared is not beside the clone: IMDb reviews and GPT-2's tokenizer from the
Hugging Face cache, fetched once from the hub where a network exists, or a stop that says how to get them."""

import json
import os
import subprocess
import sys

import pytest

SAMPLE = {"train": 5_000, "test": 1_000}  # as ../shared/data/imdb: balanced, 1 = positive


def _fetch(code: str) -> None:
    """Run `code` with the hub reachable (the suite itself runs offline), to fill the Hugging Face cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    try:
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        pass  # the cache is read once more, and the tests stop with the message if it still lacks the data


def _stop(what: str, files: str, missing: str, variable: str, hub: str) -> None:
    pytest.fail(f"{what} not found: neither {files} in {missing} (the team's ../shared; or set {variable} to a folder "
                f"holding them) nor {hub} in the Hugging Face cache, and the hub could not be reached. On a machine "
                f"with a network run `python -c \"{hub_code(hub)}\"` once (it fills the cache)", pytrace=False)


def _from_cache(load, hub: str):
    """`load()` from the Hugging Face cache; where the cache lacks it, once more after fetching it from the hub;
    None where neither works."""
    for attempt in range(2):
        try:
            return load()
        except Exception:  # not in the cache (the suite runs offline)
            if attempt:
                return None
        _fetch(hub_code(hub))


def hub_code(hub: str) -> str:
    if hub == "stanfordnlp/imdb":
        return "from datasets import load_dataset; load_dataset('stanfordnlp/imdb')"
    return "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('gpt2')"


def hub_reviews(folder, missing: str) -> dict:
    """A balanced sample of `stanfordnlp/imdb` (a seeded draw, the same every session) as imdb_<split>.jsonl."""
    from datasets import load_dataset

    data = _from_cache(lambda: load_dataset("stanfordnlp/imdb"), "stanfordnlp/imdb")
    if data is None:
        _stop("The IMDb reviews", "imdb_train.jsonl and imdb_test.jsonl", missing, "IMDB_SAMPLE_DIR",
              "stanfordnlp/imdb")
    paths = {}
    for split, size in SAMPLE.items():
        rows = data[split].shuffle(seed=0)
        chosen = [r for label in (0, 1) for r in rows.filter(lambda r: r["label"] == label).select(range(size // 2))]
        paths[split] = os.path.join(folder, f"imdb_{split}.jsonl")
        with open(paths[split], "w") as f:
            f.writelines(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in chosen)
    return paths


def hub_tokenizer(folder, missing: str) -> str:
    from transformers import AutoTokenizer

    tokenizer = _from_cache(lambda: AutoTokenizer.from_pretrained("gpt2"), "gpt2")
    if tokenizer is None:
        _stop("GPT-2's tokenizer", "vocab.json and merges.txt", missing, "GPT2_TOKENIZER_DIR", "gpt2")
    tokenizer.save_pretrained(folder)
    return str(folder)
