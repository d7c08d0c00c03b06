"""One run of a sweep, the same way for every trainer-based stage (DPO, RLOO, the baselines, the reward model).

A run lives in its own folder under the lock of that folder: it is skipped once finished with the same settings,
resumed from its newest complete checkpoint, replaced only through `--overwrite true` (see `outputs.py`), saved
on the checkpoint schedule, stopped cleanly by a signal or the stop file, and finished with a manifest.
"""

import copy
import functools
import math
import os
from collections.abc import Callable

from transformers import AutoConfig

from imdb_dpo.configuration.checks import check_seed_list
from imdb_dpo.lifecycle.checkpoints import (DropOptimizerFromOldCheckpoints, ResumeCheckpoints, ScheduledCheckpoints, checkpoint_steps,
                          drop_checkpoints, drop_weights, is_complete, off_schedule, resumable_checkpoint, schedule_of)
from imdb_dpo.configuration.arguments import ConfigError
from imdb_dpo.evaluation.in_training import FrontierEvaluation, keeps_final_model
from imdb_dpo.lifecycle.locks import main_process_lock
from imdb_dpo.lifecycle.manifests import Manifest, describe_file_input, describe_model_input, read_manifest
from imdb_dpo.lifecycle.outputs import plan_output
from imdb_dpo.lifecycle.settings import run_settings
from imdb_dpo.launch.sweep_tasks import check_numbers, sweep_runs
from imdb_dpo.data.pairs import REQUIRED_IDS, PairFileError, read_pairs
from imdb_dpo.evaluation.plots import plot_training_curves
from imdb_dpo.lifecycle.preemption import SaveAndStopOnSignal, StopRequest
from imdb_dpo.lifecycle.tracking import own_wandb_run


def sweep_values(name: str, values: list[float] | None, single_name: str, single: float, default: float) -> list[float]:
    """The values a sweep runs: the list when set (then the single value must be left at its default), else the
    single one. Each must be a finite number > 0."""
    if values is not None and not isinstance(values, list):
        raise ConfigError(f"{name}={values!r}: a list, e.g. {name}: [{values}] in the config or --{name} {values} on "
                          "the command line")
    check_numbers(values or [], name)
    if values:
        if single != default:
            raise ConfigError(f"{single_name}={single} is set, but {name}={values} decides the runs and would ignore it; "
                              f"for one run use --{name} {single:g} (or remove {name} from the config)")
    else:
        values = [single]
    if len(set(values)) != len(values):
        raise ConfigError(f"{name}={values}: a value is given twice, which would train the same run twice; give each "
                          "once")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"{single_name} must be a number > 0 (got {', '.join(f'{v:g}' for v in bad)}); fix {name} in "
                          "the config or on the command line")
    return list(values)


def seed_values(seeds) -> list[int | None]:
    """The seeds a setting runs with: `seeds` (distinct integers >= 0), or [None] for one run with the config's seed."""
    if seeds is None or seeds == []:
        return [None]
    check_seed_list("seeds", seeds)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds}: a seed is given twice; each seed is a run of its own")
    return list(seeds)


def same_model(a: dict, b: dict) -> bool:
    """A stage's run id names its output wherever the directory moves; a hub name has none: compare paths."""
    if a["run_id"] or b["run_id"]:
        return a["run_id"] == b["run_id"]
    return a["path"] == b["path"]


def described(model: dict) -> str:
    """A model input as a message names it: its path, and its run id where it has one (a hub model has none)."""
    return f"{model['path']} (run {model['run_id']})" if model["run_id"] else f"{model['path']} (no manifest)"


def pairs_input(pairs_file: str, model: str | None, role: str = "", field: str = "pairs_file") -> dict:
    """The identity of a finished pair file or of the completions beside it (`field` names the setting), sampled from
    `model` unless None (an error otherwise), for a manifest's inputs."""
    pairs_dir = os.path.dirname(os.path.abspath(pairs_file))
    manifest = read_manifest(pairs_dir)
    if not (manifest and manifest.get("finished")):
        raise PairFileError(f"{field}={pairs_file!r}: no finished manifest.json beside it, so it was not "
                            "written by preference_pairs.py or its run is unfinished; finish that stage first")
    source = manifest["inputs"]["model"]
    start = describe_model_input(model) if model is not None else source
    if not same_model(source, start):
        raise ConfigError(
            f"{pairs_file} was sampled from {described(source)}, but model_name_or_path is {described(start)}; {role} "
            "must be the model that generated the pairs: fix model_name_or_path or regenerate the pairs")
    return {**describe_file_input(pairs_file), "run_id": manifest["run_id"]}


def read_training_pairs(pairs_file: str, model: str, fields=REQUIRED_IDS) -> list[dict]:
    """The validated pairs of `pairs_file` (an error naming file, line and field otherwise), with every token id of
    `fields` inside `model`'s vocabulary."""
    pairs = read_pairs(pairs_file)
    # The model's embedding size, not the tokenizer's length: a padded vocabulary can sample ids beyond the latter.
    vocabulary = AutoConfig.from_pretrained(model).get_text_config().vocab_size
    for number, pair in enumerate(pairs, start=1):
        too_large = [i for field in fields for i in pair[field] if i >= vocabulary]
        if too_large:
            raise PairFileError(
                f"{pairs_file}, line {number}: token id {too_large[0]} is outside the vocabulary of {model} "
                f"({vocabulary} tokens); the pairs were sampled with another tokenizer: fix model_name_or_path or "
                "regenerate the pairs")
    return pairs


def train_run(run_dir: str, *, stage: str, what: str, configs: dict, inputs: dict, schedule: str | None,
              make_trainer: Callable, stop: StopRequest, curves, results: Callable = lambda trainer: {},
              frontier: FrontierEvaluation | None = None, keep_final: bool = True) -> bool:
    """Train (or resume, or skip) one run in `run_dir`; returns False when stopped by a signal.

    `configs["training"]` is the run's trainer config (its output_dir is set here), `configs["script"].overwrite`
    replaces a finished run with other settings; `make_trainer(args, callbacks)`
    builds the trainer; `results(trainer)` adds to the finished manifest; `curves` are the logged metrics that
    `training_curves.png` shows. `schedule` is the checkpoint_schedule of a run the frontier evaluates; None keeps
    the Trainer's own save_strategy (the reward model saves where it evaluates, to keep its best epoch), and a
    finished run then keeps no checkpoint. `frontier` evaluates the policy in memory at each step of the schedule
    (imdb_dpo/evaluation/in_training.py), checkpoints then only resume the run (every `resume_minutes`) and the finished run keeps
    none; without it a checkpoint is saved at each step of the schedule and every one but the last (the run folder's
    final model) stays for eval.py. `keep_final` False (a frontier run only) deletes the final model's weights too
    once its records are written: the manifest says `final_model_kept: false`."""
    args = configs["training"]
    state = args.distributed_state
    with main_process_lock(run_dir, f"{stage}.py"):
        plan = plan_output(run_dir, run_settings(configs, inputs), lambda d: bool(checkpoint_steps(d)),
                           configs["script"].overwrite,
                           what, state.is_main_process, state.wait_for_everyone)
        if plan.skip:
            finished = read_manifest(run_dir)
            if state.is_main_process and "kept_checkpoints" in finished:  # what a kill after finishing left
                drop_checkpoints(run_dir, keep=finished["kept_checkpoints"])
            if state.is_main_process and finished.get("final_model_kept") is False:
                drop_weights(run_dir)
            before = finished.get("frontier_eval")
            missing = frontier.missing_records(run_dir, finished) if frontier and state.is_main_process else []
            if missing:
                print(f"note: {run_dir} is finished, but the records of its step(s) {', '.join(map(str, missing))}, "
                      f"evaluated while training, are gone from {frontier.records_root}: eval.py cannot show them; "
                      "train it again with --overwrite true to evaluate them")
            if state.is_main_process and frontier and before and before["settings_key"] != frontier.settings_key:
                kept = ("only its final model" if finished.get("final_model_kept", True) else
                        "none of it (its final model was not kept)")
                print(f"note: {run_dir} was evaluated while training under the settings of {before['config']}, not "
                      f"those of {frontier.config}: under these, eval.py can evaluate {kept}")
            return True
        args.output_dir = plan.directory
        manifest = Manifest(plan.directory, stage, configs, inputs)
        steps_of = schedule_of(configs["script"], args) if schedule else None
        stop_save = functools.partial(off_schedule, schedule=steps_of)
        evaluation = frontier.for_run(run_dir, manifest.data, stop, steps_of) if frontier else None
        with own_wandb_run(args, manifest.run_id):
            if evaluation:  # points evaluated in memory; checkpoints only resume the run
                savers = [evaluation, ResumeCheckpoints(configs["script"].resume_minutes), SaveAndStopOnSignal(stop)]
            else:
                savers = ([ScheduledCheckpoints(steps_of)] if steps_of else []) + [
                    SaveAndStopOnSignal(stop), DropOptimizerFromOldCheckpoints()]
            trainer = make_trainer(args, savers)
            if evaluation:
                evaluation.trainer = trainer
            trainer.train(resume_from_checkpoint=resumable_checkpoint(plan.directory))
        if stop.requested:
            return False
        trainer.save_model(plan.directory)
        if trainer.accelerator.is_main_process:
            trainer.state.save_to_json(os.path.join(plan.directory, "trainer_state.json"))
            plot_training_curves(os.path.join(plan.directory, "trainer_state.json"),
                                 os.path.join(plan.directory, "training_curves.png"), args.run_name, curves)
        trainer.accelerator.wait_for_everyone()
        final = trainer.state.global_step
        # A stop's checkpoint off the schedule (or one a kill cut short) only resumed the run: not a frontier point.
        saved = [s for s, path in checkpoint_steps(plan.directory) if is_complete(path) and not stop_save(path)]
        if evaluation:
            kept, frontier_record = [], {"frontier_eval": frontier.describe()}
            saved = evaluation.evaluated()
            # The last step's records stand in for the final model only once they are written.
            frontier_record["final_model_kept"] = keep_final or final not in evaluation.evaluated()
        else:
            kept, frontier_record = ([s for s in saved if s != final] if schedule else []), {}
        manifest.finish(global_step=final, checkpoints=saved, kept_checkpoints=kept, processes=args.world_size,
                        examples_per_step=examples_per_step(args),
                        **frontier_record, **results(trainer))
        if trainer.accelerator.is_main_process:
            drop_checkpoints(plan.directory, keep=kept)
            if not frontier_record.get("final_model_kept", True):
                drop_weights(plan.directory)
            plan.finish()
        trainer.accelerator.wait_for_everyone()
    return True


def examples_per_step(args) -> int:
    """What the run's optimizer steps took, as the trainer was set up (imdb_dpo/configuration/batch_size.py derives it)."""
    return args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps


def last_logged(trainer, key: str) -> dict:
    """The last log entry of a run that has `key` ({} if none)."""
    return next((e for e in reversed(trainer.state.log_history) if key in e), {})


def logged_line(metrics: dict, figures: list[tuple[str, str, str]]) -> str:
    """'last logged <what> <value>, ...' of a finished run's `final_metrics` for each (key, what, format), or what a
    run too short to log says instead of nan."""
    if not all(key in metrics for key, _, _ in figures):
        return f"no {' or '.join(what for _, what, _ in figures)} logged (see logging_steps)"
    return "last logged " + ", ".join(f"{what} {metrics[key]:{form}}" for key, what, form in figures)


def train_sweep(values: list, *, field: str | None, run_name: Callable, stage: str, what: str, configs: dict,
                inputs: dict, make_trainer: Callable, curves, results: Callable, finished_line: Callable[[dict], str],
                frontier: FrontierEvaluation | None = None, seeds: list[int | None] = (None,)) -> bool:
    """One run per value of a sweep and seed (`seed_values`), in order, through `train_run`: the run for `value` has
    `field` of the trainer config set to it (None: no field) and lives in `<output_dir>/<run_name(training args,
    value)>/` (`_lora` added for a LoRA run), or that name and `_seed<n>/` with the trainer's `seed` set to n,
    keeping its final model only where `keep_final_model_seeds` says so; its checkpoints follow the script config's
    checkpoint_schedule. Prints `finished_line(manifest)` as each finishes; returns False when stopped by a signal
    (the runs after it are left for the next start)."""
    training, stop = configs["training"], StopRequest()
    lora = "_lora" if configs["model"].use_peft else ""
    for value, seed in sweep_runs(values, seeds):
        name = run_name(training, value) + lora + ("" if seed is None else f"_seed{seed}")
        run_dir = os.path.join(training.output_dir, name)
        args = copy.copy(training)  # not dataclasses.replace: RLOOConfig's checks refuse its own derived sizes
        # A dict of its own: some trainers edit it in place (TRL's ORPO and CPO add device_map), which the sweep's
        # next run would otherwise record as settings it was not given.
        if hasattr(training, "model_init_kwargs"):
            args.model_init_kwargs = copy.deepcopy(training.model_init_kwargs)
        if field:
            setattr(args, field, value)
        if seed is not None:
            args.seed = seed
        args.output_dir, args.run_name = run_dir, os.path.basename(run_dir)
        if not train_run(run_dir, stage=stage, what=what, configs={**configs, "training": args}, inputs=inputs,
                         schedule=configs["script"].checkpoint_schedule, make_trainer=make_trainer, stop=stop,
                         curves=curves, results=results, frontier=frontier,
                         keep_final=keeps_final_model(configs["script"], seed)):
            return False
        print(f"{run_dir}: finished; {finished_line(read_manifest(run_dir))}")
    return True
