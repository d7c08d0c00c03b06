"""The plan of a preset before any work (`python plan.py <preset>`): per stage its runs, optimizer steps,
checkpoints, disk written and kept, peak GPU memory and GPU hours on one H100, and the totals.

Offline and in seconds: it reads the preset's configs with the stages' own parser and computes every figure with the
functions the stages use (the steps as the Trainer counts them, `checkpoint_schedule`, and the memory estimates
each stage checks before loading a model, imdb_dpo/planning/costs.py). Each method's rows come from its own `plan` (the
registry, imdb_dpo/methods); this module holds what they share, and SFT's, the pairs' and the evaluation's rows.
Counts a stage reads from its input (reviews, pairs) are exact where that input exists and otherwise the most the
settings allow (marked <=). GPU hours assume the utilisations in imdb_dpo/planning/costs.py (stated under the table), not
measurements.
"""

import copy
import dataclasses
import functools
import math
import os

from imdb_dpo.planning import cards, costs, fitting
from imdb_dpo.lifecycle.checkpoints import check_schedule, save_interval, schedule_of
from imdb_dpo.configuration.checks import check_training
from imdb_dpo.configuration.arguments import (REPOSITORY, ConfigError, EvalArguments, PairsArguments, SFTScriptArguments, TinyBaseArguments,
                     parse_config)
from imdb_dpo.planning.costs import GB, Peak
from imdb_dpo.evaluation.in_training import check_keep_final_model, keeps_final_model
from imdb_dpo.methods import registry
from imdb_dpo.lifecycle.training_runs import seed_values

KNOWN_REVIEWS = {"stanfordnlp/imdb": {"train": 25_000, "test": 25_000}, "imdb": {"train": 25_000, "test": 25_000}}


@dataclasses.dataclass
class Row:
    stage: str
    runs: int = 0
    steps: str = "-"
    checkpoints: str = "-"
    written: float = 0.0
    kept: float = 0.0
    held: float = 0.0  # most on disk beyond what the stage keeps once finished, while it runs
    peak: Peak | None = None
    seconds: float = 0.0
    notes: list = dataclasses.field(default_factory=list)
    exact: bool = True  # False: counted from the most pairs the settings allow (the pair file does not exist yet)
    samples: int = 0  # rows a run's Trainer counts (steps x batch x accumulation): with a measured samples/s, its time
    points: int = 0  # checkpoints of all its runs that the frontier evaluates (while training or in eval.py)
    read: float = 0.0  # bytes loaded from the disk (models at the start of a run, checkpoints eval.py evaluates)
    shared: float = 0.0  # seconds of `seconds` spent once for all runs (DPO's cached reference pass)
    proxy: str | None = None  # the learned reward model the runs optimise, which the evaluation loads again
    fit: object = None  # the pass sizes fitted to the plan's card (imdb_dpo/planning/fitting.Fit), where any is auto
    seeds: int = 0  # training seeds a setting (0: not a point of the frontier)


def stage_names() -> list[str]:
    """Every stage a preset may have, in the order the pipeline runs them."""
    return ["sft", "preference_pairs", *registry(), "eval"]


def stages_of(name: str):
    """The parsers of a stage's config (the same dataclasses the stage reads)."""
    from trl import ModelConfig, SFTConfig

    if name in registry():
        return registry()[name].stages, ["--use_cpu", "true"]  # bf16 settings parse on a machine without a GPU too
    if name == "sft":
        return (SFTScriptArguments, SFTConfig, ModelConfig), ["--use_cpu", "true"]
    return {"preference_pairs": (PairsArguments,), "eval": (EvalArguments,)}[name], []


class Preset:
    def __init__(self, name: str, eval_overrides: dict | None = None, card: cards.Card = cards.DEFAULT):
        # A preset of the repository by name, or any folder of stage configs by its path.
        self.name = name
        self.folder = name if os.sep in name and os.path.isdir(name) else os.path.join(REPOSITORY, "configs", name)
        if not os.path.isdir(self.folder):
            raise ConfigError(f"no preset {name!r}: {self.folder} does not exist (the presets are the folders of configs/)")
        self.configs = {}  # model folder -> (transformers config, where it comes from)
        self.base = None
        base = os.path.join(self.folder, "base.yaml")
        if os.path.isfile(base):
            (self.base,) = parse_config((TinyBaseArguments,), ["--config", base], "base.yaml")
        self.rows: list[Row] = []
        self.pair_files: dict[str, dict] = {}  # pair file -> its counts (from stage 2's settings until it exists)
        self.unevaluated = 0  # checkpoints and final models that eval.py evaluates itself
        self.flags = dict(eval_overrides or {})  # settings of every evaluation the plan overrides (--eval_precision)
        self.gpus = 0  # --gpus N: the wall-clock hours on a node with N GPUs
        self.card = card  # --gpu KIND: the card whose memory the auto pass sizes fit and whose rates time them
        self.fitted = None  # the current stage's Fit
        self.stage_frontier = {}  # the current stage's copy of each frontier_eval config (its sizes fit with it)

    def fit(self, estimate, **configs) -> Peak:
        """The stage's peak once its auto pass sizes fit the card, as the stage fits them before it loads a model
        (costs.check_memory); kept for the stage's row."""
        peak, self.fitted = fitting.fit(estimate, self.card.usable_bytes, self.card.name, configs,
                                        costs.ALLOCATOR_MARGIN)
        return peak

    def parse(self, stage: str):
        path = os.path.join(self.folder, f"{stage}.yaml")
        if not os.path.isfile(path):
            return None
        stages, flags = stages_of(stage)
        if stage == "eval":
            flags = [*flags, *self.override_flags()]
        parsed = parse_config(stages, ["--config", path, *flags], f"{self.name}/{stage}.yaml")
        try:  # what the stage itself refuses before any work, without looking at its inputs
            if stage == "preference_pairs":
                import preference_pairs

                preference_pairs.check_settings(*parsed)
            elif stage == "eval":
                from imdb_dpo.evaluation.evaluator import check_settings

                check_settings(*parsed)
            else:
                script_args, training_args = parsed[0], parsed[1]
                if stage in registry():
                    registry()[stage].check(script_args, training_args)
                check_training(training_args)
                if hasattr(script_args, "checkpoint_schedule"):
                    check_schedule(script_args, training_args)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        return parsed

    def override_flags(self) -> list[str]:
        return [item for name, value in self.flags.items() for item in (f"--{name}", value)]

    # -- models --
    def model_config(self, path: str):
        """The transformers config of `path`: a model that exists (folder or hub cache), one a preset names, the
        tiny base the preset builds, or the output of an earlier stage (the same architecture as its start)."""
        from transformers import GPT2Config

        key = os.path.realpath(path) if os.sep in path else path
        if key in self.configs:
            return self.configs[key]
        if os.path.isfile(os.path.join(path, "config.json")) or os.sep not in path:
            return costs.model_config(path)
        if self.base and key == os.path.realpath(os.path.join(self.base.output_dir, "model")):
            b = self.base  # at most vocab_size tokens: the tokenizer trained on the reviews may have fewer
            return GPT2Config(vocab_size=b.vocab_size, n_positions=b.n_positions, n_embd=b.n_embd, n_layer=b.n_layer,
                              n_head=b.n_head, bos_token_id=0, eos_token_id=0)
        raise ConfigError(f"{path!r} does not exist and no earlier stage of the preset writes it")

    def shape(self, path: str, classifier: bool = False) -> costs.Shape:
        return costs.shape_of_config(self.model_config(path), classifier)

    def produces(self, output_dir: str, start: str) -> None:
        self.configs[os.path.realpath(output_dir)] = self.model_config(start)

    # -- data --
    def reviews(self, args, split: str) -> int:
        path = getattr(args, f"{split}_file")
        if path and os.path.isfile(path):
            from imdb_dpo.data.reviews import _load_local

            return len(_load_local(path, f"{split}_file", split))
        if path and self.base and os.path.realpath(path).startswith(os.path.realpath(self.base.output_dir) + os.sep):
            return getattr(self.base, f"num_{split}_reviews")
        if not path and args.dataset_name in KNOWN_REVIEWS:
            return KNOWN_REVIEWS[args.dataset_name][split]
        raise ConfigError(f"cannot count the {split} reviews of {path or args.dataset_name} offline")

    @functools.cache
    def _frontier_config(self, config: str):
        from imdb_dpo.evaluation.in_training import resolve_config_path
        from imdb_dpo.evaluation.evaluator import check_settings

        path = resolve_config_path(config)
        (args,) = parse_config((EvalArguments,), ["--config", path, *self.override_flags()], "eval.yaml")
        try:
            check_settings(args)
        except ConfigError as error:
            raise ConfigError(f"frontier_eval={path}: {error}") from None
        return args

    def frontier_args(self, script_args):
        """The settings of the evaluation config `frontier_eval` names (read once), or None without one: a copy for
        each stage, whose auto sizes fit beside that stage's training."""
        if not script_args.frontier_eval:
            return None
        config = script_args.frontier_eval
        if config not in self.stage_frontier:
            self.stage_frontier[config] = copy.copy(self._frontier_config(config))
        return self.stage_frontier[config]

    def pairs(self, pairs_file: str) -> dict:
        """The counts of a pair file: read from it where it exists (exact), else the most stage 2's settings allow."""
        key = os.path.realpath(pairs_file)
        if key not in self.pair_files and os.path.isfile(pairs_file):
            self.pair_files[key] = count_pairs(pairs_file)
        if key not in self.pair_files:
            raise ConfigError(f"pairs_file={pairs_file}: no such file, and no preference_pairs.yaml of this preset writes "
                              "it; fix the path or add the stage")
        counts = self.pair_files[key]
        if not counts["pairs"]:
            raise ConfigError(f"pairs_file={pairs_file} holds no pairs: no stage could train on it")
        return counts


def count_pairs(path: str) -> dict:
    import json

    with open(path) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    completions = os.path.join(os.path.dirname(path), "completions.jsonl")
    counted = {}
    counters = [m.completion_counts for m in registry().values() if m.completion_counts]
    if counters and os.path.isfile(completions):
        with open(completions) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for count in counters:
            counted.update(count(records))
    return {**counted, "pairs": len(pairs), "prompts": len({p["prompt_id"] for p in pairs}),
            "chosen": len({(tuple(p["prompt_ids"]), tuple(p["chosen_ids"])) for p in pairs}),
            "tokens": max((len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs),
                          default=0),
            "prompt_tokens": max((len(p["prompt_ids"]) for p in pairs), default=0), "exact": True}


def bound(value: int, exact: bool) -> str:
    return f"{value:,}" if exact else f"<= {value:,}"


def trained_steps(examples: int, training_args) -> int:
    return costs.trainer_steps(examples, training_args.per_device_train_batch_size,
                               training_args.gradient_accumulation_steps, training_args.num_train_epochs,
                               training_args.max_steps)


def trainer_samples(steps: int, training_args) -> int:
    """What the Trainer's samples/s counts over a run of `steps` steps on one process."""
    return steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps


def plan_sft(preset: Preset, script_args, training_args, model_args) -> Row:
    shape = preset.shape(model_args.model_name_or_path)
    preset.produces(training_args.output_dir, model_args.model_name_or_path)
    reviews = min(preset.reviews(script_args, "train"), script_args.max_train_samples or math.inf)
    peak = preset.fit(lambda: costs.sft_memory(training_args, shape, model_args.use_peft), training=training_args)
    steps = trained_steps(reviews, training_args)
    every = save_interval(training_args.save_steps, steps)
    saves = len(range(every, steps + 1, every)) if training_args.save_strategy == "steps" else 0
    weights, optimizer = costs.checkpoint_bytes(shape, training_args.optim, model_args.use_peft)
    held = min(saves, (training_args.save_total_limit or saves) + 1) * (weights + optimizer)
    tokens = steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    return Row("sft", 1, f"{steps:,}", f"{saves} (for resuming)", saves * (weights + optimizer) + weights, weights, held,
               peak, costs.compute_seconds(costs.training_flops(shape, tokens * training_args.max_length,
                                                          training_args.max_length), training_args.bf16),
               [f"{reviews:,} reviews x {training_args.num_train_epochs:g} epoch(s), each row up to max_length "
                f"{training_args.max_length} tokens (a batch is padded to its longest review)"],
               samples=trainer_samples(steps, training_args), read=weights)


def plan_pairs(preset: Preset, args) -> Row:
    shape = preset.shape(args.model_name_or_path)
    classifier = costs.classifier_shape(args.reward_model)
    prompts = min(args.num_prompts, preset.reviews(args, "train"))
    peak = preset.fit(lambda: costs.pairs_memory(args, shape, classifier), sampling=args)
    k = args.samples_per_prompt
    pair_file = os.path.join(args.output_dir, "pairs.jsonl")
    finished = os.path.isfile(pair_file) and os.path.isfile(os.path.join(args.output_dir, "manifest.json"))
    most = prompts * (k * (k - 1) // 2 if args.pairing == "all" else 1)
    counts = count_pairs(pair_file) if finished else {
        **{name: n for m in registry().values() if m.most_completion_counts
           for name, n in m.most_completion_counts(prompts, k).items()},
        "pairs": most, "prompts": prompts, "chosen": min(most, prompts * (k - 1)),
        "tokens": args.max_prompt_tokens + args.max_new_tokens, "prompt_tokens": args.max_prompt_tokens, "exact": False}
    preset.pair_files[os.path.realpath(pair_file)] = counts
    context = args.max_prompt_tokens + args.max_new_tokens
    samples = prompts * k
    disk = samples * costs.record_bytes(context) + counts["pairs"] * costs.record_bytes(
        args.max_prompt_tokens + 2 * args.max_new_tokens)
    sampling = costs.dtype_bytes(args.sampling_dtype)
    seconds = costs.decode_seconds(shape, prompts, args.batch_size, k, args.max_prompt_tokens, args.max_new_tokens,
                                   sampling, sampling)
    if classifier:
        seconds += costs.compute_seconds(costs.forward_flops(classifier, samples * 2 * context, 2 * context),
                                         args.reward_dtype != "float32")
    return Row("preference_pairs", 1, "-", "-", disk, disk, 0, peak, seconds,
               [f"{prompts:,} prompts x {k} samples, {bound(counts['pairs'], counts['exact'])} pairs"],
               exact=counts["exact"], read=shape.fp32_bytes)


def frontier_row(preset, row: Row, shape, training_args, script_args, steps: int, lora: bool) -> None:
    """Points, checkpoints, disk and the in-training evaluation of the row's runs of `steps` steps each (`row.seconds`
    holds their training so far)."""
    points = schedule_of(script_args, training_args)(steps)
    weights, optimizer = costs.checkpoint_bytes(shape, training_args.optim, lora)
    frontier = preset.frontier_args(script_args)
    check_keep_final_model(script_args)
    seeds = seed_values(script_args.seeds)
    row.seeds = len(seeds)
    models = row.runs * sum(keeps_final_model(script_args, s) for s in seeds) // len(seeds)
    row.steps = f"{steps:,}"
    row.samples, row.points = trainer_samples(steps, training_args), row.runs * len(points)
    row.read += row.runs * 2 * weights  # each run loads its start and its reference
    if frontier:  # points evaluated in memory; a checkpoint only every resume_minutes of a run
        records = row.runs * len(points) * frontier.num_prompts * frontier.samples_per_prompt * costs.record_bytes(
            frontier.max_prompt_tokens + frontier.max_new_tokens)
        evaluating = row.runs * len(points) * costs.evaluation_seconds(
            frontier, shape, costs.classifier_shape(frontier.reward_model), frontier.samples_per_prompt)
        row.seconds += evaluating
        minutes = script_args.resume_minutes
        resumes = math.floor(row.seconds / row.runs / (60 * minutes)) if minutes > 0 else 0
        row.checkpoints = f"{len(points)} points in memory, {resumes} to resume"
        row.written += row.runs * (resumes * (weights + optimizer) + weights) + records
        row.kept += models * weights + records
        row.notes.append(f"{evaluating / 3600:.2f} GPU hours of it evaluating {row.runs * len(points)} points in memory"
                         f" ({len(points)} a run)")
        row.held = 2 * (weights + optimizer) if resumes else 0
    else:
        row.checkpoints = f"{len(points)} kept for eval.py"
        row.written += row.runs * (len(points) * (weights + optimizer) + weights)
        row.kept += row.runs * len(points) * weights  # every checkpoint's weights (optimizer state dropped) and the final model
        preset.unevaluated += row.runs * len(points)
        row.held = 2 * (weights + optimizer)


def runs_of(script_args, values: list) -> int:
    """The runs of a sweep over `values`: one per value and seed."""
    return len(values) * len(seed_values(script_args.seeds))


def sweep_of(values: list, what: str, script_args) -> str:
    """E.g. '4 betas x 3 seeds'."""
    seeds = seed_values(script_args.seeds)
    return (f"{len(values)} {what}{'s' if len(values) > 1 else ''}" +
            (f" x {len(seeds)} seed{'s' if len(seeds) > 1 else ''}" if seeds != [None] else ""))


def frontier_classifier(preset, script_args):
    frontier = preset.frontier_args(script_args)
    return frontier, costs.classifier_shape(frontier.reward_model) if frontier else None


def sampled_step_seconds(shape, classifier, script_args, bf16: bool, completions: int, prompt_tokens: int,
                         new_tokens: int, prompts: int, batch_prompts: int, samples: int) -> float:
    """One step of a method that samples as it trains (RLOO, online DPO): sampling `samples` completions of `prompts`
    prompts (`batch_prompts` at a time), from the training model or from its generation copy (refreshed first), the
    reward model on them, and the policy's training pass and the reference's forward pass over `completions` rows."""
    context = prompt_tokens + new_tokens
    seconds = costs.compute_seconds(costs.training_flops(shape, completions * context, context), bf16)
    seconds += costs.compute_seconds(costs.forward_flops(shape, completions * context, context), bf16)  # reference
    if classifier:
        seconds += costs.compute_seconds(costs.forward_flops(classifier, completions * 2 * context, 2 * context),
                                         script_args.reward_dtype != "float32")
    copy = script_args.generation_dtype
    if copy:  # the refresh reads the fp32 weights and writes the copy's
        seconds += costs.memory_seconds(shape.params * (4 + costs.dtype_bytes(copy)))
        return seconds + costs.decode_seconds(shape, prompts, batch_prompts, samples, prompt_tokens, new_tokens,
                                              costs.dtype_bytes(copy), costs.dtype_bytes(copy),
                                              compiled=script_args.generation_compile)
    return seconds + costs.decode_seconds(shape, prompts, batch_prompts, samples, prompt_tokens, new_tokens, 4,
                                          2 if bf16 else 4, autocast=bf16)


def compile_seconds(script_args) -> float:
    """Compiling the generation copy's decode step (generation_compile), counted once a run: each run is a process
    of its own under --gpus N or a SLURM array."""
    return costs.COMPILE_SECONDS if script_args.generation_dtype and script_args.generation_compile else 0


def plan_supervised(preset, stage, script_args, training_args, model_args, pairs: bool) -> Row:
    """Preferred-FT (a chosen completion a row) or Unlikelihood (`pairs`: a pair a row, swept over alpha)."""
    shape = preset.shape(model_args.model_name_or_path)
    counts = preset.pairs(script_args.pairs_file)
    examples = (min(counts["pairs"], script_args.max_train_pairs or math.inf) if pairs else
                min(counts["chosen"], script_args.max_train_examples or math.inf))
    tokens = min(counts["tokens"], training_args.max_length or math.inf)
    frontier = frontier_classifier(preset, script_args)
    peak = preset.fit(lambda: costs.supervised_memory(training_args, shape, tokens, pairs, *frontier,
                                                      lora=model_args.use_peft),
                      training=training_args, frontier_eval=frontier[0])
    steps = trained_steps(examples, training_args)
    alphas = (script_args.alphas or [training_args.alpha]) if pairs else [None]
    row = Row(stage, runs_of(script_args, alphas), exact=counts["exact"], peak=peak)
    rows_per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * (2 if pairs else 1)
    row.seconds = row.runs * costs.compute_seconds(costs.training_flops(shape, steps * rows_per_step * tokens, tokens),
                                                   training_args.bf16)
    row.notes.append(f"{bound(int(examples), counts['exact'])} {'pairs' if pairs else 'chosen completions'} a run, "
                     f"{sweep_of(alphas, 'alpha', script_args) if pairs else sweep_of([None], 'run', script_args)}")
    frontier_row(preset, row, shape, training_args, script_args, steps, model_args.use_peft)
    return row


def plan_eval(preset, args) -> Row:
    shape = preset.shape(args.sft_model)
    classifier = costs.classifier_shape(args.reward_model)
    learned = [row.proxy for row in preset.rows if row.proxy]  # a learned reward model that runs optimised:
    proxy = preset.shape(learned[0], classifier=True) if learned else None  # the evaluation scores it too
    context = args.max_prompt_tokens + args.max_new_tokens
    peak = preset.fit(lambda: costs.evaluation_memory(args, shape, classifier, proxy), evaluation=args)
    seconds = costs.evaluation_seconds(args, shape, classifier, args.best_of_n_samples, kl=False)
    seconds += preset.unevaluated * costs.evaluation_seconds(args, shape, classifier, args.samples_per_prompt)
    records = args.num_prompts * (args.best_of_n_samples + preset.unevaluated * args.samples_per_prompt)
    disk = records * costs.record_bytes(context)
    return Row("eval", 1, "-", f"{preset.unevaluated} evaluated here" if preset.unevaluated else "records gathered",
               disk, disk, 0, peak, seconds,
               [f"the SFT model's {args.best_of_n_samples} samples on {args.num_prompts} prompts"
                + (f" and {preset.unevaluated} models" if preset.unevaluated else "")],
               read=(1 + preset.unevaluated) * shape.fp32_bytes)


def build(name: str, eval_overrides: dict | None = None, card: cards.Card = cards.DEFAULT) -> Preset:
    with costs.rated_on(card):
        return _build(Preset(name, eval_overrides or {}, card))


def _build(preset: Preset) -> Preset:
    for stage in stage_names():
        parsed = preset.parse(stage)
        if parsed is None:
            continue
        preset.fitted, preset.stage_frontier = None, {}
        if stage == "sft":
            row = plan_sft(preset, *parsed)
        elif stage == "preference_pairs":
            row = plan_pairs(preset, *parsed)
        elif stage == "eval":
            row = plan_eval(preset, *parsed)
        else:
            row = registry()[stage].plan(preset, stage, *parsed)
        row.fit = preset.fitted
        preset.rows.append(row)
    if not preset.rows:
        raise ConfigError(f"{preset.folder} holds no stage config ({', '.join(f'{s}.yaml' for s in stage_names())}): it is "
                          "not a preset")
    return preset


def gb(value: float) -> str:
    if not value:
        return "-"
    if value >= 1000 * GB:
        return f"{value / (1000 * GB):.2f} TB"
    return f"{value / GB:.1f} GB" if value >= GB else f"{value / 1e6:.0f} MB" if value >= 1e6 else f"{value / 1e3:.0f} kB"


def hours(seconds: float) -> str:
    return "-" if not seconds else f"{seconds / 3600:.2f}" if seconds >= 36 else "< 0.01"


def bounded(most: str, cell: str) -> str:
    """A cell with the '<= ' of a count bounded by the settings, where it is a figure ('-' and '< 0.01' stay)."""
    return cell if cell == "-" or cell.startswith("<") else most + cell


def io_seconds(row: Row) -> float:
    """The time a run waits for the disk: what it writes and reads, at the storage bandwidth the plan assumes."""
    return costs.storage_seconds(row.written + row.read)


def render(preset: Preset) -> str:
    flags = "".join(f" --{name} {value}" for name, value in preset.flags.items())
    gpus = f" --gpus {preset.gpus}" if preset.gpus else ""
    card = preset.card
    gpu = "" if card is cards.DEFAULT else f" --gpu {card.kind}"
    lines = [f"Plan of the {preset.name} preset, each run on one {card.name} (python plan.py {preset.name}{flags}{gpu}"
             f"{gpus}); GPU hours summed over the runs" + (", the wall-clock on the node's GPUs below" if preset.gpus
                                                           else ""), "",
             "| stage | runs | steps a run | checkpoints a run | disk written | kept when finished | most on disk while "
             f"it runs | peak GPU memory | GPU hours ({card.kind}) | of it, disk I/O |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    kept = peak_disk = seconds = written = io = 0.0
    peak_memory, exact_so_far = 0, True
    for row in preset.rows:
        held_total = kept + row.kept + row.held
        peak_disk = max(peak_disk, held_total)
        kept += row.kept
        written += row.written
        memory = row.peak.memory.total if row.peak else 0
        if fits(row):  # a stage that does not fit the card is no part of its hours or peak
            seconds += row.seconds + io_seconds(row)
            io += io_seconds(row)
            peak_memory = max(peak_memory, memory)
        most = "" if row.exact else "<= "  # counted from the most pairs stage 2's settings allow
        exact_so_far = exact_so_far and row.exact
        cells = [row.stage, str(row.runs), *(bounded(most, c) for c in (
            row.steps, row.checkpoints, gb(row.written), gb(row.kept))),
            bounded("" if exact_so_far else "<= ", gb(held_total)), memory_cell(row, card),
            bounded(most, hours(row.seconds + io_seconds(row))), bounded(most, hours(io_seconds(row)))]
        lines.append("| " + " | ".join(cells) + " |")
    most = "" if all(row.exact for row in preset.rows) else "<= "
    left_out = [row.stage for row in preset.rows if not fits(row)]
    total = (f"**total** (peak and hours without {', '.join(left_out)}: {'it does' if len(left_out) == 1 else 'they do'}"
             " not fit)") if left_out else "**total**"
    lines.append(f"| {total} | | | | **{bounded(most, gb(written))}** | **{bounded(most, gb(kept))}** | "
                 f"**{bounded(most, gb(peak_disk))}** | **{costs.size(peak_memory)}** | **{bounded(most, hours(seconds))}** "
                 f"| **{bounded(most, hours(io))}** |")
    lines += ["", "Largest step of each stage (what its memory is made of), the pass sizes fitted to the card where a "
              "config says auto, and what it counts:", ""]
    for row in preset.rows:
        detail = f"{row.peak.step}: {row.peak.memory.describe()}" if row.peak else "-"
        sizes = f"; fitted: {row.fit.describe()}" if row.fit and row.fit.sizes else ""
        lines.append(f"- {row.stage}: {detail}{sizes}; {'; '.join(row.notes)}")
    footnote = ("<=: counted from the most pairs stage 2's settings allow (the pair file does not exist yet; plan again "
               "once it does). " if most else "")
    lines += ["", footnote + "\"most on disk while it runs\" counts everything kept by the stages before it. \"peak GPU memory\": "
              "what PyTorch allocates at the stage's largest step on one process, everything resident counted (an "
              "in-memory evaluation's models stay from its first point on; under a DDP launch add one fp32 copy of the "
              f"weights for its gradient buckets); a stage starts only where {costs.ALLOCATOR_MARGIN:.0%} more is free, "
              f"for what the allocator caches ({card.name}: {card.usable_bytes / 2**30:.1f} GiB free once a process's "
              f"CUDA context is made, an assumed {cards.CONTEXT_BYTES / 2**30:.1f} GiB). GPU hours: {card.name} "
              f"datasheet peaks ({card.bf16_flops / 1e12:.0f} TFLOP/s bf16, {card.fp32_flops / 1e12:.1f} fp32, "
              f"{card.bytes_per_s / 1e12:.2f} TB/s; imdb_dpo/planning/cards.py), at an assumed {costs.MFU:.0%} of peak "
              "FLOP/s and "
              f"{costs.BANDWIDTH_USE:.0%} of bandwidth for decoding, and {costs.LAUNCH_SECONDS * 1e6:.0f} us of CPU time a "
              "kernel launch (an eager decode step of GPT-2 Large launches 741 kernels a token in fp32, 1,103 under bf16 "
              "autocast: benchmarks/bench_decode_ops.py; a compiled one, generation_compile, replays them from a CUDA "
              f"graph at an assumed {costs.GRAPH_KERNEL_SECONDS * 1e6:.0f} us a kernel after an assumed "
              f"{costs.COMPILE_SECONDS} s of compiling a run); float32 work on CUDA cores, or on TF32 tensor cores "
              f"({card.tf32_flops / 1e12:.0f} TFLOP/s) where eval_precision is tf32; disk I/O (checkpoints "
              f"and records written, models loaded) at {costs.STORAGE_BYTES_PER_S / 1e9:.1f} GB/s, counted in the "
              "GPU hours: the GPU waits for it."]
    lines += ["", seeds_line(preset)]
    if preset.gpus:
        lines += ["", wall_clock_line(preset)]
    return "\n".join(lines)


VERDICT_SEEDS = 3  # a comparison's verdict needs this many seeds a setting on each side (docs/statistics.md)


def seeds_line(preset: Preset) -> str:
    """Each trained method's seeds, and what giving those with fewer than a verdict needs that many would cost: their
    runs' hours scale with their runs (a pass the runs share, such as DPO's reference, stays)."""
    trained = [row for row in preset.rows if row.seeds and fits(row)]
    enough = [row.stage for row in trained if row.seeds >= VERDICT_SEEDS]
    few = [row for row in trained if row.seeds < VERDICT_SEEDS]
    if not trained:
        return "Seeds: no stage trains points of the frontier."
    line = f"Seeds: {', '.join(enough) or 'no method'} run{'s' * (len(enough) <= 1)} {VERDICT_SEEDS} or more seeds a setting"
    if not few:
        return line + " (a comparison's verdict needs 3 a side: docs/statistics.md)."
    total = sum(row.seconds + io_seconds(row) for row in preset.rows if fits(row))
    extra = sum((row.seconds - row.shared + io_seconds(row)) * (VERDICT_SEEDS - row.seeds) / row.seeds for row in few)
    return (line + f"; {', '.join(f'{row.stage} {row.seeds}' for row in few)}: their comparisons read \"too few seeds\" "
            f"(a verdict needs {VERDICT_SEEDS} a side: docs/statistics.md). {VERDICT_SEEDS} seeds for those "
            f"(`seeds: [0, 1, 2]` in their configs) would add {hours(extra)} GPU hours to the {hours(total)} "
            f"(+{extra / total:.0%}).")


def fits(row: Row) -> bool:
    """Whether the stage fits the plan's card (at its fitted or given pass sizes)."""
    return not row.fit or row.fit.fits


def memory_cell(row: Row, card: cards.Card) -> str:
    """The stage's peak; where it does not fit the card even at its smallest auto sizes, that and the smallest card
    that holds it."""
    memory = row.peak.memory.total if row.peak else 0
    if not row.fit or row.fit.fits:
        return costs.size(memory)
    needed = memory * (1 + costs.ALLOCATOR_MARGIN)
    smallest = cards.smallest_fitting(needed)
    return (f"**does not fit** the {card.name}: {costs.size(memory)}; needs the "
            f"{smallest.name if smallest else 'a card larger than any known'}")


def wall_clock_line(preset: Preset) -> str:
    """The hours from the first start to the last finish with `--gpus N`: each row's runs as jobs of the runner's own
    list scheduling (imdb_dpo/launch/gpu_pool.py), a run's share of the row's GPU hours each."""
    from imdb_dpo.launch.gpu_pool import preset_runs, wall_clock

    rows = {row.stage: row for row in preset.rows}
    jobs = []
    for run in preset_runs(preset.folder):
        row = rows.get(run.stage)
        if run.shared_pass_of:
            seconds = rows[run.shared_pass_of].shared
        else:
            seconds = (row.seconds - row.shared + io_seconds(row)) / max(row.runs, 1) if row else 0.0
        jobs.append((run.stage, seconds, run.waits_for))
    seconds = wall_clock(jobs, preset.gpus)
    return (f"Wall-clock on one node with {preset.gpus} GPU{'s' * (preset.gpus != 1)} (./run_pipeline.sh {preset.name} --gpus {preset.gpus}: "
            f"one run per GPU at a time, each stage's runs once the stages they read have finished): {hours(seconds)} "
            "hours.")
