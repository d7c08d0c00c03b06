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
from imdb_dpo.methods import GPUCheck, Method
from imdb_dpo.methods.rloo import PairFilePrompts, SampledRL, plan, run_sampled_rl

STAGES = (RLOOScriptArguments, GRPOConfig, ModelConfig)


class PretokenizedGRPOTrainer(PairFilePrompts, GRPOTrainer):
    """GRPOTrainer on the pair file's prompt ids, at the positions they were sampled at (PairFilePrompts)."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.generation_copy is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        return self.sample_from_copy(prompt_ids), None


GRPO = SampledRL("grpo", "GRPO", GRPOConfig, PretokenizedGRPOTrainer)
main = functools.partial(run_sampled_rl, GRPO)
METHODS = (Method(key="grpo", title="GRPO", order=130, stages=STAGES, main=main, plan=plan, sweep="kl_coefs",
                  parameter="KL coef", parameter_field="beta", style={"cmap": "copper", "fmt": ":", "marker": "p"},
                  gpu_check=GPUCheck(("--kl_coefs", "0.05", "--reward_model", "{classifier}"), "grpo_kl0.05_seed0")),)
