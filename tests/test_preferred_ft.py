"""The Preferred-FT baseline: trained on the chosen completions only, and it makes them more likely."""

import torch

from helpers import sequence_log_probs
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.models.modeling import load_causal_lm
from imdb_dpo.data.pairs import read_pairs
from imdb_dpo.methods.preferred_ft import IGNORED, chosen_examples


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
    manifest = read_manifest(run)
    assert manifest["finished"]
    trained = chosen_examples(read_pairs(tiny_pairs), manifest["config"]["script"]["max_train_examples"])
    sft, tuned = load_causal_lm(tiny_sft), load_causal_lm(str(run))
    gains = []
    for example in trained:
        start = example["labels"].count(IGNORED)
        prompt, completion = example["input_ids"][:start], example["input_ids"][start:]
        gains.append((sequence_log_probs(tuned, prompt, completion) - sequence_log_probs(sft, prompt, completion)).item())
    gains = torch.tensor(gains)
    # The chosen completions are the SFT model's own samples, so the gain per completion is small, but it is
    # many standard errors above zero.
    assert gains.mean() > 0.2 and gains.mean() > 3 * gains.std() / len(gains) ** 0.5, (gains.mean(), gains.std())
