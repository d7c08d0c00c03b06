"""One stage for the methods that `train.py` runs over a TRL trainer of their own (KTO, ORPO, CPO, SimPO, online DPO).

What differs between them is a Recipe: the examples it reads, its trainer, its run name and its memory. The rest is
the same for every one of them and for the older stage scripts: every setting checked before anything loads, a sweep
over beta (and seeds) through `training_runs.train_sweep`, with its lock, resume, manifest and frontier evaluation.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, get_peft_config

from imdb_dpo.planning import costs, fitting
from imdb_dpo.lifecycle.checkpoints import check_schedule
from imdb_dpo.configuration.checks import check_model, check_positive, check_training
from imdb_dpo.configuration.errors import ConfigError
from imdb_dpo.planning.costs import check_memory, frontier_inputs, model_shape
from imdb_dpo.evaluation.in_training import frontier_of
from imdb_dpo.models.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.planning.plan import Row, bound, frontier_classifier, frontier_row, runs_of, sweep_of, trained_steps
from imdb_dpo.lifecycle.preemption import exit_resumable
from imdb_dpo.lifecycle.settings import PASS
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import last_logged, logged_line, seed_values, sweep_values, train_sweep
from imdb_dpo.methods import Method


@dataclass(frozen=True, kw_only=True)
class Recipe:
    key: str                # the method: the manifest's stage and its key in the registry
    title: str              # how messages name it
    script: type            # its script arguments (imdb_dpo/configuration/arguments.py)
    config: type            # its TRL config class (whose `beta` the sweep sets)
    trainer: type           # its trainer, on the exact sampled token ids
    curves: list            # training_curves.png's panels: (logged key or keys, title)
    examples: Callable      # (script_args, model_args) -> (rows of token ids, the manifest's inputs)
    memory: Callable        # (script_args, training_args, Shape, longest example, frontier args, classifier, lora) -> Peak
    run_name: Callable      # (training_args, beta) -> the run's folder name
    limit_field: str        # the script argument that caps the examples
    completion_fields: tuple[str, ...]  # the examples' completions (the longest prompt and completion sizes the
    # memory estimate; none: the method samples its own completions, and the longest prompt is the size)
    metric: tuple[str, str]  # the logged number a finished run's line shows: (key, what it is)
    check: Callable = field(default=lambda training_args: None)  # its own settings, before anything loads
    trainer_kwargs: Callable = field(default=lambda script_args, training_args: {})  # what else its trainer takes
    # (e.g. a reward function), made once for the sweep
    pass_decides: bool = False  # its loss reads each pass's rows together (KTO's KL term): the pass size is a setting
    # of its results, so it is not fitted to the card and its runs' settings name it

    @property
    def stages(self) -> tuple:
        """What TrlParser reads the command line and config into."""
        return self.script, self.config, ModelConfig


def longest(rows: list[dict], fields: tuple[str, ...]) -> int:
    """Tokens of the longest prompt + completion among `rows` (0 for none)."""
    return max((len(r["prompt_ids"]) + max((len(r[f]) for f in fields), default=0) for r in rows), default=0)


def default_beta(config: type) -> float:
    """The config class's default beta (OnlineDPOConfig's is a one-element list, which it makes a float)."""
    field_ = config.__dataclass_fields__["beta"]
    value = field_.default_factory() if field_.default is dataclasses.MISSING else field_.default
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def run_recipe(recipe: Recipe, script_args, training_args, model_args) -> int:
    training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    recipe.check(training_args)
    if recipe.pass_decides and fitting.ROWS in fitting.auto_sizes(training_args):
        raise ConfigError(f"{recipe.title} estimates its KL term over the rows of each pass, so per_device_train_batch_size "
                          "decides its results and is not fitted to the card: give it a number (2 or more; the "
                          "gpt2-large preset's kto.yaml uses 8)")
    betas = sweep_values("betas", script_args.betas, "beta", training_args.beta, default_beta(recipe.config))
    seeds = seed_values(script_args.seeds)
    check_training(training_args)
    check_positive(script_args, recipe.limit_field)
    check_positive(training_args, "max_length")
    check_schedule(script_args, training_args)
    frontier = frontier_of(script_args, recipe.key, training_args.output_dir)
    check_model("model_name_or_path", model_args.model_name_or_path)
    rows, inputs = recipe.examples(script_args, model_args)
    shape, tokens = model_shape(model_args.model_name_or_path), longest(rows, recipe.completion_fields)
    check_memory(recipe.title, lambda: recipe.memory(script_args, training_args, shape, tokens,
                                                     *frontier_inputs(frontier), lora=model_args.use_peft),
                 training_args.distributed_state.device, training=training_args, frontier_eval=frontier and frontier.args)
    dataset = Dataset.from_list(rows)
    extra = recipe.trainer_kwargs(script_args, training_args)
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")

    def make_trainer(args, callbacks):
        set_seed(args.seed)  # the same LoRA initialisation in every run
        return recipe.trainer(model=model_args.model_name_or_path, args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=get_peft_config(model_args),
                              callbacks=list(callbacks), **extra)

    key, what = recipe.metric

    def results(trainer):
        return {"final_metrics": last_logged(trainer, key), "examples": len(dataset)}

    examples_are = "examples" if recipe.completion_fields else "prompts"  # a method that samples reads prompts alone

    def finished_line(manifest):
        return f"{manifest['examples']} {examples_are}; {logged_line(manifest['final_metrics'], [(key, what, '.3f')])}"

    configs = {"script": script_args, "training": training_args, "model": model_args}
    if recipe.pass_decides:
        configs[PASS] = {"rows": training_args.per_device_train_batch_size}
    if not train_sweep(betas, field="beta", run_name=recipe.run_name, stage=recipe.key, what=f"{recipe.title} run",
                       configs=configs,
                       inputs=inputs, make_trainer=make_trainer, curves=recipe.curves, results=results,
                       finished_line=finished_line, frontier=frontier, seeds=seeds):
        return exit_resumable()
    return 0


def plan_recipe(recipe: Recipe, preset, stage, script_args, training_args, model_args, kto: bool = False) -> Row:
    """ORPO, CPO, SimPO (a pair a row), or with `kto` KTO (a labelled completion and its mismatched KL twin a row,
    from the completions file beside the pairs)."""
    shape = preset.shape(model_args.model_name_or_path)
    counts = preset.pairs(os.path.join(os.path.dirname(script_args.completions_file), "pairs.jsonl") if kto
                          else script_args.pairs_file)
    examples = min(counts["labelled" if kto else "pairs"], getattr(script_args, recipe.limit_field) or math.inf)
    tokens = min(counts["tokens"], training_args.max_length or math.inf)
    betas = script_args.betas or [training_args.beta]
    frontier = frontier_classifier(preset, script_args)
    peak = preset.fit(lambda: recipe.memory(script_args, training_args, shape, tokens, *frontier,
                                            lora=model_args.use_peft),
                      training=training_args, frontier_eval=frontier[0])
    steps = trained_steps(examples, training_args)
    row = Row(stage, runs_of(script_args, betas), exact=counts["exact"], peak=peak)
    rows_per_step = 2 * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    row.seconds = row.runs * costs.compute_seconds(costs.training_flops(shape, steps * rows_per_step * tokens, tokens),
                                                   training_args.bf16)
    if getattr(training_args, "precompute_ref_log_probs", False):  # KTO's reference, once for the sweep: cached
        row.seconds += costs.compute_seconds(costs.forward_flops(shape, 2 * examples * tokens, tokens), training_args.bf16)
    row.notes.append(f"{bound(int(examples), counts['exact'])} {'labelled completions' if kto else 'pairs'} a run, "
                     f"{sweep_of(betas, 'beta', script_args)}")
    frontier_row(preset, row, shape, training_args, script_args, steps, model_args.use_peft)
    return row


def recipe_method(recipe: Recipe, order: int, style: dict, plan=plan_recipe, **fields) -> Method:
    """The registry's entry of a recipe: run by run_recipe, swept over beta."""
    return Method(key=recipe.key, title=recipe.title, order=order, stages=recipe.stages,
                  main=functools.partial(run_recipe, recipe), plan=functools.partial(plan, recipe), sweep="betas",
                  parameter="beta", parameter_field="beta", style=style,
                  check=lambda script_args, training_args: recipe.check(training_args), recipe=recipe, **fields)
