"""The sampler: each sample's own random stream draws from the model's distribution (temperature, top-k and top-p
applied as sampling does), and a sample is the same in any batch, beside any other prompts, for any number of
samples, and for any model equal to the one sampled."""

import collections
import shutil

import pytest
import torch

from imdb_dpo.configuration.arguments import PairsArguments
from imdb_dpo.data.reviews import load_reviews, make_prompts
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.models.sampling import plan_batches, sample_batch


@pytest.fixture(scope="module")
def setup(tiny_base, tiny_sft):
    tokenizer = load_tokenizer(tiny_sft)
    args = PairsArguments(train_file=tiny_base["train"], test_file=tiny_base["test"])
    return {"model": load_causal_lm(tiny_sft), "tokenizer": tokenizer,
            "prompts": make_prompts(load_reviews(args, "test"), tokenizer, 30, "test")}


def ids_by_prompt(model, tokenizer, prompts, batch_size, num_samples=4, seed=0, **kw):
    out = {}
    for batch in plan_batches(prompts, batch_size):
        for p, cs in zip(batch, sample_batch(model, tokenizer, batch, num_samples, 24, seed, **kw)):
            out[p["prompt_id"]] = [c["ids"] for c in cs]
    return out


def differing(a: dict, b: dict) -> int:
    """Samples (of the prompts in `b`) that differ between two samplings."""
    return sum(x != y for k in b for x, y in zip(a[k], b[k]))  # b may hold fewer samples a prompt


def test_a_sample_is_the_same_in_any_batch_and_for_any_number_of_samples(setup):
    """Batches of another shape or padding may round a logit differently in the last bits, which moves a token only
    where its uniform lies that close to a boundary: at most two samples of the 120 may differ."""
    model, tokenizer, prompts = setup["model"], setup["tokenizer"], setup["prompts"]
    whole = ids_by_prompt(model, tokenizer, prompts, 30)
    assert ids_by_prompt(model, tokenizer, prompts, 30) == whole  # the same batches: exactly
    assert differing(whole, ids_by_prompt(model, tokenizer, prompts, 7)) <= 2
    assert differing(whole, ids_by_prompt(model, tokenizer, prompts[::-3], 1)) <= 2
    assert differing(whole, ids_by_prompt(model, tokenizer, prompts, 30, num_samples=2)) <= 2
    assert differing(whole, ids_by_prompt(model, tokenizer, prompts, 30, seed=1)) > 100  # another seed: new samples


def test_equal_models_give_equal_samples_and_another_model_other_ones(setup, tiny_sft, tiny_dpo, tmp_path):
    """Common random numbers: the streams belong to the prompts, not to the model."""
    shutil.copytree(tiny_sft, tmp_path / "copy")
    prompts, tokenizer = setup["prompts"], setup["tokenizer"]
    same = ids_by_prompt(load_causal_lm(str(tmp_path / "copy")), tokenizer, prompts, 30)
    assert same == ids_by_prompt(setup["model"], tokenizer, prompts, 30)
    assert differing(same, ids_by_prompt(load_causal_lm(tiny_dpo), tokenizer, prompts, 30)) > 60


def first_token_frequencies(setup, n, **kw):
    prompt = setup["prompts"][0]
    samples = sample_batch(setup["model"], setup["tokenizer"], [prompt], n, 1, seed=3, **kw)[0]
    counts = collections.Counter(c["ids"][0] for c in samples)
    with torch.no_grad():
        logits = setup["model"](torch.tensor([prompt["prompt_ids"]])).logits[0, -1].double()
    return counts, logits


def test_first_tokens_follow_the_models_distribution_at_a_temperature(setup):
    n, temperature = 4000, 3.0  # a flat distribution: many tokens are drawn
    counts, logits = first_token_frequencies(setup, n, temperature=temperature)
    probs = torch.softmax(logits / temperature, dim=-1)
    top = probs.argsort(descending=True)[:20].tolist()
    assert len(counts) > 20
    for token in top:  # each frequency within 4.5 binomial standard deviations of its probability
        p = probs[token].item()
        assert abs(counts[token] / n - p) < 4.5 * (p * (1 - p) / n) ** 0.5 + 1e-9, (token, counts[token] / n, p)
    rest = 1 - probs[top].sum().item()
    drawn_rest = 1 - sum(counts[t] for t in top) / n
    assert abs(drawn_rest - rest) < 4.5 * (rest * (1 - rest) / n) ** 0.5


def test_top_k_and_top_p_draw_only_from_their_tokens(setup):
    counts, logits = first_token_frequencies(setup, 2000, temperature=3.0, top_k=5)
    assert set(counts) <= set(logits.topk(5).indices.tolist()) and len(counts) == 5
    counts, logits = first_token_frequencies(setup, 2000, temperature=3.0, top_p=0.5)
    probs = torch.softmax(logits / 3.0, dim=-1)
    order = probs.argsort(descending=True)
    nucleus = order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist()  # the smallest set reaching 0.5
    assert set(counts) <= set(nucleus) and len(counts) > 1
