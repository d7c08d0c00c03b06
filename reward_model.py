"""A learned reward model: TRL's RewardTrainer (Bradley-Terry) on stage 2's pairs, the model the paper's PPO optimises.

    python reward_model.py --config configs/gpt2-large/reward_model.yaml

It starts from the SFT model (the paper's choice; any sequence-classification checkpoint with the pairs' tokenizer
will do) with a new scalar head, trains on the pairs' exact token ids, holds out validation_fraction of the prompts
with all their pairs, evaluates pair accuracy on them at each evaluation (each epoch in the presets) and keeps the
best (load_best_model_at_end, metric_for_best_model: eval_accuracy). The model goes to output_dir itself; rloo.py
optimises it when its reward_model names that folder. Like every training stage it resumes by itself, and is
skipped once finished with the same settings (--overwrite true replaces it once the new run has finished).
"""

import imdb_dpo.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import os
import sys

from transformers import set_seed
from trl import ModelConfig, RewardConfig, RewardTrainer

from imdb_dpo.checks import check_training, check_model, check_positive
from imdb_dpo.cli import run_stage
from imdb_dpo.config import ConfigError, RewardModelScriptArguments
from imdb_dpo.costs import check_memory, longest_pair, model_shape, reward_model_memory
from imdb_dpo.manifests import describe_model_input, read_manifest
from imdb_dpo.methods.reward_model import (CURVES, prompt_key, scored_sequences, split_by_prompt,
                                           validation_accuracies)
from imdb_dpo.modeling import load_tokenizer, same_tokenizer, set_model_init_kwargs
from imdb_dpo.pairs import PairFileError
from imdb_dpo.preemption import StopRequest, exit_resumable
from imdb_dpo.tracking import check_wandb_credentials
from imdb_dpo.training_runs import pairs_input, read_training_pairs, train_run

STAGES = (RewardModelScriptArguments, RewardConfig, ModelConfig)


def check_inputs(script_args: RewardModelScriptArguments, training_args: RewardConfig, model_args: ModelConfig):
    check_training(training_args)
    check_positive(script_args, "max_train_pairs")
    if not 0 < script_args.validation_fraction < 1:
        raise ConfigError(f"validation_fraction={script_args.validation_fraction}: must lie in (0, 1); the validation "
                          "prompts decide which epoch is kept")
    if training_args.eval_strategy == "no":
        raise ConfigError("eval_strategy: no: the reward model is judged by its validation pair accuracy; set "
                          "eval_strategy (and save_strategy) to epoch, as the presets do")
    check_model("model_name_or_path", model_args.model_name_or_path)
    if model_args.use_peft:
        raise ConfigError("use_peft: the reward model trains all its weights (a LoRA adapter on a new scalar head would "
                          "leave the head untrained, and rloo.py and eval.py load the model whole); remove use_peft")


def check_tokenizer(pairs_file: str, source: dict, model: str) -> None:
    """The start model must read the pairs' token ids as the model that sampled them wrote them."""
    if not os.path.isdir(source["path"]) or source["path"] == model:
        return
    if not same_tokenizer(source["path"], model):
        raise ConfigError(f"model_name_or_path={model!r} has another tokenizer than {source['path']}, which sampled "
                          f"{pairs_file}; the reward model reads the pairs' token ids, so start it from a model with "
                          "that tokenizer (the SFT model, as the paper does)")


def check_lengths(pairs: list[dict], max_length: int | None, pairs_file: str) -> None:
    """RewardTrainer drops longer pairs without a word; say so instead."""
    if max_length is None:
        return
    longest = max(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs)
    if longest > max_length:
        raise ConfigError(f"max_length={max_length}: {pairs_file} holds a pair of {longest} tokens (prompt + completion), "
                          "which RewardTrainer would drop; raise max_length")


def main(script_args: RewardModelScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> int:
    training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    check_inputs(script_args, training_args, model_args)
    pairs = read_training_pairs(script_args.pairs_file, model_args.model_name_or_path)[: script_args.max_train_pairs]
    pairs_in = pairs_input(script_args.pairs_file, None)
    check_tokenizer(script_args.pairs_file, read_manifest(os.path.dirname(os.path.abspath(script_args.pairs_file)))
                    ["inputs"]["model"], model_args.model_name_or_path)
    check_lengths(pairs, training_args.max_length, script_args.pairs_file)
    check_memory("The reward model", reward_model_memory(training_args, model_shape(
        model_args.model_name_or_path, classifier=True), longest_pair(pairs)), training_args.distributed_state.device)
    try:
        train, validation = split_by_prompt(pairs, script_args.validation_fraction, training_args.seed)
    except PairFileError as error:
        raise PairFileError(f"{script_args.pairs_file}: {error}") from None
    inputs = {"pairs": pairs_in, "model": describe_model_input(model_args.model_name_or_path)}
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")
    run_dir = training_args.output_dir
    training_args.run_name = training_args.run_name or os.path.basename(os.path.abspath(run_dir))

    def make_trainer(args, callbacks):
        set_seed(args.seed)
        return RewardTrainer(model=model_args.model_name_or_path, args=args, train_dataset=scored_sequences(train),
                             eval_dataset=scored_sequences(validation), processing_class=tokenizer,
                             callbacks=callbacks)

    def results(trainer):
        return {"validation_accuracy": validation_accuracies(trainer.state.log_history),
                "kept": {"metric": trainer.args.metric_for_best_model, "value": trainer.state.best_metric,
                         "checkpoint": trainer.state.best_model_checkpoint and
                         os.path.basename(trainer.state.best_model_checkpoint)},
                "pairs": {"train": len(train), "validation": len(validation)},
                "prompts": {"train": len({prompt_key(p) for p in train}),
                            "validation": len({prompt_key(p) for p in validation})}}

    if not train_run(run_dir, "reward_model", "reward model", {"script": script_args, "training": training_args,
                                                               "model": model_args},
                     inputs, script_args.overwrite, None, make_trainer, StopRequest(), CURVES, results):
        return exit_resumable()
    manifest = read_manifest(run_dir)
    accuracies = ", ".join(f"step {s}: {a:.3f}" for s, a in manifest["validation_accuracy"].items())
    kept = manifest["kept"]
    print(f"{run_dir}: finished; validation pair accuracy {accuracies}; kept "
          + (f"{kept['checkpoint']} ({kept['metric']} {kept['value']:.4g})" if kept["checkpoint"] else "the last step"))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
