"""One stage for the methods that `train.py` runs over a TRL trainer of their own (KTO, ORPO, CPO, SimPO, online DPO).

What differs between them is a Recipe: the examples it reads, its trainer, its run name and its memory. The rest is
the same for every one of them and for the older stage scripts: every setting checked before anything loads, a sweep
over beta (and seeds) through `training_runs.train_sweep`, with its lock, resume, manifest and frontier evaluation.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, get_peft_config

from ..checkpoints import check_schedule
from ..checks import check_model, check_positive, check_training
from ..costs import check_memory, frontier_inputs, model_shape
from ..frontier_eval import frontier_of
from ..modeling import load_tokenizer, set_model_init_kwargs
from ..preemption import exit_resumable
from ..tracking import check_wandb_credentials
from ..training_runs import last_logged, logged_line, seed_values, sweep_values, train_sweep


@dataclass(frozen=True)
class Recipe:
    key: str                # the method: the manifest's stage and an entry of methods.TRAINED
    title: str              # how messages name it
    script: type            # its script arguments (imdb_dpo/config.py)
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
    betas = sweep_values("betas", script_args.betas, "beta", training_args.beta, default_beta(recipe.config))
    seeds = seed_values(script_args.seeds)
    check_training(training_args)
    check_positive(script_args, recipe.limit_field)
    check_positive(training_args, "max_length")
    check_schedule(script_args, training_args)
    frontier = frontier_of(script_args, recipe.key, training_args.output_dir)
    check_model("model_name_or_path", model_args.model_name_or_path)
    rows, inputs = recipe.examples(script_args, model_args)
    check_memory(recipe.title, recipe.memory(script_args, training_args, model_shape(model_args.model_name_or_path),
                                             longest(rows, recipe.completion_fields), *frontier_inputs(frontier),
                                             lora=model_args.use_peft), training_args.distributed_state.device)
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

    def name(beta):
        return recipe.run_name(training_args, beta) + ("_lora" if model_args.use_peft else "")

    if not train_sweep(betas, "beta", name, recipe.key, f"{recipe.title} run",
                       {"script": script_args, "training": training_args, "model": model_args}, inputs,
                       script_args.overwrite, script_args.checkpoint_schedule, make_trainer, recipe.curves, results,
                       finished_line, frontier, seeds):
        return exit_resumable()
    return 0
