"""Stage 3: DPO from the SFT model (also the frozen reference), swept over beta, with TRL's DPOTrainer.

    python dpo.py --config configs/gpt2-large/dpo.yaml                 # the config's sweep (--betas)
    python dpo.py --config configs/gpt2-large/dpo.yaml --betas 0.1     # one run (a SLURM array task)

Each run goes to <output_dir>/<loss>_beta<beta>/ with checkpoints every save_steps, resumes by itself, and
is skipped once finished with the same settings (--overwrite true replaces it once the new run has finished). Reference log-probs are computed once and cached (TRL's
precompute_ref_log_probs), so every beta of the sweep reuses them.
"""

import dataclasses
import math
import os
import shutil
import sys

import trl
from datasets import load_dataset
from transformers import AutoConfig, set_seed
from trl import DPOConfig, ModelConfig, get_peft_config

from imdb_dpo.checks import check_learning_rate, check_model, check_positive
from imdb_dpo.cli import run_stage
from imdb_dpo.config import ConfigError, DPOScriptArguments
from imdb_dpo.locks import main_process_lock
from imdb_dpo.dpo_training import (DropOptimizerFromOldCheckpoints, PretokenizedDPOTrainer, checkpoint_steps,
                                   resumable_checkpoint, run_name)
from imdb_dpo.manifests import Manifest, describe_file_input, describe_model_input, read_manifest
from imdb_dpo.outputs import plan_output, run_settings
from imdb_dpo.modeling import load_tokenizer
from imdb_dpo.pairs import REQUIRED_IDS, PairFileError, read_pairs
from imdb_dpo.plots import plot_training_curves
from imdb_dpo.preemption import SaveAndStopOnSignal, StopRequest, exit_resumable
from imdb_dpo.tracking import check_wandb_credentials, own_wandb_run

STAGES = (DPOScriptArguments, DPOConfig, ModelConfig)


def sweep_betas(script_args: DPOScriptArguments, training_args: DPOConfig) -> list[float]:
    if not script_args.betas:
        return [training_args.beta]
    if training_args.beta != DPOConfig.__dataclass_fields__["beta"].default:
        raise ConfigError(f"beta={training_args.beta} is set, but betas={script_args.betas} decides the runs and would "
                          f"ignore it; for one run use --betas {training_args.beta:g} (or remove betas from the config)")
    return script_args.betas


def check_inputs(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig, betas) -> None:
    bad = [b for b in betas if not (math.isfinite(b) and b > 0)]
    if bad:
        raise ConfigError(f"beta must be a number > 0 (got {bad}); fix beta/betas in the config")
    check_learning_rate(training_args)
    check_positive(script_args, "max_train_pairs", "total_batch_size")
    check_model("model_name_or_path", model_args.model_name_or_path)
    if training_args.label_smoothing and "sigmoid" in training_args.loss_type:
        raise ConfigError(
            f"label_smoothing={training_args.label_smoothing} with loss_type sigmoid: TRL {trl.__version__} ignores "
            "label smoothing in the sigmoid loss; use loss_type robust for noisy preference labels, or set "
            "label_smoothing to 0"
        )
    pairs = read_pairs(script_args.pairs_file)  # fails with file, line and field on any malformed pair
    # The model's embedding size, not the tokenizer's length: a padded vocabulary can sample ids beyond the latter.
    vocabulary = AutoConfig.from_pretrained(model_args.model_name_or_path).get_text_config().vocab_size
    for number, pair in enumerate(pairs, start=1):
        too_large = [i for field in REQUIRED_IDS for i in pair[field] if i >= vocabulary]
        if too_large:
            raise PairFileError(
                f"{script_args.pairs_file}, line {number}: token id {too_large[0]} is outside the vocabulary of "
                f"{model_args.model_name_or_path} ({vocabulary} tokens); the pairs were sampled with another "
                "tokenizer: fix model_name_or_path or regenerate the pairs")
    pairs_manifest = read_manifest(os.path.dirname(os.path.abspath(script_args.pairs_file)))
    if not (pairs_manifest and pairs_manifest.get("finished")):
        raise PairFileError(f"pairs_file={script_args.pairs_file!r}: no finished manifest.json beside it, so it was not "
                            "written by preference_pairs.py or its run is unfinished; finish that stage first")
    pairs_source = pairs_manifest["inputs"]["model"]
    reference = describe_model_input(model_args.model_name_or_path)
    if not same_model(pairs_source, reference):
        raise ConfigError(
            f"{script_args.pairs_file} was sampled from {pairs_source['path']} (run {pairs_source['run_id']}), but "
            f"model_name_or_path is {reference['path']} (run {reference['run_id']}); DPO's reference must be the "
            "model that generated the pairs: fix model_name_or_path or regenerate the pairs"
        )


def same_model(a: dict, b: dict) -> bool:
    """A stage's run id names its output wherever the directory moves; a hub name has none: compare paths."""
    if a["run_id"] or b["run_id"]:
        return a["run_id"] == b["run_id"]
    return a["path"] == b["path"]


def load_pairs_dataset(script_args: DPOScriptArguments, cache_dir: str):
    # The datasets cache sits beside the runs, on persistent storage, so a requeued job finds the cached
    # reference log-probs (they are keyed on this data set's fingerprint and the reference model's hash).
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


def train_one(beta, script_args, training_args, model_args, dataset, tokenizer, stop) -> bool:
    """Train (or resume, or skip) the run for one beta; returns False when stopped by a signal."""
    run_dir = os.path.join(training_args.output_dir, run_name(training_args.loss_type[0], beta,
                                                                training_args.label_smoothing, model_args.use_peft))
    args = dataclasses.replace(training_args, beta=beta, output_dir=run_dir, run_name=os.path.basename(run_dir))
    configs = {"script": script_args, "training": args, "model": model_args}
    pairs_dir = os.path.dirname(os.path.abspath(script_args.pairs_file))
    inputs = {"pairs": {**describe_file_input(script_args.pairs_file), "run_id": read_manifest(pairs_dir)["run_id"]},
              "model": describe_model_input(model_args.model_name_or_path)}
    state = training_args.distributed_state
    with main_process_lock(run_dir, "dpo.py"):
        plan = plan_output(run_dir, run_settings(configs, inputs), lambda d: bool(checkpoint_steps(d)),
                           script_args.overwrite, "DPO run", state.is_main_process, state.wait_for_everyone)
        if plan.skip:
            return True
        args.output_dir = plan.directory
        return train_locked(plan, args, script_args, model_args, dataset, tokenizer, stop,
                            Manifest(plan.directory, "dpo", configs, inputs))


def train_locked(plan, args, script_args, model_args, dataset, tokenizer, stop, manifest) -> bool:
    with own_wandb_run(args, manifest.run_id):
        trainer = new_trainer(args, model_args, dataset, tokenizer,
                              [SaveAndStopOnSignal(stop), DropOptimizerFromOldCheckpoints()])
        trainer.train(resume_from_checkpoint=resumable_checkpoint(plan.directory))
    if stop.requested:
        return False
    trainer.save_model(plan.directory)
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(os.path.join(plan.directory, "trainer_state.json"))
        plot_training_curves(os.path.join(plan.directory, "trainer_state.json"),
                             os.path.join(plan.directory, "training_curves.png"), args.run_name)
    trainer.accelerator.wait_for_everyone()
    last_log = next((e for e in reversed(trainer.state.log_history) if "rewards/accuracies" in e), {})
    manifest.finish(global_step=trainer.state.global_step, checkpoints=[s for s, _ in checkpoint_steps(plan.directory)],
                    final_metrics=last_log, pairs_per_step=args.per_device_train_batch_size * args.world_size
                    * args.gradient_accumulation_steps, processes=args.world_size)
    if trainer.accelerator.is_main_process:
        plan.finish()
    trainer.accelerator.wait_for_everyone()
    print(f"{plan.final}: {trainer.state.global_step} steps, last logged preference accuracy "
          f"{last_log.get('rewards/accuracies', float('nan')):.3f}")
    return True


def set_total_batch_size(script_args: DPOScriptArguments, training_args: DPOConfig) -> None:
    if not script_args.total_batch_size:
        return
    per_step = training_args.world_size * training_args.gradient_accumulation_steps
    if script_args.total_batch_size % per_step:
        raise ConfigError(f"total_batch_size={script_args.total_batch_size} is not divisible by processes "
                         f"({training_args.world_size}) x gradient_accumulation_steps "
                         f"({training_args.gradient_accumulation_steps})")
    training_args.per_device_train_batch_size = script_args.total_batch_size // per_step


def main(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> int:
    state = training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    betas = sweep_betas(script_args, training_args)
    set_total_batch_size(script_args, training_args)
    check_inputs(script_args, training_args, model_args, betas)
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
        **(training_args.model_init_kwargs or {}),
    }
    dataset = load_pairs_dataset(script_args, os.path.join(training_args.output_dir, ".datasets_cache"))
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
    stop = StopRequest()
    for beta in betas:
        if not train_one(beta, script_args, training_args, model_args, dataset, tokenizer, stop):
            return exit_resumable()
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
