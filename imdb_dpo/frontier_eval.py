"""Evaluating a run's checkpoints while it trains (`frontier_eval`), so that a finished run keeps one model.

Every checkpoint of a frontier run is a point of the reward-versus-KL frontier, and at GPT-2 Large's size each holds
3.1 GB of weights: kept for eval.py, the paper-scale preset's runs wrote about 870 GB of them (README, "Disk"). With `frontier_eval`
naming the evaluation's config, each checkpoint is evaluated as soon as it is saved, by the function eval.py uses
and under the settings eval.py will use (imdb_dpo/model_eval.py), and deleted once it is evaluated and a newer one
exists. eval.py later finds the records where it would have written them and only gathers them. A run holds at most
two checkpoints while it trains (the newest, which resumes it, and the one being saved) and none once finished:
its final model is in the run folder.

The records are then the only trace of the early steps: an evaluation with other settings can evaluate only each
run's final model, and eval.py names every step it had to leave out.
"""

import os
from collections.abc import Callable

from transformers import TrainerCallback

from .checkpoints import checkpoint_steps, drop_checkpoints, is_complete
from .checks import check_seed_list
from .config import REPOSITORY, ConfigError, EvalArguments, parse_config
from .data import prompts_for
from .distributed import any_process, process_state
from .errors import UserError
from .manifests import is_finished
from .methods import BY_KEY
from .modeling import load_tokenizer
from .model_eval import (Evaluator, UnreadableCheckpoint, check_args, evaluated_steps, records_dir, records_root,
                         run_meta)

KEEP_ALL = '--frontier_eval ""'


def resolve_config_path(config: str) -> str:
    """`config` as given when it exists there, else (a relative path) under the repository, where the presets' configs
    live, so that a preset runs from any directory; an error naming both places otherwise."""
    candidates = [config] + ([os.path.join(REPOSITORY, config)] if not os.path.isabs(config) else [])
    for path in candidates:
        if os.path.isdir(path):
            raise ConfigError(f"frontier_eval={config!r} is a folder: name the evaluation's config file in it (e.g. "
                              f"configs/<preset>/eval.yaml), or pass {KEEP_ALL} to keep every checkpoint for eval.py")
        if os.path.isfile(path):
            return path
    raise ConfigError(f"frontier_eval={config!r}: no such file (looked in {' and in '.join(map(os.path.abspath, candidates))}"
                      "). Name the evaluation's config (e.g. configs/<preset>/eval.yaml), whose settings the checkpoints "
                      f"are evaluated under while training, or pass {KEEP_ALL} to keep every checkpoint for eval.py")


class FrontierEvaluation:
    """The evaluation config of `frontier_eval`, checked before any work, for the runs of one method under `root`;
    the models it needs are loaded at the first checkpoint and kept for the runs of the sweep."""

    def __init__(self, config: str, method: str, root: str):
        config = resolve_config_path(config)
        self.config, self.method = config, method
        try:  # what eval.py would refuse, named as coming from this file
            (self.args,) = parse_config((EvalArguments,), ["--config", config], "eval.py")
            check_args(self.args)
        except UserError as error:
            raise ConfigError(f"frontier_eval={config}: {error}") from None
        field = BY_KEY[method].root_field
        runs_root = getattr(self.args, field)
        if os.path.realpath(runs_root) != os.path.realpath(root):
            raise ConfigError(f"frontier_eval={config}: its {field} is {runs_root}, but these runs go to {root}, where "
                              f"eval.py would not look for them. Point {field} in {config} and output_dir at the same "
                              f"folder, or pass {KEEP_ALL} to keep every checkpoint for eval.py")
        self.records_root = records_root(self.args)
        self.settings_key = os.path.basename(self.records_root)
        # The prompts now, so that a data problem stops the stage before training rather than at its first save.
        try:
            self.tokenizer = load_tokenizer(self.args.sft_model)
            self.prompts = prompts_for(self.args, self.tokenizer, "test")
        except UserError as error:
            raise ConfigError(f"frontier_eval={config}: {error}") from None
        self._evaluator = None

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator(self.args, self.tokenizer, self.prompts)
        return self._evaluator

    def describe(self) -> dict:
        """What the run's manifest records of it: eval.py names it where it cannot evaluate a deleted step."""
        return {"config": os.path.abspath(self.config), "settings_key": self.settings_key,
                "records": os.path.abspath(self.records_root)}

    def missing_records(self, run_dir: str, manifest: dict) -> list[int]:
        """The steps of a finished run evaluated while training under these settings whose records are gone (and
        whose checkpoint is too): nothing but training it again brings them back."""
        if manifest.get("frontier_eval", {}).get("settings_key") != self.settings_key:
            return []
        evaluated = set(evaluated_steps(self.records_root, run_meta(self.method, os.path.basename(run_dir), manifest)))
        on_disk = {step for step, _ in checkpoint_steps(run_dir)}
        if manifest.get("final_model_kept", True):
            on_disk.add(manifest.get("global_step"))
        return [s for s in manifest.get("checkpoints", []) if s not in evaluated and s not in on_disk]

    def for_run(self, run_dir: str, manifest_data: dict, stop, off_schedule: Callable[[str], bool]) -> "RunEvaluation":
        run_id = manifest_data["run_id"]
        if process_state().num_processes > 1:  # each rank's Manifest drew its own id; the main process's is written
            from accelerate.utils import broadcast_object_list
            run_id = broadcast_object_list([run_id])[0]
        meta = run_meta(self.method, os.path.basename(run_dir), {**manifest_data, "run_id": run_id})
        return RunEvaluation(self, meta, stop, off_schedule)


class RunEvaluation(TrainerCallback):
    """Evaluates one run's checkpoints as the Trainer saves them, then deletes each evaluated one but the newest.
    A stop's checkpoint off the schedule (`off_schedule`) is not evaluated: it only resumes the run."""

    def __init__(self, frontier: FrontierEvaluation, meta: dict, stop, off_schedule: Callable[[str], bool]):
        self.frontier, self.meta, self.stop, self.off_schedule = frontier, meta, stop, off_schedule

    def evaluated(self) -> list[int]:
        return evaluated_steps(self.frontier.records_root, self.meta)

    def evaluate_pending(self, run_dir: str) -> bool:
        """Evaluate every complete checkpoint of `run_dir` not yet evaluated, then delete the evaluated ones but the
        newest (which resumes the run); False when a stop request cut the evaluation short (its finished batches
        are kept)."""
        state = process_state()
        state.wait_for_everyone()  # the main process wrote the checkpoint
        complete = [(s, p) for s, p in checkpoint_steps(run_dir) if is_complete(p)]
        for step, path in complete:
            unit = {**self.meta, "step": step, "path": path}
            if is_finished(records_dir(self.frontier.records_root, unit)) or self.off_schedule(path):
                continue
            try:
                if self.frontier.evaluator.evaluate(unit, self.stop) is None:
                    return False
            except UnreadableCheckpoint as error:
                raise UserError(f"{path}: the checkpoint was saved completely, but {error}. Delete that folder and run "
                                "the same command again: training resumes from the checkpoint before it") from error
        # Every complete checkpoint is evaluated (or a stop's, never evaluated): keep the newest and any cut short.
        if state.is_main_process:
            evaluated = {s for s, _ in complete[:-1]}
            drop_checkpoints(run_dir, keep={s for s, _ in checkpoint_steps(run_dir) if s not in evaluated})
        state.wait_for_everyone()
        return True

    def on_save(self, args, state, control, **kwargs):
        if any_process(self.stop.requested):  # the save of a stop: the resumed run evaluates it
            return control
        if not self.evaluate_pending(args.output_dir):
            control.should_training_stop = True
        return control


def keeps_final_model(script_args, seed: int | None) -> bool:
    """Whether the run of `seed` (None: a run without `seeds`) keeps its final model (`keep_final_model_seeds`)."""
    return seed is None or script_args.keep_final_model_seeds is None or seed in script_args.keep_final_model_seeds


def check_keep_final_model(script_args) -> None:
    keep = script_args.keep_final_model_seeds
    if keep is not None:
        check_seed_list("keep_final_model_seeds", keep)
    dropped = [s for s in script_args.seeds or [] if not keeps_final_model(script_args, s)]
    if dropped and not script_args.frontier_eval:
        raise ConfigError(f"keep_final_model_seeds={keep} deletes the final model of seed(s) "
                          f"{', '.join(map(str, dropped))}, whose last point would then be nowhere: only frontier_eval "
                          "writes it to the records; set frontier_eval to the evaluation's config (as the presets do), "
                          "or add those seeds to keep_final_model_seeds")


def frontier_of(script_args, method: str, root: str) -> FrontierEvaluation | None:
    """The stage's `frontier_eval`, checked with `keep_final_model_seeds` (None when unset); `root` is where the
    method's runs go."""
    check_keep_final_model(script_args)
    seeds, keep = script_args.seeds or [], script_args.keep_final_model_seeds
    if seeds and not any(keeps_final_model(script_args, s) for s in seeds):  # a SLURM task of a later seed, say
        print(f"note: keep_final_model_seeds={keep} holds none of seeds {seeds}: their runs keep their records alone, "
              "not their final model")
    return FrontierEvaluation(script_args.frontier_eval, method, root) if script_args.frontier_eval else None
