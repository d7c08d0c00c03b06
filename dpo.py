"""Stage 3: DPO from the SFT model (also the frozen reference), swept over beta, with TRL's DPOTrainer.

    python dpo.py --config configs/gpt2-large/dpo.yaml                 # the config's sweep (--betas)
    python dpo.py --config configs/gpt2-large/dpo.yaml --betas 0.1     # one run (a SLURM array task)

Each run goes to <output_dir>/<loss>_beta<beta>/ with the frontier's points on checkpoint_schedule (the presets:
lr-log), each evaluated in memory where frontier_eval names the evaluation's config (the presets do; checkpoints are
then written only to resume) or else saved as a checkpoint for eval.py, resumes by itself, and is skipped once finished with the same settings (--overwrite true
replaces it once the new run has finished). Reference log-probs are computed once and cached (TRL's
precompute_ref_log_probs), so every beta of the sweep reuses them.
"""

import imdb_dpo.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import dataclasses
import os
import shutil
import sys

from datasets import load_dataset
from transformers import set_seed
from trl import DPOConfig, ModelConfig, get_peft_config

from imdb_dpo.checks import check_training, check_model, check_positive
from imdb_dpo.cli import run_stage
from imdb_dpo.config import ConfigError, DPOScriptArguments
from imdb_dpo.costs import check_memory, dpo_memory, frontier_inputs, longest_pair, model_shape
from imdb_dpo.checkpoints import check_schedule
from imdb_dpo.frontier_eval import frontier_of
from imdb_dpo.methods.dpo import DPO_CURVES, PretokenizedDPOTrainer, check_losses, run_name
from imdb_dpo.manifests import describe_model_input
from imdb_dpo.distributed import main_process_first
from imdb_dpo.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.pairs import REQUIRED_IDS
from imdb_dpo.preemption import exit_resumable
from imdb_dpo.tracking import check_wandb_credentials
from imdb_dpo.training_runs import (last_logged, logged_line, pairs_input, read_training_pairs, seed_values,
                                    sweep_values, train_sweep)

STAGES = (DPOScriptArguments, DPOConfig, ModelConfig)


def check_inputs(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> list[dict]:
    """The pairs, once every setting and the pair file are checked."""
    check_training(training_args)
    check_positive(script_args, "max_train_pairs")
    check_schedule(script_args, training_args)
    check_model("model_name_or_path", model_args.model_name_or_path)
    return read_training_pairs(script_args.pairs_file, model_args.model_name_or_path)  # file, line and field of any fault


def load_pairs_dataset(script_args: DPOScriptArguments, cache_dir: str):
    # The datasets cache sits beside the runs, on persistent storage, so a requeued job finds the cached
    # reference log-probs (they are keyed on this data set's fingerprint and the reference model's hash).
    with main_process_first():  # one process fills the datasets cache; the others read it
        dataset = load_dataset("json", data_files=script_args.pairs_file, split="train", cache_dir=cache_dir)
    dataset = dataset.select_columns(list(REQUIRED_IDS))
    if script_args.max_train_pairs:
        dataset = dataset.select(range(min(script_args.max_train_pairs, len(dataset))))
    return dataset


def new_trainer(args, model_args, dataset, tokenizer, callbacks=()):
    set_seed(args.seed)  # the same LoRA initialisation, hence the same reference hash, in every run
    return PretokenizedDPOTrainer(model=model_args.model_name_or_path, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, peft_config=get_peft_config(model_args),
                                  callbacks=list(callbacks))


def main(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> int:
    state = training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    betas = sweep_values("betas", script_args.betas, "beta", training_args.beta, DPOConfig.__dataclass_fields__["beta"].default)
    seeds = seed_values(script_args.seeds)
    check_losses(training_args, betas)
    pair_list = check_inputs(script_args, training_args, model_args)
    frontier = frontier_of(script_args, "dpo", training_args.output_dir)
    check_memory("DPO", dpo_memory(training_args, model_shape(model_args.model_name_or_path), longest_pair(pair_list),
                                   *frontier_inputs(frontier), lora=model_args.use_peft), state.device)
    pairs = pairs_input(script_args.pairs_file, model_args.model_name_or_path, "DPO's reference")
    set_model_init_kwargs(training_args, model_args)
    cache = os.path.join(training_args.output_dir, ".datasets_cache")
    if script_args.reference_only and script_args.overwrite:  # the cached log-probs are what it names: made again
        if state.is_main_process:
            shutil.rmtree(cache, ignore_errors=True)
        state.wait_for_everyone()
    dataset = load_pairs_dataset(script_args, cache)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")
    if script_args.reference_only:
        if not training_args.precompute_ref_log_probs:
            raise ConfigError("reference_only needs precompute_ref_log_probs: true in the config")
        scratch = os.path.join(training_args.output_dir, ".reference")
        new_trainer(dataclasses.replace(training_args, output_dir=scratch), model_args, dataset, tokenizer)
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"reference log-probs cached in {training_args.output_dir}/.datasets_cache")
        return 0
    def results(trainer):
        return {"final_metrics": last_logged(trainer, "rewards/accuracies")}

    def finished_line(manifest):
        return logged_line(manifest["final_metrics"], [("rewards/accuracies", "preference accuracy", ".3f")])

    def name(beta):
        return run_name(training_args, beta, model_args.use_peft)

    if not train_sweep(betas, "beta", name, "dpo", "DPO run",
                       {"script": script_args, "training": training_args, "model": model_args},
                       {"pairs": pairs, "model": describe_model_input(model_args.model_name_or_path)},
                       script_args.overwrite, script_args.checkpoint_schedule,
                       lambda args, callbacks: new_trainer(args, model_args, dataset, tokenizer, callbacks),
                       DPO_CURVES, results, finished_line, frontier, seeds):
        return exit_resumable()
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
