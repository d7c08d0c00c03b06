"""The Preferred-FT baseline: trained on the chosen completions only, and it makes them more likely."""

import torch

from helpers import sequence_log_probs
from imdb_dpo.manifests import read_manifest
from imdb_dpo.modeling import load_causal_lm
from imdb_dpo.pairs import read_pairs
from preferred_ft import IGNORED, chosen_examples


def test_examples_are_the_distinct_chosen_completions_with_the_prompt_masked():
    pairs = [{"prompt_ids": [5, 6], "chosen_ids": [7, 0], "rejected_ids": [8]},
             {"prompt_ids": [5, 6], "chosen_ids": [7, 0], "rejected_ids": [9, 9]},  # the same chosen, another pair
             {"prompt_ids": [5, 6], "chosen_ids": [8], "rejected_ids": [9, 9]},  # the middle of a ranking
             {"prompt_ids": [1], "chosen_ids": [0], "rejected_ids": [3]}]  # an empty completion: EOS alone
    dataset = chosen_examples(pairs)
    assert dataset["input_ids"] == [[5, 6, 7, 0], [5, 6, 8], [1, 0]]
    assert dataset["labels"] == [[IGNORED, IGNORED, 7, 0], [IGNORED, IGNORED, 8], [IGNORED, 0]]


@torch.no_grad()
def test_preferred_ft_raises_the_likelihood_of_the_chosen_completions(tiny_sft, tiny_pairs, tiny_run):
    run = tiny_run["root"] / "outputs/tiny/preferred_ft/preferred_ft"
    assert read_manifest(run)["finished"]
    examples = {(tuple(p["prompt_ids"]), tuple(p["chosen_ids"])) for p in read_pairs(tiny_pairs)}
    sample = sorted(examples)[::10]
    sft, tuned = load_causal_lm(tiny_sft), load_causal_lm(str(run))
    before = sum(sequence_log_probs(sft, list(p), list(c)).item() for p, c in sample) / len(sample)
    after = sum(sequence_log_probs(tuned, list(p), list(c)).item() for p, c in sample) / len(sample)
    assert after > before + 1.0, (before, after)
