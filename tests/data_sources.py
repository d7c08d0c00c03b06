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
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)


def _stop(what: str, missing: str, variable: str, hub: str) -> None:
    pytest.fail(f"{what} not found: neither {missing} (the team's ../shared; or set {variable}) nor {hub} in the "
                f"Hugging Face cache, and the hub could not be reached. On a machine with a network run "
                f"`python -c \"{hub_code(hub)}\"` once (it fills the cache), or point {variable} at a folder holding "
                "them", pytrace=False)


def hub_code(hub: str) -> str:
    if hub == "stanfordnlp/imdb":
        return "from datasets import load_dataset; load_dataset('stanfordnlp/imdb')"
    return "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('gpt2')"


def hub_reviews(folder, missing: str) -> dict:
    """A balanced sample of `stanfordnlp/imdb` (a seeded draw, the same every session) as imdb_<split>.jsonl."""
    from datasets import load_dataset

    for attempt in range(2):
        try:
            data = load_dataset("stanfordnlp/imdb")
            break
        except Exception:  # not in the cache: fetch once, then read the cache
            if attempt:
                _stop("The IMDb reviews", missing, "IMDB_SAMPLE_DIR", "stanfordnlp/imdb")
            _fetch(hub_code("stanfordnlp/imdb"))
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

    for attempt in range(2):
        try:
            AutoTokenizer.from_pretrained("gpt2").save_pretrained(folder)
            return str(folder)
        except Exception:
            if attempt:
                _stop("GPT-2's tokenizer", missing, "GPT2_TOKENIZER_DIR", "gpt2")
            _fetch(hub_code("gpt2"))
