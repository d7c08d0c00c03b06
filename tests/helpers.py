"""Independent computations the tests check the code against, and a wait for a running process."""

import time

import torch


@torch.no_grad()
def mean_token_nll(model, tokenizer, texts: list[str], max_length: int = 128) -> float:
    """Mean next-token negative log-likelihood over texts, computed here without the trainer."""
    total, count = 0.0, 0
    model.eval()
    for text in texts:
        ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt")["input_ids"][:, :max_length]
        logits = model(ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += ids.size(1) - 1
    return total / count


def state_dicts_equal(a, b) -> list[str]:
    """Names of parameters that differ between two models (empty when the weights are identical)."""
    sa, sb = a.state_dict(), b.state_dict()
    return [name for name in sa if not torch.equal(sa[name], sb[name])]


def sequence_log_probs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log pi(completion | prompt), summed over the completion tokens, one unpadded forward pass."""
    ids = torch.tensor([prompt_ids + completion_ids], device=model.device)
    logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids) :, None]).sum()


def wait_until(condition, proc, timeout: float = 300, interval: float = 0.02) -> None:
    """Poll `condition()` while `proc` (a Popen) runs; fail if it exits first or the timeout passes."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the process ended before the awaited moment"
        assert time.time() < deadline, f"nothing happened in {timeout} s"
        time.sleep(interval)


def build_gpt2_stand_in(out, tokenizer_dir: str, *, seed: int = 0, logit_scale: float = 1.0,
                        logit_shift: float = 0.0, eos_logit: float = 0.0) -> str:
    """A random-weight GPT-2 with gpt2-large's vocabulary (50,257), context (1,024) and tokenizer, saved with
    `save_pretrained` as a stand-in for gpt2-large.

    The head is untied so that two coordinates of the final layer norm can steer it exactly: one adds
    `logit_shift` to every logit (GPT-2's own logits sit near -100, where bf16's spacing is 0.5; a shift leaves
    the softmax unchanged), the other adds `eos_logit` to EOS only (a model that often ends a sample at once).
    `logit_scale` sharpens the next-token distributions the way a trained model's are."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        head, norm = model.lm_head.weight, model.transformer.ln_f
        head.mul_(logit_scale)
        for coordinate, column in ((0, torch.full_like(head[:, 0], logit_shift)),
                                   (1, torch.zeros_like(head[:, 1]).index_fill_(0, torch.tensor([tokenizer.eos_token_id]), eos_logit))):
            norm.weight[coordinate], norm.bias[coordinate] = 0.0, 1.0  # a constant 1 in this hidden coordinate
            head[:, coordinate] = column
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def held_out_vader_reward(tiny_base, tiny_sft, model_dir: str) -> float:
    """The mean VADER reward of `model_dir` on 64 held-out tiny prompts x 4 samples, sampled and scored here (not by
    a trainer or eval.py), with the same random numbers for every model."""
    from imdb_dpo.configuration.arguments import PairsArguments
    from imdb_dpo.data.reviews import load_reviews, make_prompts
    from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
    from imdb_dpo.models.reward import VaderReward
    from imdb_dpo.models.sampling import plan_batches, sample_batch

    tokenizer = load_tokenizer(tiny_sft)
    prompts = make_prompts(load_reviews(PairsArguments(train_file=tiny_base["train"], test_file=tiny_base["test"]),
                                        "test"), tokenizer, 64, "test")
    model, vader, rewards = load_causal_lm(model_dir), VaderReward(), []
    for b, batch in enumerate(plan_batches(prompts, 32)):
        samples = sample_batch(model, tokenizer, batch, 4, 48, seed=100 + b)
        rewards += vader([p["prompt"] + c["text"] for p, cs in zip(batch, samples) for c in cs])
    return sum(rewards) / len(rewards)
