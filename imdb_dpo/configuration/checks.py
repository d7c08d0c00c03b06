"""Checks that run before a stage touches any output: the numbers it was given and the models it will load.

Each failure is a `ConfigError` naming the field, the value and the fix, so that a typo costs a message instead
of a traceback minutes into a job (or a finished output deleted by `--overwrite` before the typo shows)."""

import math
import os
import re

from imdb_dpo.configuration.arguments import ConfigError
from imdb_dpo.configuration.errors import first_line
from imdb_dpo.configuration.precision import inference_dtype

# A hub model id is `name` or `owner/name`; anything else that does not exist locally is a missing directory.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model",
                    "sentencepiece.bpe.model")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def check_positive(obj, *fields: str) -> None:
    for name in fields:
        value = getattr(obj, name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name}={value}: must be a finite number > 0; fix it in the config or on the command line")


def check_seed_list(field: str, seeds) -> None:
    """`seeds` (a config's list) holds integers >= 0 only."""
    if not isinstance(seeds, list) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"{field}={seeds!r}: a list of integers >= 0, e.g. {field}: [0, 1, 2] in the config or "
                          f"--{field} 0 1 2")


def check_training(training_args) -> None:
    """A trainer config's numbers: learning rate, batch sizes, length, the run's length and the save interval."""
    check_positive(training_args, "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps")
    if getattr(training_args, "max_length", None) is not None:
        check_positive(training_args, "max_length")
    if not (training_args.max_steps > 0 or training_args.num_train_epochs > 0):
        raise ConfigError(f"num_train_epochs={training_args.num_train_epochs} with max_steps={training_args.max_steps}: "
                          "the run would take no step; set num_train_epochs > 0 (or max_steps > 0)")
    if training_args.save_strategy == "steps" and not training_args.save_steps > 0:
        raise ConfigError(f"save_steps={training_args.save_steps}: must be > 0 (a number of steps, or below 1 a "
                          "fraction of the run)")
    check_saved_precision(training_args)


def check_saved_precision(training_args) -> None:
    """DeepSpeed with bf16 or fp16 holds the model's weights in that dtype (its fp32 master copy is the optimizer's),
    and the Trainer saves the model's: every checkpoint and the final model would be rounded, and the evaluation
    would measure the rounding as KL, while the manifest says float32."""
    from imdb_dpo.lifecycle.distributed import sharded_launch

    half = training_args.bf16 or training_args.fp16 or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") in (
        "bf16", "fp16")
    if sharded_launch() == "DeepSpeed" and half:
        raise ConfigError("DeepSpeed with bf16 (or fp16) trains and saves the model's weights in that dtype, so every "
                          "checkpoint and the final model would be rounded to it; launch with "
                          "configs/accelerate/ddp.yaml instead (fp32 weights under bf16 autocast; GPT-2 Large fits one "
                          "GPU), or with fsdp.yaml, or set bf16: false (and mixed_precision: no in the accelerate "
                          "config) to train in fp32 under DeepSpeed")


def check_sampling(args) -> None:
    """The prompt, sampling and reward settings shared by pair generation and evaluation."""
    check_positive(args, "num_prompts", "samples_per_prompt", "max_new_tokens", "batch_size", "reward_batch_size",
                   "temperature", "min_prompt_tokens", "max_prompt_tokens")
    if args.top_k < 0:
        raise ConfigError(f"top_k={args.top_k}: must be >= 0 (0 disables top-k sampling)")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"top_p={args.top_p}: must lie in (0, 1] (1 disables nucleus sampling)")
    for field in ("sampling_dtype", "reward_dtype"):
        inference_dtype(args, field)
    if args.min_prompt_tokens > args.max_prompt_tokens:
        raise ConfigError(f"min_prompt_tokens={args.min_prompt_tokens} exceeds max_prompt_tokens="
                          f"{args.max_prompt_tokens}; the paper uses 2 and 8")


def check_policy_sampling(args, config_class: type, method: str) -> None:
    """The sampling settings of a TRL trainer that samples from the policy as it trains (RLOO, online DPO): this
    project samples the pair file's exact prompt ids with transformers' generate, so vLLM and its settings (and a
    cache implementation) would be ignored or would re-tokenise the prompts."""
    if args.use_vllm:
        raise ConfigError("use_vllm: true: this project samples the pair file's exact prompt ids with transformers; "
                          "remove use_vllm")
    if not args.temperature > 0:
        raise ConfigError(f"temperature={args.temperature}: must be > 0 ({method} samples)")
    top_k, top_p = args.top_k or 0, 1.0 if args.top_p is None else args.top_p
    if not top_k >= 0 or not 0 < top_p <= 1:
        raise ConfigError(f"top_k={args.top_k}, top_p={args.top_p}: top_k must be >= 0 (0: off) and top_p in (0, 1]")
    defaults = config_class.__dataclass_fields__
    unused = [name for name in defaults if (name.startswith("vllm_") or name == "cache_implementation")
              and getattr(args, name) != defaults[name].default]
    if unused:
        raise ConfigError(f"{unused[0]}: this project samples with transformers' generate and its default cache, so "
                          f"the {', '.join(unused)} setting would do nothing; remove it")


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(("./", "../", "~")) or not _HUB_ID.fullmatch(path)


def model_dir_problem(path: str, tokenizer: bool = True) -> str | None:
    """What keeps the local directory `path` from loading as a saved model, or None."""
    files = set(os.listdir(path))
    if not files & {"config.json", "adapter_config.json"}:
        return "the directory has no config.json, so it is not a saved model; point it at the folder save_pretrained wrote"
    if not files & set(_WEIGHT_FILES):
        return (f"the directory has no weights (none of {', '.join(_WEIGHT_FILES[:3])}, ...); the save was interrupted "
                "or the files were moved: point it at a complete model")
    if tokenizer and not files & set(_TOKENIZER_FILES):
        return ("the directory holds weights but no tokenizer (no tokenizer.json or vocab.json); save the tokenizer "
                "beside the weights (tokenizer.save_pretrained(path))")
    return None


def check_model(field: str, path: str, tokenizer: bool = True) -> None:
    """`path` is a model directory with a config, weights and (when `tokenizer`) a tokenizer, or a hub id that
    resolves (from the cache when the hub is offline)."""
    if not path:
        raise ConfigError(f"{field} is not set: give the model to load (a folder save_pretrained wrote, or a hub id such "
                          f"as gpt2-large) in the config or with --{field}")
    if os.path.isdir(path):
        problem = model_dir_problem(path, tokenizer)
        if problem:
            raise ConfigError(f"{field}={path!r}: {problem}")
        return
    if os.path.exists(path):
        raise ConfigError(f"{field}={path!r}: this is a file; it must be a model directory or a hub model id")
    if _looks_local(path):
        raise ConfigError(f"{field}={path!r}: no such directory (relative paths start at {os.getcwd()}); fix the path, "
                          "or run the stage that makes it first")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        cause = first_line(error, 10_000, type(error).__name__)
        raise ConfigError(
            f"{field}={path!r}: no local directory of that name (from {os.getcwd()}) and the hub model cannot be "
            f"loaded ({cause}). Fix the path, or on a machine without network download the model first (README.md, "
            "'The real run', step 2)") from None
