"""Baseline: online RL from the SFT model with TRL's RLOOTrainer, swept over the KL coefficient.

    python rloo.py --config configs/gpt2-large/rloo.yaml                  # the config's sweep (--kl_coefs)
    python rloo.py --config configs/gpt2-large/rloo.yaml --kl_coefs 0.05  # one run (a SLURM array task)

RLOO maximises reward - beta * KL(policy || SFT), the objective of PPO in the DPO paper. It samples on the prompts
of stage 2's pair file (their exact token ids), with the sampling settings of the config (the presets use stage 2's:
temperature 1, no top-k/top-p, the same max_new_tokens as max_completion_length). Its reward is one of two:

- stage 2's reward (the paper's PPO-GT): the sentiment classifier's POSITIVE probability of prompt + completion
  (VADER on the tiny preset). Runs go to <output_dir>/rloo_kl<coef>/ and are the frontier's `rloo` method.
- a learned reward model (the paper's PPO), when reward_model names a folder reward_model.py finished: its score of
  the prompt and completion ids (configs/<preset>/rloo_rm.yaml). Runs go to <output_dir>/rloo_rm_kl<coef>/ and are
  the frontier's `rloo_rm` method, whose evaluation records the learned score beside the true reward.

Each run checkpoints on checkpoint_schedule, resumes by itself, and is skipped once finished with the same settings
(--overwrite true replaces it once the new run has finished).
"""

import imdb_dpo.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import os
import sys

from transformers import set_seed
from trl import ModelConfig, RLOOConfig, get_peft_config

from imdb_dpo.checkpoints import check_schedule
from imdb_dpo.frontier_eval import frontier_of
from imdb_dpo.checks import check_model, check_policy_sampling, check_positive, check_training
from imdb_dpo.cli import run_stage
from imdb_dpo.config import ConfigError, RLOOScriptArguments
from imdb_dpo.costs import check_memory, classifier_shape, frontier_inputs, model_shape, rloo_memory
from imdb_dpo.generation_copy import check_generation_dtype, make_generation_copy
from imdb_dpo.manifests import describe_model_input, read_manifest
from imdb_dpo.modeling import load_tokenizer, same_tokenizer, set_model_init_kwargs
from imdb_dpo.precision import inference_dtype
from imdb_dpo.preemption import exit_resumable
from imdb_dpo.reward import VADER, make_reward
from imdb_dpo.methods.reward_model import LearnedReward
from imdb_dpo.methods.rloo import RLOO_CURVES, PretokenizedRLOOTrainer, SentimentReward, prompts_of_pairs, run_name
from imdb_dpo.tracking import check_wandb_credentials
from imdb_dpo.training_runs import (last_logged, logged_line, pairs_input, read_training_pairs, seed_values,
                                    sweep_values, train_sweep)

STAGES = (RLOOScriptArguments, RLOOConfig, ModelConfig)


def check_inputs(script_args: RLOOScriptArguments, training_args: RLOOConfig, model_args: ModelConfig) -> None:
    check_training(training_args)
    check_positive(script_args, "max_train_prompts", "reward_batch_size")
    inference_dtype(script_args, "reward_dtype")
    check_positive(training_args, "max_completion_length")
    check_schedule(script_args, training_args)
    check_policy_sampling(training_args, RLOOConfig, "RLOO")
    check_generation_dtype(script_args, model_args.use_peft)
    check_model("model_name_or_path", model_args.model_name_or_path)
    if script_args.reward_model != VADER:
        learned_reward_manifest(script_args.reward_model)  # an unfinished one holds no model yet: say so first
        check_model("reward_model", script_args.reward_model)


def learned_reward_manifest(path: str) -> dict | None:
    """The manifest of `path` when it is a finished reward_model.py run, None when it is no such run."""
    manifest = read_manifest(path) if os.path.isdir(path) else None
    if not (manifest and manifest.get("stage") == "reward_model"):
        return None
    if not manifest.get("finished"):
        raise ConfigError(f"reward_model={path!r} is an unfinished reward_model.py run; finish it (run reward_model.py "
                          "again: it resumes) before RLOO optimises it")
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


def main(script_args: RLOOScriptArguments, training_args: RLOOConfig, model_args: ModelConfig) -> int:
    state = training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    coefs = sweep_values("kl_coefs", script_args.kl_coefs, "beta", training_args.beta,
                         RLOOConfig.__dataclass_fields__["beta"].default)
    seeds = seed_values(script_args.seeds)
    check_inputs(script_args, training_args, model_args)
    pairs = read_training_pairs(script_args.pairs_file, model_args.model_name_or_path, ("prompt_ids",))
    inputs = {"pairs": pairs_input(script_args.pairs_file, model_args.model_name_or_path, "RLOO's start and reference"),
              "model": describe_model_input(model_args.model_name_or_path)}
    dataset = prompts_of_pairs(pairs, script_args.max_train_prompts)
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    # The reward scores on this process's own device (RLOO gathers the rewards across processes).
    dtype = inference_dtype(script_args, "reward_dtype")
    method = "rloo_rm" if learned_reward_model(script_args, model_args.model_name_or_path) else "rloo"
    frontier = frontier_of(script_args, method, training_args.output_dir)
    check_memory("RLOO", rloo_memory(training_args, model_shape(model_args.model_name_or_path),
                                     max(len(p["prompt_ids"]) for p in pairs), classifier_shape(script_args.reward_model),
                                     script_args.reward_dtype, *frontier_inputs(frontier), lora=model_args.use_peft,
                                     generation_dtype=script_args.generation_dtype,
                                     generation_compile=script_args.generation_compile,
                                     learned_reward=method == "rloo_rm"),
                 state.device)
    if method == "rloo_rm":
        inputs["reward_model"] = describe_model_input(script_args.reward_model)
        reward = LearnedReward(script_args.reward_model, state.device, dtype, script_args.reward_batch_size)
    else:
        reward = SentimentReward(make_reward(script_args.reward_model, script_args.reward_batch_size,
                                             script_args.reward_positive_label, state.device, dtype))

    copy = make_generation_copy(script_args)

    def make_trainer(args, callbacks):
        set_seed(args.seed)
        return PretokenizedRLOOTrainer(model=model_args.model_name_or_path, reward_funcs=reward, args=args,
                                       train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=get_peft_config(model_args), callbacks=callbacks,
                                       generation_copy=copy)

    def results(trainer):
        return {"final_metrics": last_logged(trainer, "reward"), "prompts": len(dataset)}

    def finished_line(manifest):
        return logged_line(manifest["final_metrics"], [("reward", "reward", ".3f"), ("kl", "KL per token", ".3f")])

    if not train_sweep(coefs, "beta", lambda coef: run_name(coef, model_args.use_peft, method), method, "RLOO run",
                       {"script": script_args, "training": training_args, "model": model_args}, inputs,
                       script_args.overwrite, script_args.checkpoint_schedule, make_trainer, RLOO_CURVES, results,
                       finished_line, frontier, seeds):
        return exit_resumable()
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
