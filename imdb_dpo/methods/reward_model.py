"""A learned reward model (Bradley-Terry, TRL's RewardTrainer) on the pair file, and its score as a reward.

The DPO paper's PPO row optimises such a model (App. C.1: GPT-2 Large trained on the preference pairs, best
validation accuracy kept), not the true classifier: the gap between the two is where over-optimisation shows.

Prompts are split, not pairs: every pair of a validation prompt is held out, so a validation pair never shares
its prefix (and its sibling completions) with a training pair. The model reads the pairs' exact token ids,
prompt followed by completion; GPT-2 pads with EOS, so it scores the last token before any EOS, in training as
when it serves as a reward.
"""

import random

import torch
from datasets import Dataset

from ..pairs import PairFileError

CURVES = [
    ("loss", "Bradley-Terry loss"),
    (("accuracy", "eval_accuracy"), "pair accuracy (train / validation)"),
    ("margin", "score margin (chosen - rejected)"),
]


def prompt_key(pair: dict):
    return pair.get("prompt_id") or tuple(pair["prompt_ids"])


def split_by_prompt(pairs: list[dict], validation_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) pairs, with a seeded random `validation_fraction` of the distinct prompts held out whole:
    at least one prompt on each side (an error below two prompts)."""
    prompts = sorted(dict.fromkeys(prompt_key(p) for p in pairs), key=str)
    if len(prompts) < 2:
        raise PairFileError(f"{len(pairs)} pairs of {len(prompts)} prompt cannot be split into training and validation "
                            "prompts; use more pairs (max_train_pairs)")
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: min(len(prompts) - 1, max(1, round(validation_fraction * len(prompts))))])
    train = [p for p in pairs if prompt_key(p) not in held_out]
    return train, [p for p in pairs if prompt_key(p) in held_out]


def scored_sequences(pairs: list[dict]) -> Dataset:
    """RewardTrainer's pre-tokenised columns: `chosen_ids` and `rejected_ids` are the whole sequences it scores."""
    return Dataset.from_list([{"chosen_ids": p["prompt_ids"] + p["chosen_ids"],
                               "rejected_ids": p["prompt_ids"] + p["rejected_ids"]} for p in pairs])


def validation_accuracies(log_history: list[dict]) -> dict[int, float]:
    """{optimizer step: validation pair accuracy} of each evaluation in a run's log."""
    return {e["step"]: e["eval_accuracy"] for e in log_history if "eval_accuracy" in e}


class LearnedReward:
    """A reward_model.py output as a reward: its scalar score of prompt ids + completion ids (a logit, unbounded).

    `score(prompt_ids, completion_ids)` takes lists of id lists; called with keyword arguments it is an RLOO reward
    function (RLOO passes the data set's `prompt_ids` column and the sampled `completion_ids`)."""

    __name__ = "learned_reward"

    def __init__(self, path: str, device, dtype: torch.dtype = torch.float32, batch_size: int = 64):
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        self.pad = self.model.config.pad_token_id
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[float]:
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start: start + self.batch_size]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [self.pad] * (width - len(s)) for s in batch], device=self.model.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.model.device)
            scores += self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
        return scores

    def __call__(self, prompts=None, completions=None, completion_ids=None, prompt_ids=None, **kwargs) -> list[float]:
        return self.score(prompt_ids, completion_ids)
