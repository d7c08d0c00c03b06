"""GRPO (Shao et al., 2024) with TRL's GRPOTrainer: online RL from the SFT model on stage 2's reward, swept over the
KL coefficient.

    python train.py grpo --config configs/gpt2-large/grpo.yaml                  # the config's sweep (kl_coefs)
    python train.py grpo --config configs/gpt2-large/grpo.yaml --kl_coefs 0.05  # one run

Like RLOO it samples num_generations completions of each of the pair file's prompts (their exact token ids, at the
positions they were sampled at), scores prompt + completion with stage 2's reward, and steps on the group's
advantages, with beta x KL(policy || SFT) in the loss; unlike RLOO's leave-one-out baseline, a completion's advantage
is its reward less its group's mean (scaled by the group's standard deviation, scale_rewards), and the step is
PPO's clipped ratio (epsilon). Runs go to <output_dir>/grpo_kl<coef>/ and are the frontier's `grpo` method.

This module is the whole method: the registry (imdb_dpo/methods/__init__.py) finds its `METHODS`.
"""

import functools

from trl import GRPOConfig, GRPOTrainer, ModelConfig

from imdb_dpo.configuration.arguments import RLOOScriptArguments
from imdb_dpo.models.generation_copy import SamplesFromCopy
from imdb_dpo.methods import GPUCheck, Method
from imdb_dpo.methods.rloo import PositionedModel, SampledRL, plan, run_sampled_rl

STAGES = (RLOOScriptArguments, GRPOConfig, ModelConfig)


class PretokenizedGRPOTrainer(SamplesFromCopy, GRPOTrainer):
    """GRPOTrainer that samples from the pair file's prompt ids (TRL would tokenise the prompt text again, which
    does not always give back its ids) and scores each completion at the positions it was sampled at (its log-prob
    pass gives left-padded rows no position ids). With a `generation_copy` it samples from that copy of the policy,
    refreshed before each generation."""

    def _generate_and_score_completions(self, inputs):
        self._batch_prompt_ids = [list(x["prompt_ids"]) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _tokenize_prompts(self, prompts: list):
        assert len(prompts) == len(self._batch_prompt_ids)
        return self._batch_prompt_ids, None, {}

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.generation_copy is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        ids, _, output = self.generation_copy.generate(self.accelerator.unwrap_model(self.model), prompt_ids,
                                                       self.generation_config, self._tokenizer.pad_token_id)
        completions = []  # each cut after its first end of sequence, as TRL cuts them
        for row in output[:, ids.size(1):].tolist():
            ends = [i for i, token in enumerate(row) if token in self.eos_token_ids]
            completions.append(row[:ends[0] + 1] if ends else row)
        return completions, None

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        return super()._get_per_token_logps_and_entropies(PositionedModel(model), *args, **kwargs)


GRPO = SampledRL("grpo", "GRPO", GRPOConfig, PretokenizedGRPOTrainer)
main = functools.partial(run_sampled_rl, GRPO)
METHODS = (Method(key="grpo", title="GRPO", order=130, stages=STAGES, main=main, plan=plan, sweep="kl_coefs",
                  parameter="KL coef", parameter_field="beta", style={"cmap": "copper", "fmt": ":", "marker": "p"},
                  gpu_check=GPUCheck(("--kl_coefs", "0.05", "--reward_model", "{classifier}"), "grpo_kl0.05_seed0")),)
