"""What the project adds to TRL's RLOOTrainer: the pair file's exact prompt ids and stage 2's reward.

RLOO (REINFORCE leave-one-out) maximises reward - beta * KL(policy || reference), the objective PPO maximises in
the DPO paper's IMDb experiment; PPO itself is gone from TRL.
"""

from datasets import Dataset
from trl import RLOOTrainer

from ..generation_copy import SamplesFromCopy
from ..modeling import padded_positions

# What training_curves.png shows for an RLOO run: (logged key or keys, panel title).
RLOO_CURVES = [
    ("loss", "RLOO loss"),
    ("reward", "mean reward of the sampled completions"),
    ("kl", "KL to the reference (log-ratio, per token)"),
    ("completions/mean_length", "mean completion length"),
]


def run_name(kl_coef: float, use_peft: bool = False, method: str = "rloo") -> str:
    """e.g. `rloo_kl0.05` (or `rloo_rm_kl0.05` on a learned reward): the method and its KL coefficient at a glance,
    apart from every other method's run names."""
    return f"{method}_kl{kl_coef:g}" + ("_lora" if use_peft else "")


def prompts_of_pairs(pairs: list[dict], limit: int | None = None) -> Dataset:
    """Each prompt of a pair file once, in file order: its text (for the reward model) and its sampled ids."""
    prompts = {}
    for pair in pairs:
        prompts.setdefault(pair.get("prompt_id") or tuple(pair["prompt_ids"]),
                           {"prompt": pair["prompt"], "prompt_ids": pair["prompt_ids"]})
    rows = list(prompts.values())[:limit]
    return Dataset.from_list(rows)


class SentimentReward:
    """RLOO's reward function: stage 2's reward (the classifier's positive-label probability, or VADER) of the
    prompt followed by the completion, the text the pairs were ranked on.

    TRL would score a reward *model* with `logits[:, 0]` (or load it with num_labels=1): for siebert that is the
    NEGATIVE logit. A function of the text avoids both."""

    __name__ = "sentiment"

    def __init__(self, reward):
        self.reward = reward

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        return self.reward([p + c for p, c in zip(prompts, completions, strict=True)])


class PositionedModel:
    """Calls the model with position ids counted from each row's first real token where the caller gives none."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        if kwargs.get("position_ids") is None and kwargs.get("attention_mask") is not None:
            kwargs["position_ids"] = padded_positions(kwargs["attention_mask"])
        return self.model(*args, **kwargs)


class PretokenizedRLOOTrainer(SamplesFromCopy, RLOOTrainer):
    """RLOOTrainer that samples from the prompt ids of the pair file, as stage 2 and the evaluation do, and scores the
    completions at the positions they were sampled at.

    TRL tokenises the prompt text again (a prompt's text does not always tokenise back to its ids), and its log-prob
    pass gives the left-padded rows no position ids: GPT-2 would score (and train) a short prompt's completion shifted
    by the padding, away from where generate() sampled it.

    With a `generation_copy` it samples from that copy of the policy, refreshed before each generation."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
        if self.generation_copy is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        ids, _, output = self.generation_copy.generate(self.accelerator.unwrap_model(self.model), prompt_ids,
                                                       self.generation_config, self._tokenizer.pad_token_id)
        completions = []  # each cut after its first end of sequence, as TRL cuts them
        for row in output[:, ids.size(1):].tolist():
            ends = [i for i, token in enumerate(row) if token in self.eos_token_ids]
            completions.append(row[:ends[0] + 1] if ends else row)
        return completions

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        return super()._get_per_token_logps_and_entropies(PositionedModel(model), *args, **kwargs)

    def _generate_and_score_completions(self, inputs):
        self._batch_prompt_ids = [list(x["prompt_ids"]) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _tokenize_prompts(self, prompts: list):
        assert len(prompts) == len(self._batch_prompt_ids)
        return self._batch_prompt_ids, None, {}
