"""Stage 1: supervised fine-tuning of a causal LM on IMDb reviews with TRL's SFTTrainer.

    python sft.py --config configs/gpt2-large/sft.yaml [--flag value ...]

Resumes from the last checkpoint in output_dir, skips a finished run made with the same settings (a finished run
is replaced with --overwrite true only once the new one has finished), and writes the model directory (full
weights, LoRA merged) that the later stages load; a finished run keeps no checkpoint.
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import os
import sys

from transformers import set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from imdb_dpo.configuration.checks import check_training, check_model, check_positive
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.configuration.arguments import SFTScriptArguments
from imdb_dpo.planning.costs import check_memory, model_shape, sft_memory
from imdb_dpo.data.reviews import load_reviews
from imdb_dpo.lifecycle.checkpoints import checkpoint_steps, drop_checkpoints, resumable_checkpoint
from imdb_dpo.lifecycle.locks import main_process_lock
from imdb_dpo.lifecycle.manifests import Manifest, describe_file_input, describe_model_input
from imdb_dpo.lifecycle.outputs import OutputPlan, plan_output
from imdb_dpo.lifecycle.settings import run_settings
from imdb_dpo.models.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.lifecycle.preemption import SaveAndStopOnSignal, StopRequest, exit_resumable
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import examples_per_step

STAGES = (SFTScriptArguments, SFTConfig, ModelConfig)


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> int:
    state = training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_training(training_args)
    check_positive(script_args, "max_train_samples", "max_eval_samples")
    check_model("model_name_or_path", model_args.model_name_or_path)
    check_wandb_credentials(training_args.report_to)
    train_rows, held_out = load_data(script_args)
    inputs = {"model": describe_model_input(model_args.model_name_or_path)}
    for split in ("train", "test"):
        path = getattr(script_args, f"{split}_file")
        inputs[split] = describe_file_input(path, f"{split}_file") if path else script_args.dataset_name
    configs = {"script": script_args, "training": training_args, "model": model_args}
    with main_process_lock(training_args.output_dir, "sft.py"):
        plan = plan_output(training_args.output_dir, run_settings(configs, inputs),
                           lambda d: bool(checkpoint_steps(d)), script_args.overwrite, "SFT run",
                           state.is_main_process, state.wait_for_everyone)
        if plan.skip:
            if state.is_main_process:  # a kill between finishing and dropping the checkpoints left them
                drop_checkpoints(plan.final)
            return 0
        training_args.output_dir = plan.directory
        shape = model_shape(model_args.model_name_or_path)
        check_memory("SFT", lambda: sft_memory(training_args, shape, model_args.use_peft), state.device,
                     training=training_args)
        return train(training_args, model_args, train_rows, held_out, Manifest(plan.directory, "sft", configs, inputs),
                     plan)


def load_data(script_args: SFTScriptArguments):
    train = load_reviews(script_args, "train").select_columns(["text"])
    held_out = load_reviews(script_args, "test").select_columns(["text"])
    if script_args.max_train_samples:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if script_args.max_eval_samples:
        held_out = held_out.select(range(min(script_args.max_eval_samples, len(held_out))))
    return train, held_out


def train(training_args: SFTConfig, model_args: ModelConfig, train_rows, held_out, manifest: Manifest,
          plan: OutputPlan) -> int:
    output_dir = training_args.output_dir
    set_seed(training_args.seed)
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")
    stop = StopRequest()
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[SaveAndStopOnSignal(stop)],
    )
    trainer.train(resume_from_checkpoint=resumable_checkpoint(output_dir))
    if stop.requested:
        return exit_resumable()

    eval_metrics = trainer.evaluate()
    if model_args.use_peft:  # later stages load a plain causal LM
        if trainer.accelerator.is_main_process:
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))  # loss and throughput, for people
    trainer.accelerator.wait_for_everyone()
    manifest.finish(eval_loss=eval_metrics["eval_loss"], global_step=trainer.state.global_step, train_rows=len(train_rows),
                    processes=trainer.args.world_size, examples_per_step=examples_per_step(trainer.args))
    if trainer.accelerator.is_main_process:
        # Its checkpoints were for resuming only (weights and AdamW state: 9.3 GB each at GPT-2 Large's size); the
        # later stages read the model in output_dir.
        drop_checkpoints(output_dir)
        plan.finish()
    trainer.accelerator.wait_for_everyone()
    print(f"SFT finished: held-out loss {eval_metrics['eval_loss']:.4f}, model saved to {plan.final}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
