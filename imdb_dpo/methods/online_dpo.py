"""Online DPO (Guo et al., 2024) with TRL's OnlineDPOTrainer: the DPO loss on pairs the policy samples as it trains.

    python train.py online_dpo --config configs/gpt2-large/online_dpo.yaml

Every optimizer step is a round: its prompts (the pair file's, each once, with their exact token ids, as RLOO's) are
sampled twice each from the current policy, the two completions are ranked by stage 2's reward (the classifier's
POSITIVE probability of prompt + completion; VADER on the tiny preset), and one DPO step is taken on these pairs
against the frozen SFT model. The number of rounds is the number of optimizer steps (max_steps, or the prompts x
num_train_epochs / prompts a step), and each checkpoint on checkpoint_schedule is a frontier point. Runs go to
<output_dir>/online_<loss>_beta<beta>/.
"""

import math

import torch
from trl import ModelConfig
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from trl.experimental.utils import truncate_right
from trl.models.utils import unwrap_model_for_generation

from imdb_dpo.planning import costs
from imdb_dpo.configuration.checks import check_model, check_policy_sampling, check_positive
from imdb_dpo.configuration.arguments import OnlineDPOScriptArguments
from imdb_dpo.planning.costs import classifier_shape, online_dpo_memory
from imdb_dpo.configuration.errors import ConfigError
from imdb_dpo.models.generation_copy import SamplesFromCopy, check_generation_dtype, make_generation_copy
from imdb_dpo.lifecycle.manifests import describe_model_input
from imdb_dpo.models.modeling import padded_positions
from imdb_dpo.planning.plan import (Row, bound, compile_seconds, frontier_classifier, frontier_row, runs_of, sampled_step_seconds,
                        sweep_of, trained_steps)
from imdb_dpo.configuration.precision import inference_dtype
from imdb_dpo.models.reward import VADER, make_reward
from imdb_dpo.models.sampling import left_pad
from imdb_dpo.lifecycle.training_runs import pairs_input, read_training_pairs
from imdb_dpo.methods import GPUCheck
from imdb_dpo.methods.recipe import Recipe, recipe_method
from imdb_dpo.methods.rloo import SentimentReward, prompts_of_pairs

CURVES = [
    ("loss", "online DPO loss"),
    ("objective/scores", "mean reward of the sampled completions"),
    ("objective/kl", "KL to the reference (log-ratio, per sample)"),
    ("rewards/margins", "implied reward margin (chosen - rejected)"),
]


def check(args: OnlineDPOConfig) -> None:
    if isinstance(args.beta, list):
        raise ConfigError(f"beta={args.beta}: give one beta (TRL would change it each epoch); betas sweeps, a run each")
    if args.reward_model_path is not None or args.reward_weights is not None:
        raise ConfigError("reward_model_path/reward_weights: the reward is stage 2's (reward_model and "
                          "reward_positive_label in the config); remove them")
    check_policy_sampling(args, OnlineDPOConfig, "online DPO")
    check_positive(args, "max_new_tokens")
    args.remove_unused_columns = False  # the rows' columns are not the model's arguments


def examples(script_args: OnlineDPOScriptArguments, model_args: ModelConfig) -> tuple[list[dict], dict]:
    """Each prompt of the pair file once, in file order (the same prompts as RLOO's)."""
    check_positive(script_args, "max_train_prompts", "reward_batch_size")
    check_generation_dtype(script_args, model_args.use_peft)
    inference_dtype(script_args, "reward_dtype")
    if script_args.reward_model != VADER:
        check_model("reward_model", script_args.reward_model)
    model = model_args.model_name_or_path
    inputs = {"pairs": pairs_input(script_args.pairs_file, model, "its start and reference"),
              "model": describe_model_input(model)}
    pairs = read_training_pairs(script_args.pairs_file, model, ("prompt_ids",))
    return prompts_of_pairs(pairs, script_args.max_train_prompts).to_list(), inputs


def memory(script_args, training_args, policy, prompt_tokens, *frontier, lora=False):
    if training_args.max_length < prompt_tokens + training_args.max_new_tokens:
        raise ConfigError(f"max_length={training_args.max_length} is below the longest prompt ({prompt_tokens} tokens) + "
                          f"max_new_tokens ({training_args.max_new_tokens}): TRL would cut the prompt and score the "
                          "completion at other positions than it was sampled at; raise max_length")
    return online_dpo_memory(training_args, policy, prompt_tokens, classifier_shape(script_args.reward_model),
                             script_args.reward_dtype, *frontier, lora=lora,
                             generation_dtype=script_args.generation_dtype,
                             generation_compile=script_args.generation_compile)


def reward_function(script_args: OnlineDPOScriptArguments, training_args) -> dict:
    """The trainer's reward, loaded once for the sweep on this process's device, and its generation copy."""
    device = training_args.distributed_state.device
    return {"reward_funcs": SentimentReward(make_reward(
        script_args.reward_model, script_args.reward_batch_size, script_args.reward_positive_label, device,
        inference_dtype(script_args, "reward_dtype"))), "generation_copy": make_generation_copy(script_args)}


def run_name(args, beta: float) -> str:
    """`online_sigmoid_beta0.1` (or `online_ipo_...`)."""
    return f"online_{args.loss_type}_beta{beta:g}"


class PretokenizedOnlineDPOTrainer(SamplesFromCopy, OnlineDPOTrainer):
    """OnlineDPOTrainer that samples from the pair file's prompt ids and scores them at the positions it sampled.

    TRL tokenises the prompt text again (a prompt's text does not always tokenise back to its ids), and its forward
    pass gives left-padded rows no position ids: GPT-2's learned positions would then be shifted by the padding, so
    a short prompt's completion would be scored (and trained) at other positions than the ones it was sampled at.

    With a `generation_copy` it samples from that copy of the policy, refreshed before each generation."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._batch_prompt_ids = [list(ids) for ids in inputs["prompt_ids"]]
        return super().training_step(model, inputs, num_items_in_batch)

    def _generate(self, model, prompts, images=None):
        assert len(prompts) == len(self._batch_prompt_ids) and images is None
        if self.generation_copy is not None:
            prompt_ids, prompt_mask, output = self.generation_copy.generate(
                self.accelerator.unwrap_model(model), self._batch_prompt_ids * 2, self.generation_config,
                self._tokenizer.pad_token_id)
        else:
            device = next(model.parameters()).device
            prompt_ids, prompt_mask = (t.to(device).repeat(2, 1)
                                       for t in left_pad(self._batch_prompt_ids, self._tokenizer.pad_token_id))
            with unwrap_model_for_generation(model, self.accelerator, generation_kwargs=self.generation_kwargs) as \
                    unwrapped, torch.no_grad():
                output = unwrapped.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                            generation_config=self.generation_config)
        completion_ids, completion_mask = truncate_right(output[:, prompt_ids.size(1):], self.eos_token_ids,
                                                         self._tokenizer.pad_token_id)
        return prompt_ids, prompt_mask, completion_ids, completion_mask, None

    def _forward(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs=None):
        cut = max(prompt_ids.size(1) + completion_ids.size(1) - self.max_length, 0)  # TRL's left truncation
        prompt_ids, prompt_mask = prompt_ids[:, cut:], prompt_mask[:, cut:]
        ids = torch.cat((prompt_ids, completion_ids), dim=1)
        mask = torch.cat((prompt_mask, completion_mask), dim=1)
        logits = model(ids, attention_mask=mask, position_ids=padded_positions(mask)).logits
        logits = logits[:, prompt_ids.size(1) - 1:-1]
        return torch.take_along_dim(logits.log_softmax(dim=-1), completion_ids.unsqueeze(-1), dim=2).squeeze(-1)


def plan(recipe, preset, stage, script_args, training_args, model_args) -> Row:
    """Each step samples two completions of each of its prompts, scores them with the reward model, and trains on
    them with every position's logits (policy and reference)."""
    check_generation_dtype(script_args, model_args.use_peft)
    shape = preset.shape(model_args.model_name_or_path)
    classifier = costs.classifier_shape(script_args.reward_model)
    counts = preset.pairs(script_args.pairs_file)
    prompts = min(counts["prompts"], script_args.max_train_prompts or math.inf)
    betas = script_args.betas or [training_args.beta]
    frontier = frontier_classifier(preset, script_args)
    peak = preset.fit(lambda: costs.online_dpo_memory(
        training_args, shape, counts["prompt_tokens"], classifier, script_args.reward_dtype, *frontier,
        lora=model_args.use_peft, generation_dtype=script_args.generation_dtype,
        generation_compile=script_args.generation_compile), training=training_args, frontier_eval=frontier[0])
    steps = trained_steps(prompts, training_args)
    row = Row(stage, runs_of(script_args, betas), exact=counts["exact"], peak=peak)
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    row.seconds = row.runs * steps * sampled_step_seconds(
        shape, classifier, script_args, bool(training_args.bf16), 2 * per_step, counts["prompt_tokens"],
        training_args.max_new_tokens, per_step, training_args.per_device_train_batch_size, 2)
    row.seconds += row.runs * compile_seconds(script_args)
    row.notes.append(f"{bound(int(prompts), counts['exact'])} prompts x 2 completions a run, "
                     f"{sweep_of(betas, 'beta', script_args)}")
    frontier_row(preset, row, shape, training_args, script_args, steps, model_args.use_peft)
    return row


RECIPE = Recipe(key="online_dpo", title="Online DPO", script=OnlineDPOScriptArguments, config=OnlineDPOConfig,
                trainer=PretokenizedOnlineDPOTrainer, curves=CURVES, examples=examples, memory=memory,
                run_name=run_name, limit_field="max_train_prompts", completion_fields=(),
                metric=("objective/scores", "mean reward of the sampled completions"), check=check,
                trainer_kwargs=reward_function)
METHODS = (recipe_method(RECIPE, 120, {"cmap": "cool", "fmt": "-", "marker": "d"}, plan, loss_field="loss_type",
                         gpu_check=GPUCheck(("--betas", "0.1", "--reward_model", "{classifier}"),
                                            "online_sigmoid_beta0.1_seed0")),)
