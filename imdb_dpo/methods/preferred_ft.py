"""Preferred-FT (the DPO paper's simplest baseline): supervised fine-tuning on the chosen completions."""

from datasets import Dataset

CURVES = [("loss", "loss on the chosen completions"), ("mean_token_accuracy", "token accuracy")]
IGNORED = -100  # a label the loss skips


def chosen_examples(pairs: list[dict], limit: int | None = None) -> Dataset:
    """Each distinct (prompt, chosen completion) once, in file order, as token ids with the prompt masked out of
    the labels."""
    examples = {}
    for pair in pairs:
        key = (tuple(pair["prompt_ids"]), tuple(pair["chosen_ids"]))
        examples.setdefault(key, {"input_ids": pair["prompt_ids"] + pair["chosen_ids"],
                                  "labels": [IGNORED] * len(pair["prompt_ids"]) + pair["chosen_ids"]})
    return Dataset.from_list(list(examples.values())[:limit])
