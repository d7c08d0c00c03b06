"""What the project adds to TRL's RLOOTrainer: the pair file's exact prompt ids and stage 2's reward.

RLOO (REINFORCE leave-one-out) maximises reward - beta * KL(policy || reference), the objective PPO maximises in
the DPO paper's IMDb experiment; PPO itself is gone from TRL.
"""

import functools
import math
import os
from dataclasses import dataclass

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, RLOOConfig, RLOOTrainer, get_peft_config

from imdb_dpo.planning import costs
from imdb_dpo.lifecycle.checkpoints import check_schedule
from imdb_dpo.configuration.checks import check_model, check_policy_sampling, check_positive, check_training
from imdb_dpo.configuration.arguments import ConfigError, RLOOScriptArguments
from imdb_dpo.planning.costs import check_memory, classifier_shape, frontier_inputs, model_shape, rloo_memory
from imdb_dpo.evaluation.in_training import frontier_of
from imdb_dpo.models.generation_copy import SamplesFromCopy, check_generation_dtype, make_generation_copy
from imdb_dpo.lifecycle.manifests import describe_model_input, read_manifest
from imdb_dpo.models.modeling import load_tokenizer, padded_positions, same_tokenizer, set_model_init_kwargs
from imdb_dpo.planning.plan import (Row, bound, compile_seconds, frontier_classifier, frontier_row, runs_of, sampled_step_seconds,
                        sweep_of, trained_steps)
from imdb_dpo.configuration.precision import inference_dtype
from imdb_dpo.lifecycle.preemption import exit_resumable
from imdb_dpo.models.reward import VADER, LearnedReward, make_reward
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import (last_logged, logged_line, pairs_input, read_training_pairs, seed_values, sweep_values,
                             train_sweep)
from imdb_dpo.methods import GPUCheck, Method

# What training_curves.png shows for an RLOO run: (logged key or keys, panel title).
RLOO_CURVES = [
    ("loss", "RLOO loss"),
    ("reward", "mean reward of the sampled completions"),
    ("kl", "KL to the reference (log-ratio, per token)"),
    ("completions/mean_length", "mean completion length"),
]


def run_name_of(method: str):
    """The run names of `method`: e.g. `rloo_kl0.05` (`rloo_rm_kl0.05` on a learned reward), the method and its KL
    coefficient at a glance, apart from every other method's run names."""
    return lambda args, kl_coef: f"{method}_kl{kl_coef:g}"


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


class PairFilePrompts(SamplesFromCopy):
    """A mixin for TRL's trainers that sample as they train (RLOO, GRPO): they sample from the prompt ids of the pair
    file, as stage 2 and the evaluation do, and score the completions at the positions they were sampled at.

    TRL tokenises the prompt text again (a prompt's text does not always tokenise back to its ids), and its log-prob
    pass gives the left-padded rows no position ids: GPT-2 would score (and train) a short prompt's completion shifted
    by the padding, away from where generate() sampled it.

    With a `generation_copy` it samples from that copy of the policy, refreshed before each generation."""

    def sample_from_copy(self, prompt_ids) -> list[list[int]]:
        """The generation copy's completions of `prompt_ids`, each cut after its first end of sequence, as TRL cuts
        them."""
        ids, _, output = self.generation_copy.generate(self.accelerator.unwrap_model(self.model), prompt_ids,
                                                       self.generation_config, self._tokenizer.pad_token_id)
        completions = []
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


class PretokenizedRLOOTrainer(PairFilePrompts, RLOOTrainer):
    """RLOOTrainer on the pair file's prompt ids, at the positions they were sampled at (PairFilePrompts)."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
        if self.generation_copy is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        return self.sample_from_copy(prompt_ids)


STAGES = (RLOOScriptArguments, RLOOConfig, ModelConfig)


@dataclass(frozen=True)
class SampledRL:
    """What differs between the trainers that sample from the policy on stage 2's prompts as they train and climb
    the reward less beta x KL to the SFT model (RLOO, and others in their own modules); `run_sampled_rl` is the rest
    of the stage."""
    key: str          # the method, and its runs' names: <key>_kl<coef>
    title: str        # how messages name it
    config: type      # its TRL config (beta: the KL coefficient the sweep sets)
    trainer: type     # its trainer on the pair file's prompt ids (the same prompts and positions for every one)
    learned_key: str = ""  # the method of its runs on a learned reward model ("": stage 2's reward only)


def check_inputs(kind: SampledRL, script_args: RLOOScriptArguments, training_args, model_args: ModelConfig) -> None:
    check_training(training_args)
    check_positive(script_args, "max_train_prompts", "reward_batch_size")
    inference_dtype(script_args, "reward_dtype")
    check_positive(training_args, "max_completion_length")
    check_schedule(script_args, training_args)
    check_policy_sampling(training_args, kind.config, kind.title)
    check_generation_dtype(script_args, model_args.use_peft)
    check_model("model_name_or_path", model_args.model_name_or_path)
    if script_args.reward_model != VADER:
        path = script_args.reward_model
        manifest = read_manifest(path) if os.path.isdir(path) else None
        if not kind.learned_key and manifest and manifest.get("stage") == "reward_model":
            raise ConfigError(f"reward_model={path!r} is a learned reward model; {kind.title} here optimises stage 2's "
                              "reward: name the classifier stage 2 ranked with (or vader)")
        learned_reward_manifest(path)  # an unfinished one holds no model yet: say so first
        check_model("reward_model", path)


def learned_reward_manifest(path: str) -> dict | None:
    """The manifest of `path` when it is a finished reward_model.py run, None when it is no such run."""
    manifest = read_manifest(path) if os.path.isdir(path) else None
    if not (manifest and manifest.get("stage") == "reward_model"):
        return None
    if not manifest.get("finished"):
        raise ConfigError(f"reward_model={path!r} is an unfinished reward_model.py run; finish it (run reward_model.py "
                          "again: it resumes) before a method optimises it")
    return manifest


def learned_reward_model(script_args: RLOOScriptArguments, model: str) -> bool:
    """Whether reward_model is a reward_model.py output (then RLOO optimises its score: method rloo_rm)."""
    path = script_args.reward_model
    if learned_reward_manifest(path) is None:
        return False
    if script_args.reward_positive_label != RLOOScriptArguments.reward_positive_label:
        raise ConfigError(f"reward_positive_label={script_args.reward_positive_label!r}: a learned reward model "
                          f"({path}) has one score and no labels; remove reward_positive_label")
    if not same_tokenizer(path, model):
        raise ConfigError(f"reward_model={path!r} has another tokenizer than model_name_or_path={model!r}; the learned "
                          "reward reads the policy's token ids, so train it on pairs of this model")
    return True


def run_sampled_rl(kind: SampledRL, script_args: RLOOScriptArguments, training_args, model_args: ModelConfig) -> int:
    state = training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    coefs = sweep_values("kl_coefs", script_args.kl_coefs, "beta", training_args.beta,
                         kind.config.__dataclass_fields__["beta"].default)
    seeds = seed_values(script_args.seeds)
    check_inputs(kind, script_args, training_args, model_args)
    pairs = read_training_pairs(script_args.pairs_file, model_args.model_name_or_path, ("prompt_ids",))
    inputs = {"pairs": pairs_input(script_args.pairs_file, model_args.model_name_or_path,
                                   f"{kind.title}'s start and reference"),
              "model": describe_model_input(model_args.model_name_or_path)}
    dataset = prompts_of_pairs(pairs, script_args.max_train_prompts)
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    # The reward scores on this process's own device (RLOO gathers the rewards across processes).
    dtype = inference_dtype(script_args, "reward_dtype")
    learned = learned_reward_model(script_args, model_args.model_name_or_path)
    method = kind.learned_key if learned else kind.key
    frontier = frontier_of(script_args, method, training_args.output_dir)
    shape, classifier = model_shape(model_args.model_name_or_path), classifier_shape(script_args.reward_model)
    prompt_tokens = max(len(p["prompt_ids"]) for p in pairs)
    check_memory(kind.title, lambda: rloo_memory(training_args, shape, prompt_tokens, classifier,
                                                 script_args.reward_dtype, *frontier_inputs(frontier),
                                                 lora=model_args.use_peft, generation_dtype=script_args.generation_dtype,
                                                 generation_compile=script_args.generation_compile,
                                                 learned_reward=learned, kl_coef=max(coefs)),
                 state.device, training=training_args, frontier_eval=frontier and frontier.args)
    if learned:
        inputs["reward_model"] = describe_model_input(script_args.reward_model)
        reward = LearnedReward(script_args.reward_model, state.device, dtype, script_args.reward_batch_size)
    else:
        reward = SentimentReward(make_reward(script_args.reward_model, script_args.reward_batch_size,
                                             script_args.reward_positive_label, state.device, dtype))

    copy = make_generation_copy(script_args)

    def make_trainer(args, callbacks):
        set_seed(args.seed)
        return kind.trainer(model=model_args.model_name_or_path, reward_funcs=reward, args=args,
                            train_dataset=dataset, processing_class=tokenizer, peft_config=get_peft_config(model_args),
                            callbacks=callbacks, generation_copy=copy)

    def results(trainer):
        return {"final_metrics": last_logged(trainer, "reward"), "prompts": len(dataset)}

    def finished_line(manifest):
        return logged_line(manifest["final_metrics"], [("reward", "reward", ".3f"), ("kl", "KL per token", ".3f")])

    if not train_sweep(coefs, field="beta", run_name=run_name_of(method), stage=method, what=f"{kind.title} run",
                       configs={"script": script_args, "training": training_args, "model": model_args},
                       inputs=inputs, make_trainer=make_trainer, curves=RLOO_CURVES, results=results,
                       finished_line=finished_line, frontier=frontier, seeds=seeds):
        return exit_resumable()
    return 0


def plan(preset, stage, script_args, training_args, model_args) -> Row:
    check_generation_dtype(script_args, model_args.use_peft)
    shape = preset.shape(model_args.model_name_or_path)
    learned = os.path.realpath(script_args.reward_model) in preset.configs
    classifier = (preset.shape(script_args.reward_model, classifier=True) if learned else
                  costs.classifier_shape(script_args.reward_model))
    counts = preset.pairs(script_args.pairs_file)
    prompts = min(counts["prompts"], script_args.max_train_prompts or math.inf)
    coefs = script_args.kl_coefs or [training_args.beta]
    frontier = frontier_classifier(preset, script_args)
    peak = preset.fit(lambda: costs.rloo_memory(
        training_args, shape, counts["prompt_tokens"], classifier, script_args.reward_dtype, *frontier,
        lora=model_args.use_peft, generation_dtype=script_args.generation_dtype,
        generation_compile=script_args.generation_compile, learned_reward=learned, kl_coef=max(coefs)),
        training=training_args, frontier_eval=frontier[0])
    steps = trained_steps(prompts * training_args.num_generations, training_args)
    row = Row(stage, runs_of(script_args, coefs), exact=counts["exact"], peak=peak)
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    generation_prompts = max(per_step // training_args.num_generations, 1)
    row.seconds = row.runs * steps * sampled_step_seconds(
        shape, classifier, script_args, bool(training_args.bf16), per_step, counts["prompt_tokens"],
        training_args.max_completion_length, generation_prompts, generation_prompts, training_args.num_generations)
    row.seconds += row.runs * compile_seconds(script_args)
    row.notes.append(f"{bound(int(prompts), counts['exact'])} prompts x {training_args.num_generations} completions a run, "
                     f"{sweep_of(coefs, 'KL coefficient', script_args)}")
    row.proxy = script_args.reward_model if learned else None
    frontier_row(preset, row, shape, training_args, script_args, steps, model_args.use_peft)
    return row


RLOO_RL = SampledRL("rloo", "RLOO", RLOOConfig, PretokenizedRLOOTrainer, learned_key="rloo_rm")
main = functools.partial(run_sampled_rl, RLOO_RL)
RLOO = Method(key="rloo", title="RLOO", order=20, stages=STAGES, main=main, plan=plan, sweep="kl_coefs",
              parameter="KL coef", parameter_field="beta", style={"cmap": "Oranges", "fmt": "--", "marker": "^"},
              gpu_check=GPUCheck(("--kl_coefs", "0.05", "--reward_model", "{classifier}"), "rloo_kl0.05_seed0",
                                 on_cpu=True))
# The paper's PPO row: RLOO on the learned reward model (configs/<preset>/rloo_rm.yaml names it as reward_model).
RLOO_RM = Method(key="rloo_rm", title="RLOO on the learned RM", order=40, stages=STAGES, main=main, plan=plan,
                 sweep="kl_coefs", needs=("reward_model",), parameter="KL coef", parameter_field="beta", style={"cmap": "Reds", "fmt": "--", "marker": "v"},
                 gpu_check=GPUCheck(("--reward_model", "{reward_model}", "--kl_coefs", "0.05", "--checkpoint_schedule",
                                     "steps", "--save_steps", "2", "--frontier_eval", "{frontier_eval}"),
                                    "rloo_rm_kl0.05_seed0"))
METHODS = (RLOO, RLOO_RM)
