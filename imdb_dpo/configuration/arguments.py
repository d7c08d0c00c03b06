"""Command-line and YAML configuration for every stage.

Each stage parses its own argument dataclass together with TRL's config classes through `TrlParser`:
YAML values become defaults and command-line flags override them. On top of TRL this module adds two
things: a misspelt YAML key is an error naming the key and the file (with the nearest valid key), and
`${VAR}` in a YAML string (and in the project's own path defaults) is expanded from the environment, with
`OUTPUT_ROOT` defaulting to the repository, so that one variable moves every output of a preset.
"""

import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field

import yaml
from transformers import TrainingArguments
from trl import TrlParser

from imdb_dpo.configuration.batch_size import BatchArguments, derived_batch
from imdb_dpo.configuration.errors import ConfigError, first_line
from imdb_dpo.planning.fitting import take_auto


# Outputs default to the repository's own folders, wherever the command is run from.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class DataArguments:
    """Where the reviews come from: the hub data set by default, or local files."""

    dataset_name: str = field(
        default="stanfordnlp/imdb",
        metadata={"help": "Hub data set with 'train' and 'test' splits; ignored when train_file/test_file are set."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Local json/jsonl/csv/parquet file of training reviews."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local file of held-out (test) reviews."})
    text_column: str = field(default="text", metadata={"help": "Column holding the review text."})


@dataclass
class SFTScriptArguments(BatchArguments, DataArguments):
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training reviews."})
    max_eval_samples: int | None = field(default=500, metadata={"help": "Held-out reviews for the eval loss."})
    overwrite: bool = field(default=False, metadata={"help": "Delete a finished run in output_dir and train again."})


@dataclass
class TinyBaseArguments:
    """The offline tiny preset: a generated review corpus, a BPE tokenizer and a small GPT-2."""

    output_dir: str = "${OUTPUT_ROOT}/outputs/tiny/base"
    seed: int = 0
    num_train_reviews: int = 4000
    num_test_reviews: int = 500
    vocab_size: int = 1024
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 256
    overwrite: bool = False


def _known_keys(dataclass_types) -> set[str]:
    return {f.name for dc in dataclass_types for f in dataclasses.fields(dc)} | {"env"}


def _takes_a_collection(annotation) -> bool:
    """Whether a field typed `annotation` may hold a list or a mapping (list[...], dict, their unions, anything
    unresolved); argparse hands a YAML list to a scalar field untouched, and the trainer fails on it much later."""
    if annotation in (list, dict, tuple, typing.Any, object) or isinstance(annotation, str):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_a_collection(a) for a in typing.get_args(annotation))
    return origin is not None or not isinstance(annotation, type)  # list[int], dict[...], Literal, ...: trust them


def _field_types(dataclass_types) -> dict:
    found = {}
    for dc in dataclass_types:
        try:
            hints = typing.get_type_hints(dc)
        except Exception:  # a forward reference that does not resolve: keep the raw annotations
            hints = {}
        for f in dataclasses.fields(dc):
            found.setdefault(f.name, hints.get(f.name, f.type))
    return found


def _expand_env(value):
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                continue  # SafeLoader's own error names an unhashable key
            if key in seen:
                raise ConfigError(f"{self.name}, line {line}: {key!r} is given twice (first on line {seen[key]}); "
                                  "YAML would keep the last silently: keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def strict_yaml(path: str):
    """The file's YAML, read strictly: a tab, a key given twice or a syntax error is a ConfigError naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start}); a config is a YAML "
                          "text file") from None
    for number, line in enumerate(text.splitlines(), 1):
        if "\t" in line:
            raise ConfigError(f"{path}, line {number}: a tab; YAML reads tabs differently from spaces (or not at all): "
                              "indent and separate with spaces")
    loader = _StrictLoader(text)
    loader.name = path
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({error.problem or error.context}); fix the file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({first_line(error)}); fix the file") from None
    finally:
        loader.dispose()


def _read_yaml_config(path: str, dataclass_types) -> dict:
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a folder (passed with --config); name a YAML file, e.g. "
                          "configs/tiny/dpo.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (passed with --config)")
    config = strict_yaml(path)
    if config is None or config == {}:
        raise ConfigError(f"{path}: the config is empty (passed with --config); give the stage's settings as key: value "
                          "lines, or start from the preset's (configs/tiny/ or configs/gpt2-large/)")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the file must be a YAML mapping of key: value")
    not_names = [k for k in config if not isinstance(k, str)]
    if not_names:
        raise ConfigError(f"{path}: {not_names[0]!r} is not a setting's name (a key must be a name such as seed); fix "
                          "or remove it")
    if "env" in config and not isinstance(config["env"] or {}, dict):
        raise ConfigError(f"{path}: env must be a mapping of variable: value (e.g. env: {{HF_HOME: /scratch/hf}}), "
                          f"not {config['env']!r}")
    known = _known_keys(dataclass_types)
    unknown = [k for k in config if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            if "runs_root" in known and key.endswith("_dir"):  # one method's folder of runs, as eval.yaml had them
                hints.append(f"{key!r} (the methods' runs are now found under runs_root: <runs_root>/<method>/; "
                             "methods: [...] evaluates some of them)")
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{path}: unknown config key(s) {', '.join(hints)}; fix or remove them")
    types_of = _field_types(dataclass_types)
    for key, value in config.items():
        if key != "env" and isinstance(value, (list, dict)) and not _takes_a_collection(types_of[key]):
            kind = "a list" if isinstance(value, list) else "a mapping"
            raise ConfigError(f"{path}: {key} is {kind} ({value!r}), but {key} takes one value; give one (a sweep over "
                              "several is a list only in betas, kl_coefs, alphas and seeds; for other values run the stage "
                              "once per value, each into its own output_dir)")
    for key, value in (config.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    return config


def parse_config(dataclass_types, argv=None, program: str = "this stage"):
    """Parse `--config FILE` plus command-line overrides into one instance of each dataclass type."""
    os.environ.setdefault("OUTPUT_ROOT", REPOSITORY)
    argv = list(sys.argv[1:] if argv is None else argv)
    # --help's usage names the stage as it was started (train.py <method>), where the caller says so
    parser = TrlParser(dataclass_types, **({"prog": program} if program.endswith(".py") or " " in program else {}))
    source = "the command line"

    def refuse(message):  # argparse's own error prints the whole usage and names no file
        raise ConfigError(f"{program}: {message} (from {source}); fix the value")

    parser.error = refuse
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if argv.count("--config") > 1:
        raise ConfigError("--config is given more than once; give one config file (flags after it override its values)")
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 == len(argv) or argv[i + 1].startswith("--"):
            raise ConfigError("--config needs a value: the path of a YAML file, e.g. --config configs/tiny/dpo.yaml")
        config_path = argv[i + 1]
        del argv[i : i + 2]
        config = _expand_env(_read_yaml_config(config_path, dataclass_types))
        source = f"{config_path} or the command line"
    else:
        config = {}
    # `auto` pass sizes: the field's default until the stage fits them to its device (imdb_dpo/planning/fitting.py)
    fields_here = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
    try:
        config, argv, autos = take_auto(config, argv, fields_here)
    except ConfigError as error:
        raise ConfigError(f"{program}: {error} (from {source})") from None
    if config:
        parser.set_defaults_with_config(**config)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ConfigError:
        raise
    except ImportError as error:  # e.g. a launch with configs/accelerate/deepspeed_zero2.yaml where DeepSpeed is absent
        raise ConfigError(f"{program}: {first_line(error).rstrip('.')}. Install it (the launcher's config asks for it: `pip "
                          "install deepspeed` for deepspeed_zero2.yaml), or launch with configs/accelerate/ddp.yaml") \
            from None
    except ValueError as error:
        known = _known_keys(dataclass_types)
        unknown = [a for a in argv if a.startswith("--") and a[2:].split("=")[0].replace("-", "_") not in known]
        if unknown:  # HfArgumentParser's "Some specified arguments are not used"
            hints = []
            for flag in unknown:
                close = difflib.get_close_matches(flag[2:].split("=")[0].replace("-", "_"), known, n=1)
                hints.append(flag + (f" (did you mean --{close[0]}?)" if close else ""))
            raise ConfigError(f"{', '.join(hints)} {'is' if len(hints) == 1 else 'are'} not a setting of {program}; "
                              "fix or remove it (--help lists every setting)") from None
        strategies = re.search(r"requires the save and eval strategy to match.*Evaluation strategy: \w+\.(\w+).*"
                               r"Save strategy: \w+\.(\w+)", str(error), re.S)
        if strategies:
            evaluation, save = (s.lower() for s in strategies.groups())
            raise ConfigError(f"{program}: load_best_model_at_end keeps the best evaluated checkpoint, so it needs "
                              f"save_strategy and eval_strategy alike (now save_strategy {save}, eval_strategy "
                              f"{evaluation}): set both to epoch, as the presets do") from None
        # The configs' own validation, e.g. bf16 (TrainingArguments' default) on a machine without a GPU.
        raise ConfigError(f"{program}: {error} (set it in the config or on the command line; the presets in "
                          "configs/ set every such option)") from None
    given = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    for obj in parsed:
        # What the user typed, apart from the config's values: an input named there must exist (`given_on_command_line`).
        obj.given_on_command_line = sorted(given & {f.name for f in dataclasses.fields(obj)})
        # The project's own defaults name paths as ${OUTPUT_ROOT}/...; expand them as the YAML values are.
        for f in dataclasses.fields(obj):
            if f.type in (str, str | None) and isinstance(getattr(obj, f.name), str) and "$" in getattr(obj, f.name):
                setattr(obj, f.name, os.path.expandvars(getattr(obj, f.name)))
        # One `--lora_target_modules c_attn` arrives as a str, which peft reads as a full-match regex
        # over module paths and so matches nothing; a module name is what the user meant.
        modules = getattr(obj, "lora_target_modules", None)
        if isinstance(modules, str) and modules != "all-linear":
            obj.lora_target_modules = [modules]
    parsed = _with_derived_batch(parsed, program, autos)
    for obj in parsed:
        obj.auto_sizes = tuple(sorted(autos & {f.name for f in dataclasses.fields(obj)}))
    return parsed


def _with_derived_batch(parsed, program: str, autos: set = frozenset()):
    """A training stage's TrainingArguments with the batch split its examples_per_step needs on this many processes
    (imdb_dpo/configuration/batch_size.py)."""
    script = next((p for p in parsed if isinstance(p, BatchArguments)), None)
    i = next((i for i, p in enumerate(parsed) if isinstance(p, TrainingArguments)), None)
    if script is None or i is None:
        return parsed
    if "per_device_train_batch_size" in autos and script.examples_per_step is None:
        raise ConfigError(f"{program}: per_device_train_batch_size: auto needs examples_per_step, the examples of one "
                          "optimizer step, which the stage splits into passes that fit its device; set "
                          "examples_per_step (the presets' 64), or give per_device_train_batch_size a number")
    parsed = list(parsed)
    derived = derived_batch(script, parsed[i])
    if any(getattr(parsed[i], key) != value for key, value in derived.items()):
        try:
            parsed[i] = dataclasses.replace(parsed[i], **derived)  # __post_init__ again, on the derived batch
        except ValueError as error:
            raise ConfigError(f"{program}: {error} (with examples_per_step={script.examples_per_step} on "
                              f"{parsed[i].world_size} processes)") from None
    return tuple(parsed)


@dataclass
class RewardArguments:
    """The sentiment reward of stage 2, which the evaluation and RLOO use too."""

    reward_model: str = field(
        default="siebert/sentiment-roberta-large-english",
        metadata={"help": "A sequence classifier with a POSITIVE label, or 'vader' for the offline lexicon; for RLOO "
                          "also a folder reward_model.py finished, whose learned score it then optimises (rloo_rm)."},
    )
    reward_positive_label: str = field(
        default="POSITIVE", metadata={"help": "The reward model's label whose probability is the reward."}
    )
    reward_batch_size: int = 64
    reward_dtype: str = field(
        default="float32",
        metadata={"help": "Precision of the reward classifier (float32, bfloat16 or float16). A bf16 classifier gives a "
                          "different reward, so this is a setting that decides results (docs/precision.md)."},
    )


@dataclass
class SamplingArguments(RewardArguments, DataArguments):
    """Prompts, sampling and reward: shared by pair generation (train split) and evaluation (test split)."""

    num_prompts: int = field(default=1000, metadata={"help": "Review prefixes to sample from (paper: 25,000)."})
    min_prompt_tokens: int = 2
    max_prompt_tokens: int = 8
    min_review_chars: int = field(default=200, metadata={"help": "Skip reviews shorter than this."})
    samples_per_prompt: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = field(default=0, metadata={"help": "0 disables top-k (the paper samples from the full distribution)."})
    top_p: float = 1.0
    batch_size: int = field(default=64, metadata={"help": "Prompts per generation batch (rows = this x samples)."})
    seed: int = 0
    sampling_dtype: str = field(
        default="float32",
        metadata={"help": "Precision of the model that samples (float32, bfloat16 or float16). float32 samples the "
                          "model's own policy; bfloat16 samples a slightly different one, faster (docs/precision.md)."},
    )
    use_cpu: bool = field(
        default=False, metadata={"help": "Run on the CPU even where a GPU is available (as TrainingArguments' use_cpu)."}
    )
    allow_fewer_prompts: bool = field(
        default=False, metadata={"help": "Go on with fewer prompts when fewer reviews qualify than num_prompts asks."}
    )


@dataclass
class PairsArguments(SamplingArguments):
    model_name_or_path: str = field(
        default="${OUTPUT_ROOT}/outputs/gpt2-large/sft", metadata={"help": "The SFT model that samples."}
    )
    output_dir: str = "${OUTPUT_ROOT}/generations/gpt2-large"
    overwrite: bool = field(
        default=False, metadata={"help": "Generate again; the finished files are replaced only once the new ones are."}
    )
    pairing: str = field(default="all", metadata={"help": "'all' pairs with different rewards, or 'best_vs_worst'."})
    min_reward_margin: float = 0.0
    shard_index: int = 0
    num_shards: int = 1
    merge: bool = field(default=False, metadata={"help": "Join the finished shards into completions/pairs files."})


@dataclass
class CheckpointArguments(BatchArguments):
    """When the runs that the frontier evaluates save their checkpoints (see imdb_dpo/lifecycle/checkpoints.py)."""

    checkpoint_schedule: str = field(
        default="log+steps",
        metadata={"help": "The steps that are points of the frontier. 'lr-log': where the learning so far (the sum of "
                          "the learning rates of the steps taken) reaches 1/2, 1/4, ... of the run's, schedule_points "
                          "of them (a warm-up's first steps, which learn almost nothing, get none); 'log+steps': steps "
                          "1, 2, 4, ... below save_steps, then every save_steps (the default); 'log': 1, 2, 4, 8, ... to "
                          "the end; 'steps': every save_steps only. The last step always is one."},
    )
    schedule_points: int = field(
        default=11,
        metadata={"help": "Points of an lr-log schedule: the first after 1/2^(points-1) of the run's learning."},
    )
    frontier_eval: str = field(
        default="",
        metadata={"help": "An eval.py config (e.g. configs/gpt2-large/eval.yaml): evaluate the policy in memory at each "
                          "step of checkpoint_schedule, under that config's settings, writing the records eval.py "
                          "gathers; checkpoints are then written only to resume (every resume_minutes, on a stop, and "
                          "the final model). A relative path not found in the current directory is looked for in the "
                          "repository. Unset or \"\": a checkpoint is saved at each step of the schedule and kept for "
                          "eval.py."},
    )
    resume_minutes: float = field(
        default=30.0,
        metadata={"help": "With frontier_eval: minutes of a run between the checkpoints that resume it (0: none but a "
                          "stop's and the final model). A kill loses at most this much work; each checkpoint of GPT-2 "
                          "Large writes its weights and optimizer state (6-9 GB)."},
    )
    seeds: list[int] | None = field(
        default=None,
        metadata={"help": "One run per seed for each setting (e.g. [0, 1, 2]), named <run>_seed<n>: the seed sets the "
                          "data order, the initialisation of anything new and the sampling, never the pairs. Unset: "
                          "one run per setting with `seed`, named <run>."},
    )
    keep_final_model_seeds: list[int] | None = field(
        default=None,
        metadata={"help": "The seeds whose runs keep their final model (e.g. [0]); the other seeds' runs keep their "
                          "records alone, which hold every point of the frontier, the last included (needs "
                          "frontier_eval): three seeds on the disk of one. Unset: every run keeps it; a run without "
                          "`seeds` always does."},
    )


@dataclass
class DPOScriptArguments(CheckpointArguments):
    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl", metadata={"help": "Pairs from stage 2."}
    )
    betas: list[float] | None = field(
        default=None, metadata={"help": "Sweep: one run per beta, in sequence. Unset: the single --beta."}
    )
    max_train_pairs: int | None = None
    overwrite: bool = field(default=False, metadata={"help": "Delete finished runs of this sweep and train again."})
    reference_only: bool = field(
        default=False,
        metadata={"help": "Only compute and cache the reference log-probs (a job before the SLURM array of DPO runs)."},
    )


@dataclass
class PolicySamplingArguments(RewardArguments):
    """What a method that samples from its policy as it trains (RLOO, online DPO) samples with."""

    generation_dtype: str | None = field(
        default=None,
        metadata={"help": "Sample from a copy of the policy in this dtype (bfloat16), refreshed from its weights before "
                          "every generation, instead of from the training model under bf16 autocast, which casts every "
                          "weight again at each token (imdb_dpo/models/generation_copy.py). Unset: the training model."},
    )
    generation_compile: bool = field(
        default=False,
        metadata={"help": "Compile the generation copy's decode step (static cache; one CUDA graph a step on a GPU) "
                          "instead of launching its kernels one by one; needs generation_dtype."},
    )


@dataclass
class RLOOScriptArguments(PolicySamplingArguments, CheckpointArguments):
    """Online RL from the SFT model on the pair file's prompts, rewarded by the sentiment model (RLOO's, and that of
    each method that samples as it trains through imdb_dpo/methods/rloo.run_sampled_rl)."""

    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl",
        metadata={"help": "Stage 2's pair file: its prompts (each once, with their exact token ids) are the prompts "
                          "sampled from, so this method and DPO train on the same prefixes."},
    )
    kl_coefs: list[float] | None = field(
        default=None, metadata={"help": "Sweep: one run per KL coefficient (the trainer config's beta), in sequence. Unset: --beta."}
    )
    max_train_prompts: int | None = None
    overwrite: bool = field(default=False, metadata={"help": "Replace finished runs of this sweep once the new ones finish."})


@dataclass
class PreferredFTScriptArguments(CheckpointArguments):
    """The paper's Preferred-FT baseline: supervised fine-tuning of the SFT model on the chosen completions."""

    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl", metadata={"help": "Pairs from stage 2."}
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N distinct (prompt, chosen completion) examples."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a finished run once the new one has finished."})


@dataclass
class UnlikelihoodScriptArguments(CheckpointArguments):
    """The DPO paper's Unlikelihood baseline: raise log p of the chosen completion, push the rejected one down."""

    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl", metadata={"help": "Pairs from stage 2."}
    )
    alphas: list[float] | None = field(
        default=None, metadata={"help": "Sweep: one run per alpha (the unlikelihood term's weight), in sequence. "
                                        "Unset: the single --alpha."}
    )
    max_train_pairs: int | None = None
    overwrite: bool = field(default=False, metadata={"help": "Replace finished runs of this sweep once the new ones finish."})


@dataclass
class PairMethodArguments(CheckpointArguments):
    """A method trained on stage 2's pairs and swept over its beta (ORPO, CPO, SimPO: train.py <method>)."""

    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl", metadata={"help": "Pairs from stage 2."}
    )
    betas: list[float] | None = field(
        default=None, metadata={"help": "Sweep: one run per beta, in sequence. Unset: the single --beta."}
    )
    max_train_pairs: int | None = None
    overwrite: bool = field(default=False, metadata={"help": "Replace finished runs of this sweep once the new ones finish."})


@dataclass
class KTOScriptArguments(CheckpointArguments):
    """KTO on stage 2's samples as unpaired data: a completion is desirable when its reward is above its prompt's
    median, undesirable when below, left out when equal (imdb_dpo/methods/kto.py)."""

    completions_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/completions.jsonl",
        metadata={"help": "Stage 2's completions.jsonl: every sample of every prompt, with its reward."},
    )
    betas: list[float] | None = field(
        default=None, metadata={"help": "Sweep: one run per beta, in sequence. Unset: the single --beta."}
    )
    max_train_examples: int | None = field(default=None, metadata={"help": "Use only the first N labelled completions."})
    overwrite: bool = field(default=False, metadata={"help": "Replace finished runs of this sweep once the new ones finish."})


@dataclass
class OnlineDPOScriptArguments(PolicySamplingArguments, CheckpointArguments):
    """Online DPO (train.py online_dpo): each step samples two completions of each prompt from the current policy, ranks
    them by stage 2's reward and takes a DPO step on them against the SFT model (imdb_dpo/methods/online_dpo.py)."""

    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl",
        metadata={"help": "Stage 2's pair file: its prompts (each once, with their exact token ids) are the prompts "
                          "sampled at every step, as RLOO's; its pairs are not used."},
    )
    betas: list[float] | None = field(
        default=None, metadata={"help": "Sweep: one run per beta, in sequence. Unset: the single --beta."}
    )
    max_train_prompts: int | None = None
    overwrite: bool = field(default=False, metadata={"help": "Replace finished runs of this sweep once the new ones finish."})


@dataclass
class RewardModelScriptArguments(BatchArguments):
    """A learned reward model (TRL's RewardTrainer, Bradley-Terry) on the pair file: the paper's PPO row optimises it."""

    pairs_file: str = field(
        default="${OUTPUT_ROOT}/generations/gpt2-large/pairs.jsonl", metadata={"help": "Pairs from stage 2."}
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of the prompts (with all their pairs) held out to measure pair accuracy; a prompt is "
                          "never in both splits."},
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "Use only the first N pairs of the file."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a finished run once the new one has finished."})


@dataclass
class EvalArguments(SamplingArguments):
    sft_model: str = field(default="${OUTPUT_ROOT}/outputs/gpt2-large/sft", metadata={"help": "Also the KL reference."})
    base_model: str | None = field(default=None, metadata={"help": "Pre-SFT model, shown as a point when set."})
    runs_root: str = field(
        default="${OUTPUT_ROOT}/outputs/gpt2-large",
        metadata={"help": "The folder holding a folder of runs per method, <runs_root>/<method>/ (dpo, rloo, ...: "
                          "python train.py lists them); a method without its folder was not run. Given on the command "
                          "line, it must exist; \"\" evaluates the SFT model (and base model) alone."},
    )
    methods: list[str] | None = field(
        default=None, metadata={"help": "Evaluate only these methods' runs (e.g. [dpo, rloo]); unset: every method."}
    )
    kl_budgets: list[float] = field(
        default_factory=lambda: [1.0, 3.0, 10.0],
        metadata={"help": "KL budgets (nats per sample, each > 0) of report.md's and frontier_budget.csv's table: per "
                          "method, the best reward among its checkpoints (and the SFT model) within each budget. "
                          "Reporting only: changing them re-writes the tables without evaluating anything again."},
    )
    output_dir: str = "${OUTPUT_ROOT}/outputs/gpt2-large/eval"
    best_of_n_samples: int = field(default=16, metadata={"help": "SFT samples per prompt for the best-of-N baseline."})
    kl_batch_size: int = field(
        default=32,
        metadata={"help": "Samples a KL pass takes at once, where sampling_dtype and kl_dtype differ (otherwise the KL "
                          "is summed while sampling, with no pass of its own). It changes no number."},
    )
    eval_precision: str = field(
        default="fp32",
        metadata={"help": "How the evaluation's float32 matrix products are computed on a GPU: 'fp32' (IEEE, the "
                          "default) or 'tf32' (tensor cores, 10 mantissa bits, several times faster). A setting of the "
                          "results: records made under each are kept apart. Pinned for the evaluation alone, whatever "
                          "a training stage's tf32 or torch_compile set for its own steps."},
    )
    report_prompts: int = field(default=3, metadata={"help": "Prompts shown side by side in report.md."})
    kl_dtype: str = field(
        default="float32",
        metadata={"help": "Precision of the KL pass over policy and reference. Keep float32: bf16 logits of GPT-2's "
                          "magnitude (~100) are rounded to steps of 0.5, which adds ~0.3-1 nat of KL per sample."},
    )
    preset: str = field(default="", metadata={"help": "Name of the preset, shown in report.md."})
    report_to: str = field(
        default="none",
        metadata={"help": "'wandb': log summary.csv, comparisons.csv and frontier_budget.csv as tables, the plots as "
                          "images and report.md as an artifact to a wandb run named <preset>-eval, in the training "
                          "runs' project (WANDB_PROJECT); 'none' (the default): no tracker."},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Evaluate with other settings than the finished evaluation in output_dir (its records are "
                          "kept; summary, plot and report are replaced once the new evaluation has finished); with the "
                          "same settings, write summary, plots and report again from the records."},
    )
