"""One model's evaluation: its samples on the held-out prompts, their reward and exact KL against the reference,
written as per-sample records under the evaluation's settings key.

eval.py runs it for the SFT model and every checkpoint it finds; a training stage with `frontier_eval` runs the
very same function on its policy in memory at each point of its schedule (imdb_dpo/evaluation/in_training.py), so that both
write, and read, the same records.
"""

import hashlib
import json
import math
import os

from tqdm.auto import tqdm

from imdb_dpo.lifecycle import settings
from imdb_dpo.lifecycle.batch_log import BatchLog, read_finished
from imdb_dpo.configuration.checks import check_model, check_positive, check_sampling
from imdb_dpo.configuration.arguments import ConfigError, EvalArguments
from imdb_dpo.lifecycle.distributed import any_process, process_state
from imdb_dpo.configuration.errors import first_line
from imdb_dpo.evaluation.kl import sequence_kls
from imdb_dpo.lifecycle.manifests import (Manifest, describe_file_input, describe_model_input, is_finished, read_manifest,
                        write_text_atomic)
from imdb_dpo.planning.memory import OutOfMemory, naming_the_fix
from imdb_dpo.methods import frontier_methods, method as method_of_key
from imdb_dpo.models.reward import LearnedReward
from imdb_dpo.models.modeling import load_causal_lm
from imdb_dpo.configuration.precision import check_eval_precision, evaluation_precision, inference_dtype
from imdb_dpo.models.reward import VADER, make_reward
from imdb_dpo.models.sampling import SAMPLER, remaining_batches, sample_batch

SAMPLING_FIX = ("Lower batch_size (rows sampled at once = batch_size x samples_per_prompt, and x best_of_n_samples for "
                "the SFT model; it changes no sample, and the rerun goes on from the finished batches) or set "
                "sampling_dtype bfloat16 (half the KV cache)")


def settings_of(args: EvalArguments) -> dict:
    """What decides an evaluation's numbers (imdb_dpo/lifecycle/settings.py); records made under other settings are kept apart.
    The reference is named by its run id and the data files by their content, so that moved outputs (another
    OUTPUT_ROOT, a copy of the tiny run) keep their records, those evaluated while training included."""
    return {**settings.settings_of(json.loads(json.dumps(vars(args)))), "train_file": data_identity(args.train_file, "train_file"),
            "test_file": data_identity(args.test_file, "test_file"), "reference": settings.identity(describe_model_input(args.sft_model)),
            "sampler": SAMPLER,
            "kl": "while sampling, the reference in lockstep" if kl_in_sampling(args) else "a second pass"}


def data_identity(path: str | None, field: str) -> str | None:
    """A review file by its SHA-256, as every stage names its inputs (a missing one is refused, naming `field`)."""
    return settings.identity(describe_file_input(path, field)) if path else None


def kl_in_sampling(args: EvalArguments) -> bool:
    """Whether the KL is summed while sampling (the sampler's logits are in the KL's precision: imdb_dpo/evaluation/kl.py,
    LockstepKL) rather than by a second pass of both models over the samples."""
    return args.sampling_dtype == args.kl_dtype


def records_key(evaluation_settings: dict) -> str:
    return hashlib.sha256(json.dumps(evaluation_settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def records_root(args: EvalArguments) -> str:
    """Where the records of every model evaluated under `args`'s settings are kept."""
    return os.path.join(args.output_dir, "records", records_key(settings_of(args)))


def records_dir(root: str, unit: dict) -> str:
    """Where a model's records are kept: `<run>/step-<N>`, under the run id of a trained run (`<run>/<id>/step-<N>`)
    so that records of a run replaced by --overwrite are never taken for the new run's."""
    run = os.path.join(unit["run"], unit["run_id"]) if unit.get("run_id") else unit["run"]
    return os.path.join(root, run, f"step-{unit['step']}")


def evaluated_steps(root: str, meta: dict) -> list[int]:
    """The steps of a run (`meta`: its name and run id) whose records under `root` are finished."""
    folder = os.path.dirname(records_dir(root, {**meta, "step": 0}))
    names = os.listdir(folder) if os.path.isdir(folder) else []
    steps = [int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit()]
    return sorted(s for s in steps if is_finished(os.path.join(folder, f"step-{s}")))


def run_meta(method: str, name: str, manifest: dict) -> dict:
    """A run's columns: `loss_type` is the loss of a method with several (DPO's `ipo`, `sigmoid+sft`,
    `sigmoid/js_divergence` where the f-divergence is not reverse KL; CPO's `hinge`; "" for other methods), `beta`
    the method's parameter (DPO's beta, RLOO's KL coefficient, Unlikelihood's alpha; "" for Preferred-FT); and its
    run id, which tells a run replaced by `--overwrite true` (same name, new id) from the one evaluated before.
    `manifest` may be an unfinished one."""
    training = manifest["config"]["training"]
    declared = method_of_key(method)
    loss = training.get(declared.loss_field) if declared.loss_field else ""
    loss_type = "+".join(loss) if isinstance(loss, list) else loss
    if training.get("f_divergence_type", "reverse_kl") != "reverse_kl":  # f-DPO
        loss_type += "/" + training["f_divergence_type"]
    field = declared.parameter_field
    beta = training[field] if field else ""
    meta = {"method": method, "run": name, "loss_type": loss_type, "beta": beta, "run_id": manifest["run_id"],
            "seed": training.get("seed", "")}
    if "reward_model" in manifest.get("inputs", {}):  # a learned reward model it optimised: its score is recorded too
        meta["proxy_model"] = manifest["inputs"]["reward_model"]["path"]
        meta["proxy_run_id"] = manifest["inputs"]["reward_model"]["run_id"]
    return meta


def check_kl_budgets(budgets) -> list[float]:
    """The budgets as floats (YAML may give ints, or strings such as 1e-1); a ConfigError unless each is > 0."""
    if not budgets:
        raise ConfigError("kl_budgets is empty: give at least one KL budget in nats, e.g. --kl_budgets 1 3 10")
    values, bad = [], []
    for budget in budgets:
        try:
            value = math.nan if isinstance(budget, bool) else float(budget)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value) and value > 0:
            values.append(value)
        else:
            bad.append(budget)
    if bad:
        raise ConfigError(f"kl_budgets={list(budgets)}: every budget must be a finite number of nats > 0 (got "
                          f"{', '.join(repr(b) for b in bad)}); fix it in the config or on the command line")
    return values


def check_settings(args: EvalArguments) -> None:
    """The numbers and choices of the config, without looking at any model (plan.py checks these too)."""
    check_sampling(args)
    check_positive(args, "best_of_n_samples", "kl_batch_size")
    inference_dtype(args, "kl_dtype")
    check_eval_precision(args)
    if args.report_prompts < 0:
        raise ConfigError(f"report_prompts={args.report_prompts}: must be >= 0")
    if args.best_of_n_samples < args.samples_per_prompt:
        raise ConfigError(f"best_of_n_samples ({args.best_of_n_samples}) must be >= samples_per_prompt "
                          f"({args.samples_per_prompt}): the SFT samples also serve as its own evaluation")
    args.kl_budgets = check_kl_budgets(args.kl_budgets)


def evaluated_methods(args: EvalArguments) -> list:
    """The methods whose runs are evaluated: `methods` where set (each a key of the registry), else every one."""
    known = {m.key: m for m in frontier_methods()}
    if not args.runs_root:
        return []
    if args.methods is None:
        return list(known.values())
    if isinstance(args.methods, str) or not args.methods:
        raise ConfigError(f"methods={args.methods!r}: a list of the methods to evaluate, e.g. methods: [dpo, rloo] in "
                          "the config or --methods dpo rloo; leave it unset for every method (runs_root: \"\" for none)")
    unknown = [key for key in args.methods if key not in known]
    if unknown:
        raise ConfigError(f"methods: {unknown[0]!r} is no method; name some of {', '.join(known)}, or leave methods "
                          "unset to evaluate every one")
    return [m for key, m in known.items() if key in args.methods]


def runs_folder(args: EvalArguments, method) -> str:
    """Where a method's runs are: <runs_root>/<method>/ (their training config's output_dir)."""
    return os.path.join(args.runs_root, method.key)


def check_runs_root(args: EvalArguments) -> None:
    """runs_root must be a folder ("" for none); the config's may be absent (nothing was run), one given on the command
    line must exist."""
    root = args.runs_root
    if not root:  # no method's runs
        return
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"runs_root={root} is a file, not a folder: it names the folder holding a folder of runs per "
                          "method (<runs_root>/dpo/, <runs_root>/rloo/, ...); point runs_root at that folder")
    if not os.path.exists(root) and "runs_root" in getattr(args, "given_on_command_line", ()):
        raise ConfigError(f"--runs_root {root}: no such folder. Name the folder holding a folder of runs per method "
                          "(the training configs' output_dir less the method, e.g. outputs/gpt2-large)")
    for method in evaluated_methods(args):
        folder = runs_folder(args, method)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"{folder} is a file, not a folder: runs_root/{method.key} holds the {method.title} runs "
                              "(one subfolder per run); move the file away")


def check_args(args: EvalArguments) -> None:
    check_settings(args)
    for field in ("train_file", "test_file"):  # both decide the records' key, even the split not sampled
        data_identity(getattr(args, field), field)
    check_runs_root(args)
    check_model("sft_model", args.sft_model)
    if args.base_model:
        check_model("base_model", args.base_model, tokenizer=False)
    if args.reward_model != VADER:
        check_model("reward_model", args.reward_model)


class UnreadableCheckpoint(Exception):
    """A checkpoint whose files are there but do not load (e.g. cut short by a full disk)."""


class ModelPair:
    """One model at the two precisions of the evaluation: `sampler` draws the completions (sampling_dtype) and
    `scorer` enters the KL pass (kl_dtype). Each is loaded from the checkpoint itself, never cast from the
    other (a bf16 copy cast up to fp32 keeps bf16's rounding); equal precisions share one model."""

    def __init__(self, path: str, args: EvalArguments, device):
        self.scorer = load_causal_lm(path, inference_dtype(args, "kl_dtype"), device)
        same = args.sampling_dtype == args.kl_dtype
        self.sampler = self.scorer if same else load_causal_lm(path, inference_dtype(args, "sampling_dtype"), device)

    @classmethod
    def of(cls, scorer, sampler) -> "ModelPair":
        """Models already at hand (a training run's policy copied in memory: imdb_dpo/evaluation/in_training.py)."""
        pair = cls.__new__(cls)
        pair.scorer, pair.sampler = scorer, sampler
        return pair


def load_policy(unit: dict, args: EvalArguments, device) -> ModelPair:
    try:
        with naming_the_fix(f"loading {unit['path']} beside the reference",
                            "The evaluation holds the reference and one checkpoint, each in sampling_dtype and, where it "
                            "differs, in kl_dtype too: set both alike (one copy of each model), or free the device"):
            return ModelPair(unit["path"], args, device)
    except OutOfMemory:  # the device's fault, not the checkpoint's: never "Not evaluated"
        raise
    except Exception as error:  # safetensors, torch and transformers each raise their own kind for a damaged file
        if unit["run"] == "base":
            raise
        detail = first_line(error, 200, type(error).__name__)
        raise UnreadableCheckpoint(f"it does not load ({type(error).__name__}: {detail})") from error


def load_on_every_process(unit: dict, args: EvalArguments, batches: list, reference: ModelPair) -> ModelPair | None:
    """The checkpoint of `unit`, loaded by each process with batches to sample; the processes then agree whether it
    loaded. A checkpoint that does not load on one of them is unreadable on all (each skips it, and the collectives
    that follow stay in step); a process left without batches (more processes than batches) loads nothing."""
    policy, failure = None, None
    if batches:
        try:
            policy = load_policy(unit, args, reference.scorer.device)
        except UnreadableCheckpoint as error:
            failure = error
    if any_process(failure is not None):
        raise failure or UnreadableCheckpoint("it does not load on another process of this launch")
    return policy


class ProxyRewards:
    """The learned reward models of the rloo_rm runs, each loaded once, on the evaluation's device and reward_dtype."""

    def __init__(self, args: EvalArguments, device):
        self.args, self.device, self.models = args, device, {}

    def __call__(self, path: str) -> LearnedReward:
        if path not in self.models:
            self.models[path] = LearnedReward(path, self.device, inference_dtype(self.args, "reward_dtype"),
                                              self.args.reward_batch_size)
        return self.models[path]


class Evaluator:
    """What evaluating any model under `args` needs, loaded once: the prompts, the reference (also the SFT model
    evaluated), the reward and the learned reward models; `evaluate(unit, stop)` evaluates one model."""

    def __init__(self, args: EvalArguments, tokenizer, prompts: list[dict]):
        self.args, self.tokenizer, self.prompts = args, tokenizer, prompts
        self.records_root = records_root(args)
        if process_state().is_main_process:
            write_text_atomic(os.path.join(self.records_root, "settings.json"),
                              json.dumps(settings_of(args), indent=2, default=str) + "\n")
        device = process_state().device
        with naming_the_fix(f"loading the reference {args.sft_model} and the reward model", "Free the device"):
            self.reference = ModelPair(args.sft_model, args, device)
            self.reward = make_reward(args.reward_model, args.reward_batch_size, args.reward_positive_label, device,
                                      inference_dtype(args, "reward_dtype"))
        self.proxies = ProxyRewards(args, device)

    def evaluate(self, unit: dict, stop, live: ModelPair | None = None) -> list[dict] | None:
        """`live`: the model itself, a training run's policy in memory at unit["step"] (else it is loaded)."""
        with evaluation_precision(self.args.eval_precision):
            return evaluate(unit, self.prompts, self.args, self.tokenizer, self.reference, self.reward, self.proxies,
                            self.records_root, stop, live)


def evaluate(unit, prompts, args, tokenizer, reference: ModelPair, reward, proxies: ProxyRewards, records_root,
             stop, live: ModelPair | None = None) -> list[dict] | None:
    """Per-sample records of one model, in prompt order; None when stopped by a signal (the finished batches are
    kept, and a rerun goes on from them at any batch size).

    Under a launcher each process samples every world-th batch into a log of its own; the main process then joins
    the logs in prompt order. Every sample has a random stream of its own (imdb_dpo/models/sampling.py), so the records
    equal a one-process run's at any batch size."""
    state = process_state()
    world, rank = state.num_processes, state.process_index
    directory = records_dir(records_root, unit)
    merged = os.path.join(directory, "records.jsonl")
    if is_finished(directory):
        return read_finished(merged, read_manifest(directory)["n"])
    num_samples = args.best_of_n_samples if unit["run"] == "sft" else args.samples_per_prompt
    lockstep = kl_in_sampling(args)
    model = ({"path": os.path.abspath(unit["path"]), "run_id": unit["run_id"], "step": unit["step"], "in_memory": True}
             if live else describe_model_input(unit["path"]))
    manifest = Manifest(directory, "eval", {"unit": unit}, {"model": model})
    log = BatchLog(merged if world == 1 else os.path.join(directory, f"records.rank{rank}-of-{world}.jsonl"))
    batches = remaining_batches(log, prompts, "prompt_id", args.batch_size, rank, world)
    policy = reference if unit["run"] == "sft" else live or load_on_every_process(unit, args, batches, reference)
    for b, batch in tqdm(batches, desc=f"eval {unit['run']} step {unit['step']}", unit="batch"):
        with naming_the_fix(f"sampling {len(batch)} prompts x {num_samples} samples from {unit['path']}",
                            SAMPLING_FIX):
            samples = sample_batch(policy.sampler, tokenizer, batch, num_samples, args.max_new_tokens,
                                   args.seed, args.temperature, args.top_k, args.top_p,
                                   kl_reference=reference.scorer if policy is not reference and lockstep else None)
        flat = [(p, i, c) for p, cs in zip(batch, samples) for i, c in enumerate(cs)]
        with naming_the_fix(f"scoring {len(flat)} samples with {args.reward_model}", "Lower reward_batch_size"):
            rewards = reward([p["prompt"] + c["text"] for p, _, c in flat])
            proxy = [None] * len(flat)
            if unit.get("proxy_model"):
                proxy = proxies(unit["proxy_model"]).score([p["prompt_ids"] for p, _, _ in flat],
                                                           [c["ids"] for _, _, c in flat])
        if policy is reference:  # KL(pi || pi) = 0 exactly
            exact = ratio = [0.0] * len(flat)
        elif lockstep:
            exact, ratio = [c["kl_exact"] for _, _, c in flat], [c["kl_logratio"] for _, _, c in flat]
        else:
            with naming_the_fix(f"the KL pass over {len(flat)} samples of {unit['path']}", "Lower kl_batch_size"):
                exact, ratio = sequence_kls(policy.scorer, reference.scorer, [p["prompt_ids"] for p, _, _ in flat],
                                            [c["ids"] for _, _, c in flat], tokenizer.pad_token_id, args.kl_batch_size)
        log.append_batch(b, [
            {"run": unit["run"], "loss_type": unit["loss_type"], "beta": unit["beta"], "step": unit["step"],
             "prompt_id": p["prompt_id"], "prompt": p["prompt"], "prompt_ids": p["prompt_ids"], "sample": i,
             "completion_ids": c["ids"],
             "text": c["text"], "finish": c["finish"], "reward": r, "kl_exact": ke, "kl_logratio": kr,
             **({} if pr is None else {"proxy_reward": pr})}
            for (p, i, c), r, ke, kr, pr in zip(flat, rewards, exact, ratio, proxy)])
        if stop.requested:
            break
    log.close()
    if any_process(stop.requested):
        return None
    if state.is_main_process:
        parts = [log.records] if world == 1 else [
            BatchLog(os.path.join(directory, f"records.rank{r}-of-{world}.jsonl")).close_and_read() for r in range(world)]
        position = {p["prompt_id"]: i for i, p in enumerate(prompts)}
        joined = sorted((record for part in parts for record in part),
                        key=lambda record: (position[record["prompt_id"]], record["sample"]))
        write_text_atomic(merged, "".join(json.dumps(record, sort_keys=True) + "\n" for record in joined))
    state.wait_for_everyone()
    records = read_finished(merged, len(prompts) * num_samples)
    manifest.finish(n=len(records))
    return records
