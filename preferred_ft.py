"""Baseline: Preferred-FT, supervised fine-tuning of the SFT model on the chosen completions of the pair file.

    python preferred_ft.py --config configs/gpt2-large/preferred_ft.yaml

The DPO paper's simplest baseline: every distinct (prompt, chosen completion) of stage 2's pairs, trained on with
TRL's SFTTrainer on the exact sampled token ids, the loss on the completion only (a completion ends with EOS only
where the model ended it). The run goes to <output_dir>/preferred_ft/, checkpoints on checkpoint_schedule, resumes
by itself, and is skipped once finished with the same settings (--overwrite true replaces it once the new run has
finished).
"""

import imdb_dpo.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from transformers import set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from imdb_dpo.checkpoints import check_schedule
from imdb_dpo.frontier_eval import frontier_of
from imdb_dpo.checks import check_training, check_model, check_positive
from imdb_dpo.cli import run_stage
from imdb_dpo.config import PreferredFTScriptArguments
from imdb_dpo.costs import check_memory, frontier_inputs, longest_pair, model_shape, supervised_memory
from imdb_dpo.methods.preferred_ft import CURVES, chosen_examples
from imdb_dpo.manifests import describe_model_input
from imdb_dpo.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.preemption import exit_resumable
from imdb_dpo.tracking import check_wandb_credentials
from imdb_dpo.training_runs import last_logged, pairs_input, read_training_pairs, seed_values, train_sweep

STAGES = (PreferredFTScriptArguments, SFTConfig, ModelConfig)


def main(script_args: PreferredFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> int:
    training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    check_training(training_args)
    check_positive(script_args, "max_train_examples")
    check_schedule(script_args, training_args)
    frontier = frontier_of(script_args, "preferred_ft", training_args.output_dir)
    check_model("model_name_or_path", model_args.model_name_or_path)
    pairs = read_training_pairs(script_args.pairs_file, model_args.model_name_or_path, ("prompt_ids", "chosen_ids"))
    check_memory("Preferred-FT", supervised_memory(
        training_args, model_shape(model_args.model_name_or_path), longest_pair(pairs, ("chosen_ids",)), False,
        *frontier_inputs(frontier), lora=model_args.use_peft), training_args.distributed_state.device)
    inputs = {"pairs": pairs_input(script_args.pairs_file, model_args.model_name_or_path, "Preferred-FT's start"),
              "model": describe_model_input(model_args.model_name_or_path)}
    dataset = chosen_examples(pairs, script_args.max_train_examples)
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")
    seeds = seed_values(script_args.seeds)

    def make_trainer(args, callbacks):
        set_seed(args.seed)
        return SFTTrainer(model=model_args.model_name_or_path, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=get_peft_config(model_args), callbacks=callbacks)

    def results(trainer):
        return {"final_metrics": last_logged(trainer, "loss"), "examples": len(dataset)}

    def finished_line(manifest):
        return f"trained on {manifest['examples']} chosen completions"

    if not train_sweep([None], None, lambda _: "preferred_ft" + ("_lora" if model_args.use_peft else ""),
                       "preferred_ft", "Preferred-FT run",
                       {"script": script_args, "training": training_args, "model": model_args}, inputs,
                       script_args.overwrite, script_args.checkpoint_schedule, make_trainer, CURVES, results,
                       finished_line, frontier, seeds):
        return exit_resumable()
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
