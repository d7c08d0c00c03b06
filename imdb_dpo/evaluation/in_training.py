"""Evaluating a run's policy while it trains (`frontier_eval`): the frontier's points without writing checkpoints.

Every step of a frontier run's `checkpoint_schedule` is a point of the reward-versus-KL frontier. With
`frontier_eval` naming the evaluation's config, the policy is evaluated at each such step as it stands in memory:
its weights are copied, device to device, into a resident evaluation model in the evaluation's precision, and the
function eval.py uses evaluates that model under the settings eval.py will use (imdb_dpo/evaluation/evaluator.py). The records
are those eval.py writes for the same weights saved to disk; eval.py later finds them where it would have written
them and only gathers them. Checkpoints are then written only to resume the run: every `resume_minutes`, on a stop,
and the final model. (At GPT-2 Large's size each would be 6-9 GB written only to be loaded back: about 7 TB for the
paper-scale preset.)

A kill during an evaluation leaves that step's records unfinished: the resumed run trains to that step again (a
resume is bit-equal) and evaluates it anew, discarding what the killed evaluation had written. A stop during an
evaluation saves a checkpoint at that step, and the resumed run evaluates it before its first step.

The records are then the only trace of the early steps: an evaluation with other settings can evaluate only each
run's final model, and eval.py names every step it had to leave out.
"""

import copy
import os
import shutil

import torch
from transformers import TrainerCallback

from imdb_dpo.lifecycle.checkpoints import checkpoint_steps
from imdb_dpo.configuration.checks import check_seed_list
from imdb_dpo.configuration.arguments import REPOSITORY, ConfigError, EvalArguments, parse_config
from imdb_dpo.data.reviews import prompts_for
from imdb_dpo.lifecycle.distributed import any_process, process_state, sharded_launch
from imdb_dpo.configuration.errors import UserError
from imdb_dpo.lifecycle.manifests import is_finished, read_manifest
from imdb_dpo.models.modeling import load_tokenizer, model_like
from imdb_dpo.evaluation.evaluator import (Evaluator, ModelPair, check_args, evaluated_methods, evaluated_steps, records_dir, records_root,
                         run_meta, runs_folder)
from imdb_dpo.configuration.precision import DTYPES
from imdb_dpo.evaluation.tracker import log_point
from imdb_dpo.lifecycle.batch_log import read_finished

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
        declared = {m.key: m for m in evaluated_methods(self.args)}.get(method)
        folder = runs_folder(self.args, declared) if declared else None
        if folder is None and not self.args.runs_root:
            raise ConfigError(f"frontier_eval={config}: its runs_root is \"\", so eval.py evaluates no method's runs; set "
                              f"runs_root to the folder holding {root}, or pass {KEEP_ALL} to keep every checkpoint")
        if folder is None:
            raise ConfigError(f"frontier_eval={config}: its methods ({', '.join(self.args.methods)}) leave {method} "
                              f"out, so eval.py would not evaluate these runs; add {method} to methods (or remove "
                              f"methods), or pass {KEEP_ALL} to keep every checkpoint for eval.py")
        if os.path.realpath(folder) != os.path.realpath(root):
            raise ConfigError(f"frontier_eval={config}: these runs go to {root}, but eval.py would look for them in "
                              f"{folder}. Make output_dir <runs_root>/{method} of that config, or pass {KEEP_ALL} to "
                              "keep every checkpoint for eval.py")
        self.records_root = records_root(self.args)
        self.settings_key = os.path.basename(self.records_root)
        # The prompts now, so that a data problem stops the stage before training rather than at its first save.
        try:
            self.tokenizer = load_tokenizer(self.args.sft_model)
            self.prompts = prompts_for(self.args, self.tokenizer, "test")
        except UserError as error:
            raise ConfigError(f"frontier_eval={config}: {error}") from None
        self._evaluator = None
        self._sft_records = None

    def sft_records(self) -> list[dict] | None:
        """The SFT model's records under these settings, which eval.py writes (the win rate of the points logged to
        the tracker is measured against them); None until they exist."""
        if self._sft_records is None:
            directory = records_dir(self.records_root, {"run": "sft", "step": 0})
            if is_finished(directory):
                self._sft_records = read_finished(os.path.join(directory, "records.jsonl"),
                                                  read_manifest(directory)["n"])
        return self._sft_records

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

    def for_run(self, run_dir: str, manifest_data: dict, stop, schedule) -> "LiveEvaluation":
        run_id = manifest_data["run_id"]
        if process_state().num_processes > 1:  # each rank's Manifest drew its own id; the main process's is written
            from accelerate.utils import broadcast_object_list
            run_id = broadcast_object_list([run_id])[0]
        meta = run_meta(self.method, os.path.basename(run_dir), {**manifest_data, "run_id": run_id})
        return LiveEvaluation(self, meta, run_dir, stop, schedule)


class LiveEvaluation(TrainerCallback):
    """Evaluates the policy in memory at each step of the run's schedule (`schedule(max_steps)`), where its records
    are not finished yet. It must come before `SaveAndStopOnSignal` among the callbacks: a stop during an evaluation
    is then saved at that step."""

    def __init__(self, frontier: FrontierEvaluation, meta: dict, run_dir: str, stop, schedule):
        self.frontier, self.meta, self.run_dir, self.stop, self.schedule = frontier, meta, run_dir, stop, schedule
        self.steps: set[int] = set()
        self.copy = None  # the resident evaluation model, made at the first evaluation
        self.trainer = None  # set once the trainer exists: each point is logged through it to the run's trackers

    def evaluated(self) -> list[int]:
        return evaluated_steps(self.frontier.records_root, self.meta)

    def unit(self, step: int) -> dict:
        return {**self.meta, "step": step, "path": self.run_dir, "in_memory": True}

    def evaluate(self, model, step: int) -> bool:
        """Records of `model` at `step`; False when a stop request cut the evaluation short. The training's random
        state is left as it was (building the evaluation models draws random initial weights): a run evaluated at
        other steps, or resumed, trains on the same random numbers."""
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_initialized() else []):
            return self._evaluate(model, step)

    def _evaluate(self, model, step: int) -> bool:
        unit = self.unit(step)
        if is_finished(records_dir(self.frontier.records_root, unit)):
            return True
        discard_unfinished(records_dir(self.frontier.records_root, unit))
        evaluator = self.frontier.evaluator
        if self.copy is None:
            self.copy = LiveCopy(evaluator.args, evaluator.reference.scorer.device)
        policy = self.copy.update(model)
        records = evaluator.evaluate(unit, self.stop, live=policy)
        if records is None:
            return False
        # Here only, after records written now: a point whose records were finished before (a resumed run's) was
        # logged by the run that wrote them, so no point reaches the tracker twice.
        if self.trainer is not None:
            log_point(self.trainer, records, self.frontier.sft_records(), evaluator.args.seed)
        return True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.steps = set(self.schedule(state.max_steps))
        # A stop during the evaluation of the step a resumed run starts from: that step is evaluated first.
        if state.global_step in self.steps and not self.evaluate(model, state.global_step):
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.steps or any_process(self.stop.requested):
            return control  # a stop saves this step; the resumed run evaluates it
        self.evaluate(model, state.global_step)  # a stop during it: SaveAndStopOnSignal saves this step and stops
        return control


def discard_unfinished(directory: str) -> None:
    """Remove what an evaluation cut short by a kill left in `directory` (its batch logs), on the main process."""
    state = process_state()
    if state.is_main_process and os.path.isdir(directory):
        shutil.rmtree(directory)
    state.wait_for_everyone()


def merged_lora_model(model):
    """A copy of a PEFT model with its adapter merged into the base weights, as `load_causal_lm` merges a saved
    adapter (the same sums, so the same numbers)."""
    return copy.deepcopy(model).merge_and_unload()


class LiveCopy:
    """The resident evaluation model of a run: the policy's weights copied into it, device to device, at each
    evaluation, in sampling_dtype and (where it differs) kl_dtype. Each process copies its own replica (one process,
    or DDP); FSDP and DeepSpeed ZeRO-3, which hold a shard of the weights on each process, are refused up front."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.models = {}

    def update(self, model) -> ModelPair:
        source = merged_lora_model(model) if hasattr(model, "peft_config") else model
        state = source.state_dict()
        for name in {self.args.kl_dtype, self.args.sampling_dtype}:
            if name not in self.models:
                self.models[name] = model_like(source, DTYPES[name], self.device)
            self.models[name].load_state_dict(state)
        return ModelPair.of(self.models[self.args.kl_dtype], self.models[self.args.sampling_dtype])


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
    if not script_args.frontier_eval:
        return None
    sharded = sharded_launch()
    if sharded:
        raise ConfigError(f"frontier_eval evaluates the policy in memory, on each process from the whole model it holds; "
                          f"under {sharded} a process holds a shard of it (or, with bf16, bf16 weights). Launch with "
                          "configs/accelerate/ddp.yaml (GPT-2 Large fits one GPU), or pass "
                          f"{KEEP_ALL} to save a checkpoint at each point and evaluate them with eval.py")
    return FrontierEvaluation(script_args.frontier_eval, method, root)
