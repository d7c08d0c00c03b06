"""Ranked completions to preference pairs, and the validating reader that `dpo.py` uses.

A pair file is JSONL in TRL's standard preference format (`prompt`, `chosen`, `rejected`, so
`load_dataset("json", ...)` reads it) plus the rewards, the prompt id and the exact token ids that were
sampled (`prompt_ids`, `chosen_ids`, `rejected_ids`; a completion's ids end with EOS only when the model
ended it).

A completion *is* its token ids; its text is their decoding, kept for people and for the reward model. So
every sample a model can produce is valid: a completion whose first token is EOS (ids `[eos]`, text ""),
whitespace-only text, text ending in U+FFFD where the length cap cut a multi-byte character. Pairs are
compared by ids. Two completions with the same text never make a pair, even when their ids differ (two
tokenisations of one string, or two different cut characters that both decode to U+FFFD): the reward model
reads only the text, so a reward gap between them is scoring noise, not a preference. Ties never make a pair.
"""

import itertools
import json
import math
import os

from imdb_dpo.configuration.errors import UserError
from imdb_dpo.lifecycle.manifests import file_sha256, read_manifest, write_text_atomic

PAIRING_MODES = ("all", "best_vs_worst")
REQUIRED_TEXT = ("prompt", "chosen", "rejected")
REQUIRED_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")
REQUIRED_NUMBERS = ("chosen_reward", "rejected_reward")


class PairFileError(UserError, ValueError):
    """A pair file that DPO must not train on; the message names the file, the line and the field."""


def rank(rewards: list[float]) -> list[int]:
    """Completion indices from the highest reward to the lowest (ties keep sampling order)."""
    return sorted(range(len(rewards)), key=lambda i: -rewards[i])


def make_pairs(record: dict, mode: str = "all", min_margin: float = 0.0) -> list[dict]:
    """Pairs of one prompt's ranked completions: every pair with a reward gap above `min_margin`
    (K samples give up to K(K-1)/2 pairs), or only the best against the worst."""
    if mode not in PAIRING_MODES:
        raise ValueError(f"pairing={mode!r}: use one of {PAIRING_MODES}")
    completions, order = record["completions"], record["ranking"]
    candidates = itertools.combinations(order, 2) if mode == "all" else [(order[0], order[-1])]
    pairs = []
    for better, worse in candidates:
        chosen, rejected = completions[better], completions[worse]
        if chosen["reward"] - rejected["reward"] <= min_margin or chosen["reward"] == rejected["reward"]:
            continue
        if chosen["text"] == rejected["text"]:  # one string: the reward gap is noise (module docstring)
            continue
        pairs.append({
            "prompt_id": record["prompt_id"], "prompt": record["prompt"], "prompt_ids": record["prompt_ids"],
            "chosen": chosen["text"], "rejected": rejected["text"],
            "chosen_ids": chosen["ids"], "rejected_ids": rejected["ids"],
            "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"],
            "chosen_finish": chosen["finish"], "rejected_finish": rejected["finish"],
        })
    return pairs


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(i) is int and i >= 0 for i in value)


def _check_pair(pair, where: str) -> None:
    if not isinstance(pair, dict):
        raise PairFileError(f"{where}: expected a JSON object, got {type(pair).__name__}")
    for field in REQUIRED_TEXT + REQUIRED_IDS + REQUIRED_NUMBERS:
        if field not in pair:
            raise PairFileError(f"{where}: missing field {field!r}")
    for field in REQUIRED_TEXT:  # may be "" or whitespace: an empty completion is a real sample
        if not isinstance(pair[field], str):
            raise PairFileError(f"{where}: field {field!r} must be a string (it may be empty)")
    for field in REQUIRED_IDS:
        if not _is_token_ids(pair[field]):
            raise PairFileError(f"{where}: field {field!r} must be a non-empty list of token ids "
                                "(a completion that ended at once is [eos])")
    for field in REQUIRED_NUMBERS:
        if type(pair[field]) not in (int, float) or not math.isfinite(pair[field]):
            raise PairFileError(f"{where}: field {field!r} must be a finite number")
    if pair["chosen_ids"] == pair["rejected_ids"]:
        raise PairFileError(f"{where}: fields 'chosen_ids' and 'rejected_ids' are the same completion")
    if not pair["chosen_reward"] > pair["rejected_reward"]:
        raise PairFileError(f"{where}: chosen_reward ({pair['chosen_reward']}) must exceed rejected_reward "
                            f"({pair['rejected_reward']}); ties never make a pair")


def write_pairs(path: str, pairs: list[dict]) -> None:
    """The pair file, written atomically (JSON escapes U+FFFD and control characters, so every text survives)."""
    write_text_atomic(path, "".join(json.dumps(p, sort_keys=True) + "\n" for p in pairs))


def json_lines(path: str, error: type, changed: str):
    """(`<path>, line <n>`, the line's JSON value) of each line of a finished JSONL file; a line that is not UTF-8
    JSON raises `error` naming the file, the line and `changed` (what to do about it)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise error(f"{where}: not UTF-8 text (byte {e.start}); {changed}") from None
            except json.JSONDecodeError as e:
                cut = " (the line is cut short)" if not line.endswith(b"\n") else ""
                raise error(f"{where}: not valid JSON ({e.msg}, column {e.colno}){cut}; {changed}") from None
            yield where, value


def read_pairs(path: str) -> list[dict]:
    """Every pair of `path`, validated; the file must come from a finished pair-generation run."""
    if os.path.isdir(path):
        inside = os.path.join(path, "pairs.jsonl")
        hint = f": did you mean {inside}?" if os.path.isfile(inside) else " (preference_pairs.py writes pairs.jsonl)"
        raise PairFileError(f"{path}: a folder, not a pair file; pairs_file names the file itself{hint}")
    if not os.path.isfile(path):
        raise PairFileError(f"{path}: pair file not found; run preference_pairs.py first or fix pairs_file")
    manifest = read_manifest(os.path.dirname(os.path.abspath(path)))
    if not manifest or not manifest.get("finished"):
        raise PairFileError(
            f"{path}: comes from an unfinished run (no finished manifest.json beside it); "
            "finish preference_pairs.py (or merge its shards) first"
        )
    changed = ("the file was changed since its run finished: restore it, or generate the pairs again "
               "(preference_pairs.py --overwrite true)")
    pairs = []
    for where, pair in json_lines(path, PairFileError, changed):
        _check_pair(pair, where)
        pairs.append(pair)
    recorded = manifest.get("num_pairs")
    if recorded is not None and recorded != len(pairs):
        raise PairFileError(f"{path}: holds {len(pairs)} pairs, but the run that wrote it recorded {recorded}; {changed}")
    if manifest.get("pairs_sha256") not in (None, file_sha256(path)):  # e.g. a pair's chosen and rejected swapped
        raise PairFileError(f"{path}: its content differs from what the run that wrote it recorded (SHA-256); {changed}")
    if not pairs:
        raise PairFileError(f"{path}: no pairs; generate more prompts or lower min_reward_margin")
    return pairs
