"""A learned reward model (Bradley-Terry, TRL's RewardTrainer) on the pair file, and its score as a reward.

The DPO paper's PPO row optimises such a model (App. C.1: GPT-2 Large trained on the preference pairs, best
validation accuracy kept), not the true classifier: the gap between the two is where over-optimisation shows.

Prompts are split, not pairs: every pair of a validation prompt is held out, so a validation pair never shares
its prefix (and its sibling completions) with a training pair. The model reads the pairs' exact token ids,
prompt followed by completion; GPT-2 pads with EOS, so it scores the last token before any EOS, in training as
when it serves as a reward.
"""

import math
import os
import random

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, RewardConfig, RewardTrainer

from imdb_dpo.planning import costs
from imdb_dpo.configuration.checks import check_model, check_positive, check_training
from imdb_dpo.configuration.arguments import ConfigError, RewardModelScriptArguments
from imdb_dpo.planning.costs import check_memory, longest_pair, model_shape, reward_model_memory
from imdb_dpo.lifecycle.manifests import describe_model_input, read_manifest
from imdb_dpo.models.modeling import load_tokenizer, same_tokenizer, set_model_init_kwargs
from imdb_dpo.data.pairs import PairFileError
from imdb_dpo.planning.plan import Row, bound, trained_steps, trainer_samples
from imdb_dpo.lifecycle.preemption import StopRequest, exit_resumable
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import pairs_input, read_training_pairs, train_run
from imdb_dpo.methods import GPUCheck, Method

CURVES = [
    ("loss", "Bradley-Terry loss"),
    (("accuracy", "eval_accuracy"), "pair accuracy (train / validation)"),
    ("margin", "score margin (chosen - rejected)"),
]


def prompt_key(pair: dict):
    return pair.get("prompt_id") or tuple(pair["prompt_ids"])


def split_by_prompt(pairs: list[dict], validation_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) pairs, with a seeded random `validation_fraction` of the distinct prompts held out whole:
    at least one prompt on each side (an error below two prompts)."""
    prompts = sorted(dict.fromkeys(prompt_key(p) for p in pairs), key=str)
    if len(prompts) < 2:
        raise PairFileError(f"{len(pairs)} pairs of {len(prompts)} prompt cannot be split into training and validation "
                            "prompts; use more pairs (max_train_pairs)")
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: min(len(prompts) - 1, max(1, round(validation_fraction * len(prompts))))])
    train = [p for p in pairs if prompt_key(p) not in held_out]
    return train, [p for p in pairs if prompt_key(p) in held_out]


def scored_sequences(pairs: list[dict]) -> Dataset:
    """RewardTrainer's pre-tokenised columns: `chosen_ids` and `rejected_ids` are the whole sequences it scores."""
    return Dataset.from_list([{"chosen_ids": p["prompt_ids"] + p["chosen_ids"],
                               "rejected_ids": p["prompt_ids"] + p["rejected_ids"]} for p in pairs])


def validation_accuracies(log_history: list[dict]) -> dict[int, float]:
    """{optimizer step: validation pair accuracy} of each evaluation in a run's log."""
    return {e["step"]: e["eval_accuracy"] for e in log_history if "eval_accuracy" in e}


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
    shape, tokens = model_shape(model_args.model_name_or_path, classifier=True), longest_pair(pairs)
    check_memory("The reward model", lambda: reward_model_memory(training_args, shape, tokens),
                 training_args.distributed_state.device, training=training_args)
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

    if not train_run(run_dir, stage="reward_model", what="reward model",
                     configs={"script": script_args, "training": training_args, "model": model_args},
                     inputs=inputs, schedule=None, make_trainer=make_trainer, stop=StopRequest(), curves=CURVES,
                     results=results):
        return exit_resumable()
    manifest = read_manifest(run_dir)
    accuracies = ", ".join(f"step {s}: {a:.3f}" for s, a in manifest["validation_accuracy"].items())
    kept = manifest["kept"]
    print(f"{run_dir}: finished; validation pair accuracy {accuracies}; kept "
          + (f"{kept['checkpoint']} ({kept['metric']} {kept['value']:.4g})" if kept["checkpoint"] else "the last step"))
    return 0


def plan(preset, key, script_args, training_args, model_args) -> Row:
    shape = preset.shape(model_args.model_name_or_path, classifier=True)
    preset.produces(training_args.output_dir, model_args.model_name_or_path)
    counts = preset.pairs(script_args.pairs_file)
    pairs = min(counts["pairs"], script_args.max_train_pairs or math.inf)
    train = max(round(pairs * (1 - script_args.validation_fraction)), 1)
    tokens = min(counts["tokens"], training_args.max_length or math.inf)
    peak = preset.fit(lambda: costs.reward_model_memory(training_args, shape, tokens), training=training_args)
    steps = trained_steps(train, training_args)
    weights, optimizer = costs.checkpoint_bytes(shape, training_args.optim)
    epochs = math.ceil(training_args.num_train_epochs)
    rows_per_step = 2 * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    seconds = costs.compute_seconds(costs.training_flops(shape, steps * rows_per_step * tokens, tokens), training_args.bf16)
    seconds += epochs * costs.compute_seconds(costs.forward_flops(shape, 2 * (pairs - train) * tokens, tokens),
                                              training_args.bf16)
    return Row(key, 1, f"{steps:,}", f"{epochs} (one an epoch, for the best)",
               epochs * (weights + optimizer) + weights, weights, 2 * (weights + optimizer),
               peak, seconds,
               [f"{bound(int(train), counts['exact'])} training pairs"], exact=counts["exact"],
               samples=trainer_samples(steps, training_args), read=weights + epochs * weights)


METHODS = (Method(key="reward_model", title="the learned reward model", order=30, stages=STAGES, main=main,
                  plan=plan, sweep="-", on_frontier=False,
                  gpu_check=GPUCheck(("--num_train_epochs", "1", "--report_to", "none"), gpu_flags=(
                      "--max_train_pairs", "96"), cpu_flags=("--max_train_pairs", "48", "--per_device_eval_batch_size",
                                                             "8"))),)
