"""Batched sampling from a causal LM in which every sample has a random stream of its own.

Sample `s` of a prompt draws its tokens from uniforms seeded by `(seed, the prompt's id and tokens, s)` alone, and
each token is the inverse CDF of the (temperature-, top-k- and top-p-adjusted) next-token distribution at its
uniform. So a sample does not depend on which batch, batch size, shard, process or restart samples it (batch size
is a performance knob, never a setting), and every model sampled on a prompt gets the same random numbers: the
comparisons between models are paired (common random numbers), and two equal models give equal samples.

One-process, multi-process, sharded and resumed runs sample the same batches (see `remaining_batches`), so their
files are byte-identical on the CPU at one thread count. At another batch size the same samples are drawn but for
rounding: a row's logits computed in a batch of another shape or padding (or with another thread count) can differ
in the last bits, which moves a token where its uniform lies that close to a boundary of the distribution. That is
rare: in the tiny evaluation, one sample in about 400 to 1,500 moved.
"""

import hashlib
import json

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

# Recorded in the settings of what is sampled: samples drawn by another scheme are never mixed with these.
SAMPLER = "per-sample streams, inverse CDF (float64)"


def plan_batches(prompts: list[dict], batch_size: int) -> list[list[dict]]:
    """Length-sorted batches (ties keep prompt order), so a batch needs little or no padding. (Batches of one length
    alone, with no padding at all, made the tiny evaluation 60% slower on the CPU: 7 batches where 1 did.)"""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]["prompt_ids"]), i))
    return [[prompts[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def remaining_batches(log, prompts: list[dict], key: str, batch_size: int, rank: int = 0,
                      world: int = 1) -> list[tuple[int, list[dict]]]:
    """The batches of the plan over all `prompts` that fall to process (or shard) `rank` of `world`, every world-th
    one, less the prompts `log` (a BatchLog) holds: a sharded or multi-process run samples exactly the batches of a
    one-process run, and a rerun at the same batch size only the batches a stop or a kill left. At another batch
    size, what is left is sampled in batches numbered after the log's (the samples do not depend on the batching;
    computed in batches of another shape, a rare token can differ in the last bits' rounding: see above)."""
    plan = plan_batches(prompts, batch_size)
    logged: dict[int, set] = {}
    for record in log.records:
        logged.setdefault(record["batch"], set()).add(record[key])
    same_plan = all(b < len(plan) and keys <= {p[key] for p in plan[b]} for b, keys in logged.items())
    offset = 0 if same_plan else (max(logged) // world + 1) * world
    done = set().union(*logged.values())
    return [(offset + b, todo) for b, batch in enumerate(plan) if b % world == rank
            for todo in [[p for p in batch if p[key] not in done]] if todo]


def sample_stream(seed: int, prompt: dict, sample: int, steps: int) -> torch.Tensor:
    """The uniforms of one sample: `steps` float64 values in [0, 1), from a generator of its own."""
    key = json.dumps([seed, prompt["prompt_id"], prompt["prompt_ids"], sample]).encode()
    generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
    return torch.rand(steps, generator=generator, dtype=torch.float64)


class InverseCDFSampling(LogitsProcessor):
    """Picks each row's next token by its own uniform and leaves only that token possible, so that greedy decoding
    emits it. Runs after the model's own processors, applying temperature, top-k and top-p as sampling would."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_k: int, top_p: float,
                 kl=None):
        self.uniforms, self.prompt_width, self.kl = uniforms, prompt_width, kl
        self.warpers = LogitsProcessorList(
            ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
            + ([TopKLogitsWarper(top_k)] if top_k > 0 else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = self.warpers(input_ids, scores)
        cdf = torch.softmax(warped.double(), dim=-1).cumsum_(dim=-1)
        step = input_ids.size(1) - self.prompt_width
        target = self.uniforms[:, step].unsqueeze(1) * cdf[:, -1:]
        token = torch.searchsorted(cdf, target, right=True)  # the first token whose CDF passes the target
        # The target is below the total but for rounding; then take the mode, which has mass for sure.
        token = torch.where(token < cdf.size(1), token, warped.argmax(dim=-1, keepdim=True))
        if self.kl is not None:  # the policy's own distribution, before temperature, top-k and top-p
            self.kl.step(input_ids, scores, token)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


@torch.no_grad()
def sample_batch(model, tokenizer, batch: list[dict], num_samples: int, max_new_tokens: int, seed: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, kl_reference=None) -> list[list[dict]]:
    """`num_samples` completions for each prompt of `batch` (each prompt needs `prompt_id` and `prompt_ids`): token
    ids (cut after the first EOS), text and `finish` ('eos' when the model ended the text, 'length' when it hit
    `max_new_tokens`). Sample `s` of a prompt is the same in any batch: see the module's docstring.

    With `kl_reference`, each completion also has `kl_exact` and `kl_logratio` against that model, summed as it is
    sampled (imdb_dpo/evaluation/kl.py, LockstepKL)."""
    # Each prompt repeated once per sample (greedy decoding has no num_return_sequences), prompt-major like the streams.
    input_ids, attention_mask = left_pad([p["prompt_ids"] for p in batch for _ in range(num_samples)],
                                         tokenizer.pad_token_id)
    device = model.device
    uniforms = torch.stack([sample_stream(seed, p, s, max_new_tokens) for p in batch for s in range(num_samples)])
    kl = None
    if kl_reference is not None:
        from imdb_dpo.evaluation.kl import LockstepKL

        kl = LockstepKL(kl_reference, input_ids.to(device), attention_mask.to(device), tokenizer.eos_token_id)
    sampler = InverseCDFSampling(uniforms.to(device), input_ids.size(1), temperature, top_k, top_p, kl)
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=False,
        logits_processor=LogitsProcessorList([sampler]), max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, temperature=None, top_k=None, top_p=None,
    )
    rows = [completion(row, tokenizer) for row in output[:, input_ids.size(1) :].tolist()]
    if kl is not None:
        for row, exact, ratio in zip(rows, *kl.result()):
            row.update(kl_exact=exact, kl_logratio=ratio)
    return [rows[p * num_samples : (p + 1) * num_samples] for p in range(len(batch))]


def completion(generated: list[int], tokenizer) -> dict:
    """A sampled row as the pipeline stores it: ids cut after the first EOS, `finish`, and the decoded text.

    The text may be "" (the first token was EOS), whitespace, or end in U+FFFD (the length cap cut a multi-byte
    character); the ids are the sample, the text is for people and the reward model."""
    eos = tokenizer.eos_token_id
    ids = generated[: generated.index(eos) + 1] if eos in generated else generated
    finish = "eos" if ids and ids[-1] == eos else "length"
    text = tokenizer.decode(ids[:-1] if finish == "eos" else ids, skip_special_tokens=True)
    return {"ids": ids, "text": text, "finish": finish}
