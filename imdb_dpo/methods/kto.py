"""KTO (Ethayarajh et al., 2024) on stage 2's samples as unpaired data, with TRL's KTOTrainer.

    python train.py kto --config configs/gpt2-large/kto.yaml

The labelling rule: within each prompt, a completion is desirable when its reward is above the median reward of that
prompt's samples, undesirable when below, and left out when equal to it (so an odd number of samples leaves the
middle one out, and a prompt whose samples all score the same gives none). The reference is the SFT model, which
must be the model that sampled them; runs go to <output_dir>/kto_beta<beta>/.
"""

import functools
import math
import os
import statistics

from transformers import AutoConfig
from trl import KTOConfig, KTOTrainer, ModelConfig

from imdb_dpo.configuration.arguments import KTOScriptArguments
from imdb_dpo.planning.costs import dpo_memory
from imdb_dpo.configuration.errors import ConfigError, UserError
from imdb_dpo.lifecycle.manifests import describe_model_input, read_manifest
from imdb_dpo.data.pairs import json_lines
from imdb_dpo.lifecycle.training_runs import pairs_input
from imdb_dpo.methods import GPUCheck
from imdb_dpo.methods.recipe import Recipe, plan_recipe, recipe_method

CURVES = [
    ("loss", "KTO loss"),
    (("rewards/chosen", "rewards/rejected"), "implied reward of desirable / undesirable"),
    ("kl", "KL estimate (mismatched pairs)"),
    (("logps/chosen", "logps/rejected"), "log-prob of desirable / undesirable"),
]
COLUMNS = ("prompt_ids", "completion_ids", "label")


class CompletionsFileError(UserError, ValueError):
    """A completions file KTO must not train on; the message names the file, the line and the field."""


def kto_examples(records: list[dict], limit: int | None = None) -> list[dict]:
    """The labelled completions of `records` (completions.jsonl's rows), in file order, by the module's rule."""
    rows = []
    for record in records:
        middle = statistics.median(c["reward"] for c in record["completions"])
        rows += [{"prompt_ids": record["prompt_ids"], "completion_ids": c["ids"], "label": c["reward"] > middle}
                 for c in record["completions"] if c["reward"] != middle]
    return rows[:limit]


def _is_ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)


def _fault(record) -> str | None:
    """The first field of a completions.jsonl row that is not what stage 2 writes, or None."""
    if not isinstance(record, dict):
        return "the line is not a JSON object"
    if not (_is_ids(record.get("prompt_ids")) and record["prompt_ids"]):
        return "prompt_ids is not a non-empty list of token ids"
    completions = record.get("completions")
    if not (isinstance(completions, list) and completions):
        return "completions is not a non-empty list"
    for i, c in enumerate(completions):
        if not (isinstance(c, dict) and _is_ids(c.get("ids")) and c["ids"]):
            return f"completions[{i}].ids is not a non-empty list of token ids"
        reward = c.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            return f"completions[{i}].reward is not a finite number"
    return None


def read_completions(path: str, model: str) -> list[dict]:
    """Every row of a finished stage 2's completions.jsonl, validated, with every token id inside `model`'s
    vocabulary (a CompletionsFileError naming the file, line and field otherwise)."""
    if os.path.isdir(path):
        raise CompletionsFileError(f"completions_file={path}: a folder; name the file itself "
                                   f"({os.path.join(path, 'completions.jsonl')})")
    if not os.path.isfile(path):
        raise CompletionsFileError(f"completions_file={path}: not found; run preference_pairs.py first (it writes "
                                   "completions.jsonl beside pairs.jsonl) or fix completions_file")
    changed = "the file was changed since stage 2 finished: restore it, or run preference_pairs.py --overwrite true"
    vocabulary = AutoConfig.from_pretrained(model).get_text_config().vocab_size
    records = []
    for where, record in json_lines(path, CompletionsFileError, changed):
        fault = _fault(record)
        if fault:
            raise CompletionsFileError(f"{where}: {fault}; {changed}")
        ids = record["prompt_ids"] + [i for c in record["completions"] for i in c["ids"]]
        if max(ids) >= vocabulary:
            raise CompletionsFileError(f"{where}: token id {max(ids)} is outside the vocabulary of {model} "
                                       f"({vocabulary} tokens); fix model_name_or_path or completions_file")
        records.append(record)
    recorded = (read_manifest(os.path.dirname(os.path.abspath(path))) or {}).get("num_prompts")
    if recorded is not None and recorded != len(records):
        raise CompletionsFileError(f"{path}: holds {len(records)} prompts, but stage 2 recorded {recorded}; {changed}")
    return records


def examples(script_args: KTOScriptArguments, model_args: ModelConfig) -> tuple[list[dict], dict]:
    model = model_args.model_name_or_path
    records = read_completions(script_args.completions_file, model)
    inputs = {"completions": pairs_input(script_args.completions_file, model, "KTO's reference", "completions_file"),
              "model": describe_model_input(model)}
    rows = kto_examples(records, script_args.max_train_examples)
    if not {r["label"] for r in rows} == {True, False}:
        raise CompletionsFileError(f"{script_args.completions_file}: its samples give {len(rows)} labelled completions "
                                   "but not both labels (every prompt's samples score alike); sample more per prompt "
                                   "or raise max_train_examples")
    return rows, inputs


def check(args) -> None:
    for name in ("desirable_weight", "undesirable_weight"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name}={value}: each KTO term's weight must be a number > 0 (KTO's paper keeps "
                              "desirable x count / (undesirable x count) in [1, 4/3]); fix it")
    if args.per_device_train_batch_size < 2:  # its KL term pairs each row with another row of the same pass
        raise ConfigError(f"KTO needs at least 2 rows a pass, and examples_per_step on {args.world_size} process(es) "
                          f"with per_device_train_batch_size as the most a pass holds leaves "
                          f"{args.per_device_train_batch_size}: choose examples_per_step with an even share a process "
                          "(e.g. a multiple of 2 x the processes) and per_device_train_batch_size >= 2")


def kto_name(args, beta: float) -> str:
    """`kto_beta0.1`; another loss (`kto_apo_zero_unpaired_beta0.1`) and unequal weights of the desirable and
    undesirable terms (`_w1-1.33`) where they are set."""
    loss = "" if args.loss_type == "kto" else f"_{args.loss_type}"
    weights = (args.desirable_weight, args.undesirable_weight)
    return f"kto{loss}_beta{beta:g}" + ("" if weights == (1.0, 1.0) else f"_w{weights[0]:g}-{weights[1]:g}")


class PretokenizedKTOTrainer(KTOTrainer):
    """KTOTrainer on the token ids that were sampled: TRL would re-tokenise text and append EOS to every completion
    (one cut at the length cap would learn to stop). Its KL term's mismatched completions are made as TRL makes them:
    each batch of per_device_train_batch_size rows takes its completions rotated by one."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not set(COLUMNS) <= set(dataset.column_names):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.calculate_KL:
            dataset = dataset.map(lambda rows: {**rows, "KL_completion_ids": rows["completion_ids"][-1:]
                                                + rows["completion_ids"][:-1]},
                                  batched=True, batch_size=args.per_device_train_batch_size)
        return dataset


def memory(script_args, *rest, **kw):
    return dpo_memory(*rest, **kw)  # as a pair: a completion and its mismatched KL twin a row


RECIPE = Recipe(key="kto", title="KTO", script=KTOScriptArguments, config=KTOConfig, trainer=PretokenizedKTOTrainer,
                curves=CURVES, examples=examples, memory=memory, run_name=kto_name, limit_field="max_train_examples",
                completion_fields=("completion_ids",),
                metric=("rewards/margins", "reward margin (desirable - undesirable)"), check=check,
                pass_decides=True)


METHODS = (recipe_method(RECIPE, 70, {"cmap": "BuGn", "fmt": "-", "marker": "P"},
                         functools.partial(plan_recipe, kto=True), loss_field="loss_type", default_loss="kto",
                         gpu_check=GPUCheck(("--betas", "0.1"), "kto_beta0.1_seed0", on_cpu=True),
                         # every sample but a prompt's median one is labelled: all of them for an even count
                         completion_counts=lambda records: {"labelled": len(kto_examples(records))},
                         most_completion_counts=lambda prompts, samples: {"labelled": prompts * (samples - samples % 2)}),)
