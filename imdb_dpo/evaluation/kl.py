"""Sequence-level KL(pi || pi_ref) of sampled completions, by two estimators on the sampled token ids.

For a completion y of prompt x sampled from pi (temperature 1):
    exact:     sum_t KL(pi(.|x, y<t) || pi_ref(.|x, y<t))   (full next-token distributions, low variance)
    log-ratio: sum_t log pi(y_t|x, y<t) - log pi_ref(y_t|x, y<t)   (unbiased, one sample per position)
Both expectations equal the sequence KL; the exact one is the analytic inner expectation of the other.

Precision: take both from fp32 (or wider) logits. GPT-2's logits sit near -100, where bf16's spacing is 0.5;
rounding the two models' logits independently adds about Var(rounding error) * (1 - sum p^2) per token, a
bias of ~+0.3 to 1 nat on 50-token samples whose KL is far smaller. A per-token exact KL is >= 0 in exact
arithmetic, so a tiny negative value is float rounding and is clamped to 0; the per-token log-ratio is
legitimately negative and is left as it is.
"""

import torch


def _pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    sequences = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    completion = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (p, s) in enumerate(zip(prompt_ids, sequences)):
        ids[row, : len(s)] = torch.tensor(s)
        attention[row, : len(s)] = 1
        completion[row, len(p) : len(s)] = True
    return ids, attention, completion


def token_kls(policy_logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor):
    """Per position: the exact KL of the two next-token distributions (clamped at 0: see above) and the log-ratio at
    the token that followed (`targets`, the logits' shape without the vocabulary)."""
    logp = torch.log_softmax(policy_logits.float(), -1)
    logq = torch.log_softmax(reference_logits.float(), -1)
    exact = (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)
    return exact, (logp - logq).gather(-1, targets[..., None])[..., 0]


@torch.no_grad()
def sequence_kls(policy, reference, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                 batch_size: int = 32) -> tuple[list[float], list[float]]:
    """(exact, log-ratio) KL estimates, one per completion. `reference=None` means the policy is the reference."""
    if reference is None:  # KL(pi || pi) = 0 exactly: no forward pass
        return [0.0] * len(prompt_ids), [0.0] * len(prompt_ids)
    exact, log_ratio = [], []
    for start in range(0, len(prompt_ids), batch_size):
        ids, attention, completion = _pack(prompt_ids[start : start + batch_size],
                                           completion_ids[start : start + batch_size], pad_id)
        ids, attention = ids.to(policy.device), attention.to(policy.device)
        # Position t-1 predicts token t: shift so each generated token lines up with its distribution.
        targets, mask = ids[:, 1:], completion[:, 1:].to(policy.device)
        per_token_exact, per_token_ratio = token_kls(policy(input_ids=ids, attention_mask=attention).logits[:, :-1],
                                                     reference(input_ids=ids, attention_mask=attention).logits[:, :-1],
                                                     targets)
        exact += (per_token_exact * mask).sum(-1).tolist()
        log_ratio += (per_token_ratio * mask).sum(-1).tolist()
    return exact, log_ratio


class LockstepKL:
    """Both estimates of each row that `sample_batch` samples, summed while it samples: no second pass of the policy.

    generate() has already computed the policy's next-token logits at every sampled position (in float32); here the
    reference decodes the same tokens in lockstep, with a KV cache of its own and the positions generate() gives a
    left-padded row, and each step's per-token terms are added for the rows that have not yet ended (EOS). The sums
    are those of `sequence_kls` over the same tokens, but for the rounding of cached against full-sequence attention.
    It needs the policy's logits in the KL's precision: the evaluation uses it only where sampling_dtype is kl_dtype.
    """

    def __init__(self, reference, input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_token_id: int):
        from imdb_dpo.models.modeling import padded_positions

        self.reference, self.eos = reference, eos_token_id
        self.prompt_width = input_ids.size(1)
        self.mask, self.positions = attention_mask, padded_positions(attention_mask)
        self.cache = None
        rows = input_ids.size(0)
        self.alive = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        self.exact = torch.zeros(rows, dtype=torch.float64, device=input_ids.device)
        self.log_ratio = torch.zeros(rows, dtype=torch.float64, device=input_ids.device)

    def step(self, input_ids: torch.Tensor, policy_logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """One decode step: `policy_logits` predicted `tokens` (one a row) after `input_ids`."""
        if input_ids.size(1) == self.prompt_width:  # the prompt, whole
            ids, positions = input_ids, self.positions
        else:  # the token sampled at the step before, as generate() attends to it
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.size(0), 1))], dim=1)
            self.positions = self.positions[:, -1:] + 1
            ids, positions = input_ids[:, -1:], self.positions
        output = self.reference(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                                past_key_values=self.cache, use_cache=True)
        self.cache = output.past_key_values
        exact, ratio = token_kls(policy_logits, output.logits[:, -1], tokens[:, 0])
        self.exact += torch.where(self.alive, exact, 0.0).double()
        self.log_ratio += torch.where(self.alive, ratio, 0.0).double()
        self.alive &= tokens[:, 0] != self.eos

    def result(self) -> tuple[list[float], list[float]]:
        return self.exact.tolist(), self.log_ratio.tolist()
