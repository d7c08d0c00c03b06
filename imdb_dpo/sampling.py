"""Batched sampling from a causal LM, reproducible batch by batch.

Prompts are sorted by length and cut into batches once, for the whole run; batch `b` is sampled with
the RNG seeded from `(seed, b)`. Whichever process, shard or restart samples a batch, it gets the same
completions, which is what makes shards mergeable and restarts exact.
"""

import torch


def plan_batches(prompts: list[dict], batch_size: int) -> list[list[dict]]:
    """Length-sorted batches (ties keep prompt order), so a batch needs little or no padding."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]["prompt_ids"]), i))
    return [[prompts[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def batch_seed(seed: int, batch_index: int) -> int:
    return seed * 1_000_003 + batch_index


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


@torch.no_grad()
def sample_batch(model, tokenizer, batch: list[dict], num_samples: int, max_new_tokens: int, seed: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> list[list[dict]]:
    """`num_samples` completions for each prompt of `batch`: token ids (cut after the first EOS), text and
    `finish` ('eos' when the model ended the text, 'length' when it hit `max_new_tokens`)."""
    torch.manual_seed(seed)
    input_ids, attention_mask = left_pad([p["prompt_ids"] for p in batch], tokenizer.pad_token_id)
    device = model.device
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=True,
        temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
        num_return_sequences=num_samples, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    generated = output[:, input_ids.size(1) :].tolist()
    return [[completion(row, tokenizer) for row in generated[p * num_samples : (p + 1) * num_samples]]
            for p in range(len(batch))]


def completion(generated: list[int], tokenizer) -> dict:
    """A sampled row as the pipeline stores it: ids cut after the first EOS, `finish`, and the decoded text.

    The text may be "" (the first token was EOS), whitespace, or end in U+FFFD (the length cap cut a multi-byte
    character); the ids are the sample, the text is for people and the reward model."""
    eos = tokenizer.eos_token_id
    ids = generated[: generated.index(eos) + 1] if eos in generated else generated
    finish = "eos" if ids and ids[-1] == eos else "length"
    text = tokenizer.decode(ids[:-1] if finish == "eos" else ids, skip_special_tokens=True)
    return {"ids": ids, "text": text, "finish": finish}
