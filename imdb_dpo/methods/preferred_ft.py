"""Preferred-FT (the DPO paper's simplest baseline): supervised fine-tuning on the chosen completions."""

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from imdb_dpo.lifecycle.checkpoints import check_schedule
from imdb_dpo.configuration.checks import check_model, check_positive, check_training
from imdb_dpo.configuration.arguments import PreferredFTScriptArguments
from imdb_dpo.planning.costs import check_memory, frontier_inputs, longest_pair, model_shape, supervised_memory
from imdb_dpo.evaluation.in_training import frontier_of
from imdb_dpo.lifecycle.manifests import describe_model_input
from imdb_dpo.models.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.planning.plan import plan_supervised
from imdb_dpo.lifecycle.preemption import exit_resumable
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import last_logged, pairs_input, read_training_pairs, seed_values, train_sweep
from imdb_dpo.methods import GPUCheck, Method

CURVES = [("loss", "loss on the chosen completions"), ("mean_token_accuracy", "token accuracy")]
IGNORED = -100  # a label the loss skips


def chosen_examples(pairs: list[dict], limit: int | None = None) -> Dataset:
    """Each distinct (prompt, chosen completion) once, in file order, as token ids with the prompt masked out of
    the labels."""
    examples = {}
    for pair in pairs:
        key = (tuple(pair["prompt_ids"]), tuple(pair["chosen_ids"]))
        examples.setdefault(key, {"input_ids": pair["prompt_ids"] + pair["chosen_ids"],
                                  "labels": [IGNORED] * len(pair["prompt_ids"]) + pair["chosen_ids"]})
    return Dataset.from_list(list(examples.values())[:limit])


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
    shape, tokens = model_shape(model_args.model_name_or_path), longest_pair(pairs, ("chosen_ids",))
    check_memory("Preferred-FT", lambda: supervised_memory(training_args, shape, tokens, False, *frontier_inputs(frontier),
                                                           lora=model_args.use_peft),
                 training_args.distributed_state.device, training=training_args, frontier_eval=frontier and frontier.args)
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

    if not train_sweep([None], field=None, run_name=lambda args, value: "preferred_ft", stage="preferred_ft",
                       what="Preferred-FT run", configs={"script": script_args, "training": training_args,
                                                          "model": model_args},
                       inputs=inputs, make_trainer=make_trainer, curves=CURVES, results=results,
                       finished_line=finished_line, frontier=frontier, seeds=seeds):
        return exit_resumable()
    return 0


def plan(preset, stage, script_args, training_args, model_args):
    return plan_supervised(preset, stage, script_args, training_args, model_args, pairs=False)


METHODS = (Method(key="preferred_ft", title="Preferred-FT", order=50, stages=STAGES, main=main, plan=plan,
                  sweep="-",
                  style={"color": "green", "fmt": ":", "marker": "D"},
                  gpu_check=GPUCheck((), "preferred_ft_seed0", on_cpu=True)),)
