"""Baseline: Unlikelihood (Welleck et al. 2019) from the SFT model on the pair file, swept over alpha.

    python unlikelihood.py --config configs/gpt2-large/unlikelihood.yaml                # the config's sweep (--alphas)
    python unlikelihood.py --config configs/gpt2-large/unlikelihood.yaml --alphas 1     # one run (a SLURM array task)

The DPO paper's baseline that raises the chosen completion's likelihood and pushes the rejected one's tokens down
with -log(1 - p), weighted by alpha (imdb_dpo/methods/unlikelihood.py has the loss). It trains on every pair of
stage 2's pair file by its exact token ids, with no reference model. Each run goes to
<output_dir>/unlikelihood_alpha<alpha>/, checkpoints on checkpoint_schedule, resumes by itself, and is skipped once
finished with the same settings (--overwrite true replaces it once the new run has finished).
"""

import imdb_dpo.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, get_peft_config

from imdb_dpo.checkpoints import check_schedule
from imdb_dpo.frontier_eval import frontier_of
from imdb_dpo.checks import check_training, check_model, check_positive
from imdb_dpo.cli import run_stage
from imdb_dpo.config import UnlikelihoodScriptArguments
from imdb_dpo.costs import check_memory, frontier_inputs, longest_pair, model_shape, supervised_memory
from imdb_dpo.manifests import describe_model_input
from imdb_dpo.methods.unlikelihood import CURVES, UnlikelihoodConfig, UnlikelihoodTrainer, run_name
from imdb_dpo.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.pairs import REQUIRED_IDS
from imdb_dpo.preemption import exit_resumable
from imdb_dpo.tracking import check_wandb_credentials
from imdb_dpo.training_runs import (last_logged, logged_line, pairs_input, read_training_pairs, seed_values,
                                    sweep_values, train_sweep)

STAGES = (UnlikelihoodScriptArguments, UnlikelihoodConfig, ModelConfig)


def main(script_args: UnlikelihoodScriptArguments, training_args: UnlikelihoodConfig, model_args: ModelConfig) -> int:
    training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    alphas = sweep_values("alphas", script_args.alphas, "alpha", training_args.alpha,
                          UnlikelihoodConfig.__dataclass_fields__["alpha"].default)
    seeds = seed_values(script_args.seeds)
    check_training(training_args)
    check_positive(script_args, "max_train_pairs")
    check_positive(training_args, "max_length")
    check_schedule(script_args, training_args)
    frontier = frontier_of(script_args, "unlikelihood", training_args.output_dir)
    check_model("model_name_or_path", model_args.model_name_or_path)
    pairs = read_training_pairs(script_args.pairs_file, model_args.model_name_or_path)
    check_memory("Unlikelihood", supervised_memory(
        training_args, model_shape(model_args.model_name_or_path), longest_pair(pairs), True,
        *frontier_inputs(frontier), lora=model_args.use_peft), training_args.distributed_state.device)
    inputs = {"pairs": pairs_input(script_args.pairs_file, model_args.model_name_or_path, "Unlikelihood's start"),
              "model": describe_model_input(model_args.model_name_or_path)}
    dataset = Dataset.from_list([{k: p[k] for k in REQUIRED_IDS} for p in pairs[: script_args.max_train_pairs]])
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")

    def make_trainer(args, callbacks):
        set_seed(args.seed)
        return UnlikelihoodTrainer(model_args.model_name_or_path, args, dataset, tokenizer,
                                   get_peft_config(model_args), callbacks)

    def results(trainer):
        return {"final_metrics": last_logged(trainer, "loss"), "pairs": len(dataset)}

    def finished_line(manifest):
        return f"{len(dataset)} pairs; " + logged_line(manifest["final_metrics"], [
            ("logps/chosen", "log-prob of chosen", ".2f"), ("logps/rejected", "of rejected", ".2f")])

    if not train_sweep(alphas, "alpha", lambda alpha: run_name(alpha, model_args.use_peft), "unlikelihood",
                       "Unlikelihood run", {"script": script_args, "training": training_args, "model": model_args},
                       inputs, script_args.overwrite, script_args.checkpoint_schedule, make_trainer, CURVES, results,
                       finished_line, frontier, seeds):
        return exit_resumable()
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
