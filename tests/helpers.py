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
