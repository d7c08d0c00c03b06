"""What the project adds to TRL's DPOTrainer: its losses checked before any work and named in the run's folder,
exact sampled token ids, and a NaN guard."""

import dataclasses
import math
import os
import shutil

import trl
from datasets import load_dataset
from transformers import set_seed
from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config

from imdb_dpo.planning import costs
from imdb_dpo.lifecycle.checkpoints import check_schedule
from imdb_dpo.configuration.checks import check_model, check_positive, check_training
from imdb_dpo.configuration.arguments import DPOScriptArguments
from imdb_dpo.planning.costs import check_memory, dpo_memory, frontier_inputs, longest_pair, model_shape
from imdb_dpo.lifecycle.distributed import main_process_first
from imdb_dpo.configuration.errors import ConfigError, UserError
from imdb_dpo.evaluation.in_training import frontier_of
from imdb_dpo.lifecycle.manifests import describe_model_input
from imdb_dpo.models.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.data.pairs import REQUIRED_IDS
from imdb_dpo.planning.plan import Row, bound, frontier_classifier, frontier_row, runs_of, sweep_of, trained_steps
from imdb_dpo.lifecycle.preemption import exit_resumable
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import (last_logged, logged_line, pairs_input, read_training_pairs, seed_values, sweep_values,
                             train_sweep)
from imdb_dpo.methods import GPUCheck, Method

# DPOConfig.loss_type's choices in TRL 1.16 (its help lists them; TRL itself checks a name only at the first loss).
# Every one is computed from our pairs: `aot_unpaired` sorts a batch's chosen and rejected log-ratios apart, but
# still reads them from pairs, and `sft` is the chosen completions' negative log-likelihood.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# The f-DPO divergences (Wang et al., 2024), and the losses TRL generalises with them: those built on the chosen
# minus rejected score, where the log-partition term cancels.
F_DIVERGENCES = {"reverse_kl": "", "forward_kl": "fkl", "js_divergence": "js", "alpha_divergence": "alpha"}
F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
SMOOTHED_LOSSES = {"robust", "exo_pair", "aot", "aot_unpaired"}  # the losses that read label_smoothing


# What training_curves.png shows for a DPO run: (logged key or keys, panel title).
DPO_CURVES = [
    ("loss", "DPO loss"),
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "preference accuracy"),
    (("logps/chosen", "logps/rejected"), "log-prob of chosen / rejected"),
]


class LossNotFinite(UserError, FloatingPointError):
    """The DPO loss became NaN or infinite; the message says what to change."""


def check_losses(args, betas: list[float]) -> None:
    """DPOConfig's loss settings, refused before any work where TRL would fail after loading the models (an unknown
    loss or divergence, a divergence the loss has no form for, EXO without smoothing), ignore a setting silently,
    or where a beta sweep would train the same run twice (`sft` alone has no beta)."""
    fix = "fix loss_type in the config or on the command line"
    unknown = [t for t in args.loss_type if t not in LOSS_TYPES]
    if unknown:
        raise ConfigError(f"loss_type {unknown[0]!r} is not one of TRL {trl.__version__}'s DPO losses "
                          f"({', '.join(LOSS_TYPES)}); {fix}")
    if len(set(args.loss_type)) != len(args.loss_type):
        raise ConfigError(f"loss_type={args.loss_type} names a loss twice; give each once (loss_weights weighs them)")
    weights = args.loss_weights
    if weights is not None and not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"loss_weights={weights}: each weight must be a number > 0; fix loss_weights")
    if args.f_divergence_type not in F_DIVERGENCES:
        raise ConfigError(f"f_divergence_type={args.f_divergence_type!r}: use one of {', '.join(F_DIVERGENCES)}")
    if args.f_divergence_type != "reverse_kl":
        other = [t for t in args.loss_type if t not in F_DIVERGENCE_LOSSES]
        if other:
            raise ConfigError(f"f_divergence_type={args.f_divergence_type} has no form for loss_type {other[0]!r} (TRL "
                              f"generalises only {', '.join(sorted(F_DIVERGENCE_LOSSES))}); {fix}, or leave "
                              "f_divergence_type at reverse_kl")
        if args.f_divergence_type == "alpha_divergence" and not (0 < args.f_alpha_divergence_coef < 1):
            raise ConfigError(f"f_alpha_divergence_coef={args.f_alpha_divergence_coef}: the alpha-divergence needs "
                              "0 < alpha < 1 (alpha -> 1 is reverse KL, alpha -> 0 forward KL); fix it")
    if "exo_pair" in args.loss_type and not args.label_smoothing > 0:
        raise ConfigError("loss_type exo_pair needs label_smoothing > 0 (its epsilon; the EXO paper uses 1e-3); set "
                          "label_smoothing")
    if args.label_smoothing and not SMOOTHED_LOSSES & set(args.loss_type):
        raise ConfigError(
            f"label_smoothing={args.label_smoothing} with loss_type {'+'.join(args.loss_type)}: TRL {trl.__version__} "
            f"reads label smoothing only in {', '.join(sorted(SMOOTHED_LOSSES))} and ignores it here; use loss_type "
            "robust for noisy preference labels, or set label_smoothing to 0")
    if args.loss_type == ["sft"] and len(betas) > 1:
        raise ConfigError(f"loss_type sft alone does not read beta, so betas={betas} would train the same run "
                          f"{len(betas)} times; give one beta")


def run_name(args, beta: float) -> str:
    """A run directory name that shows the loss and beta at a glance: `sigmoid_beta0.1`, `robust_beta0.1_ls0.2`,
    `sigmoid+sft_w1-0.5_beta0.1` (a weighted combination), `sigmoid_js_beta0.1` or `sigmoid_alpha0.3_beta0.1` (an
    f-divergence other than reverse KL). Settings not named here (discopop_tau, ld_alpha, ...) are in the manifest:
    a run of the same name with other settings is refused, not overwritten."""
    name = "+".join(args.loss_type)
    if args.loss_weights and len(set(args.loss_weights)) > 1:
        name += "_w" + "-".join(f"{w:g}" for w in args.loss_weights)
    divergence = F_DIVERGENCES.get(args.f_divergence_type, args.f_divergence_type)
    if divergence == "alpha":
        divergence += f"{args.f_alpha_divergence_coef:g}"
    name += (f"_{divergence}" if divergence else "") + f"_beta{beta:g}"
    if args.label_smoothing:
        name += f"_ls{args.label_smoothing:g}"
    return name


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on the token ids that were actually sampled.

    TRL re-tokenises `prompt + chosen` text and appends EOS to every completion. A completion cut at the
    length cap would then learn to stop, and re-tokenised text can differ from the sampled ids. Pair files
    carry `prompt_ids/chosen_ids/rejected_ids`, whose completions end with EOS only when the model ended
    them, so a data set with those columns is used as it is.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if set(REQUIRED_IDS) <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if not math.isfinite(loss.item()):
            raise LossNotFinite(
                f"DPO loss is {loss.item()} at step {self.state.global_step + 1} of {self.args.output_dir}; the step "
                "was not applied and no checkpoint was written for it. Lower learning_rate, or train in bf16/fp32 "
                "rather than fp16, then rerun: training resumes from the last good checkpoint."
            )
        return loss


STAGES = (DPOScriptArguments, DPOConfig, ModelConfig)


def check_inputs(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> list[dict]:
    """The pairs, once every setting and the pair file are checked."""
    check_training(training_args)
    check_positive(script_args, "max_train_pairs")
    check_schedule(script_args, training_args)
    check_model("model_name_or_path", model_args.model_name_or_path)
    return read_training_pairs(script_args.pairs_file, model_args.model_name_or_path)  # file, line and field of any fault


def load_pairs_dataset(script_args: DPOScriptArguments, cache_dir: str):
    # The datasets cache sits beside the runs, on persistent storage, so a requeued job finds the cached
    # reference log-probs (they are keyed on this data set's fingerprint and the reference model's hash).
    with main_process_first():  # one process fills the datasets cache; the others read it
        dataset = load_dataset("json", data_files=script_args.pairs_file, split="train", cache_dir=cache_dir)
    dataset = dataset.select_columns(list(REQUIRED_IDS))
    if script_args.max_train_pairs:
        dataset = dataset.select(range(min(script_args.max_train_pairs, len(dataset))))
    return dataset


def new_trainer(args, model_args, dataset, tokenizer, callbacks=()):
    set_seed(args.seed)  # the same LoRA initialisation, hence the same reference hash, in every run
    return PretokenizedDPOTrainer(model=model_args.model_name_or_path, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, peft_config=get_peft_config(model_args),
                                  callbacks=list(callbacks))


def main(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> int:
    state = training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    betas = sweep_values("betas", script_args.betas, "beta", training_args.beta, DPOConfig.__dataclass_fields__["beta"].default)
    seeds = seed_values(script_args.seeds)
    check_losses(training_args, betas)
    pair_list = check_inputs(script_args, training_args, model_args)
    frontier = frontier_of(script_args, "dpo", training_args.output_dir)
    shape, tokens = model_shape(model_args.model_name_or_path), longest_pair(pair_list)
    check_memory("DPO", lambda: dpo_memory(training_args, shape, tokens, *frontier_inputs(frontier),
                                           lora=model_args.use_peft),
                 state.device, training=training_args, frontier_eval=frontier and frontier.args)
    pairs = pairs_input(script_args.pairs_file, model_args.model_name_or_path, "DPO's reference")
    set_model_init_kwargs(training_args, model_args)
    cache = os.path.join(training_args.output_dir, ".datasets_cache")
    if script_args.reference_only and script_args.overwrite:  # the cached log-probs are what it names: made again
        if state.is_main_process:
            shutil.rmtree(cache, ignore_errors=True)
        state.wait_for_everyone()
    dataset = load_pairs_dataset(script_args, cache)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")
    if script_args.reference_only:
        if not training_args.precompute_ref_log_probs:
            raise ConfigError("reference_only needs precompute_ref_log_probs: true in the config")
        scratch = os.path.join(training_args.output_dir, ".reference")
        new_trainer(dataclasses.replace(training_args, output_dir=scratch), model_args, dataset, tokenizer)
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"reference log-probs cached in {training_args.output_dir}/.datasets_cache")
        return 0
    def results(trainer):
        return {"final_metrics": last_logged(trainer, "rewards/accuracies")}

    def finished_line(manifest):
        return logged_line(manifest["final_metrics"], [("rewards/accuracies", "preference accuracy", ".3f")])

    if not train_sweep(betas, field="beta", run_name=run_name, stage="dpo", what="DPO run",
                       configs={"script": script_args, "training": training_args, "model": model_args},
                       inputs={"pairs": pairs, "model": describe_model_input(model_args.model_name_or_path)},
                       make_trainer=lambda args, callbacks: new_trainer(args, model_args, dataset, tokenizer, callbacks),
                       curves=DPO_CURVES, results=results, finished_line=finished_line, frontier=frontier, seeds=seeds):
        return exit_resumable()
    return 0


def plan(preset, key, script_args, training_args, model_args) -> Row:
    shape = preset.shape(model_args.model_name_or_path)
    counts = preset.pairs(script_args.pairs_file)
    pairs = min(counts["pairs"], script_args.max_train_pairs or math.inf)
    tokens = min(counts["tokens"], training_args.max_length or math.inf)
    betas = script_args.betas or [training_args.beta]
    check_losses(training_args, betas)
    frontier = frontier_classifier(preset, script_args)
    peak = preset.fit(lambda: costs.dpo_memory(training_args, shape, tokens, *frontier, lora=model_args.use_peft),
                      training=training_args, frontier_eval=frontier[0])
    steps = trained_steps(pairs, training_args)
    row = Row(key, runs_of(script_args, betas), exact=counts["exact"], peak=peak)
    rows_per_step = 2 * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    row.seconds = row.runs * costs.compute_seconds(costs.training_flops(shape, steps * rows_per_step * tokens, tokens),
                                                   training_args.bf16)
    if training_args.precompute_ref_log_probs:  # once for the sweep: cached
        row.shared = costs.compute_seconds(costs.forward_flops(shape, 2 * pairs * tokens, tokens), training_args.bf16)
        row.seconds += row.shared
    row.notes.append(f"{bound(pairs, counts['exact'])} pairs a run, {sweep_of(betas, 'beta', script_args)}")
    frontier_row(preset, row, shape, training_args, script_args, steps, model_args.use_peft)
    return row


def shares_reference(config: dict) -> bool:
    """Whether the sweep's runs share one reference pass: they cache it (precompute_ref_log_probs)."""
    return config.get("precompute_ref_log_probs") is True


METHODS = (Method(key="dpo", title="DPO", order=10, stages=STAGES, main=main, plan=plan, sweep="betas",
                  parameter="beta", parameter_field="beta", style={"cmap": "Blues", "fmt": "-", "marker": "o"},
                  loss_field="loss_type",
                  shared_pass=("--reference_only", "true"), shared_pass_name="reference", shares_pass=shares_reference,
                  check=lambda script_args, training_args: check_losses(training_args, script_args.betas or [
                      training_args.beta]),
                  gpu_check=GPUCheck(("--betas", "0.1"), "sigmoid_beta0.1_seed0", on_cpu=True,
                                     gpu_flags=("--max_steps", "8", "--max_train_pairs", "512"),
                                     cpu_flags=("--max_steps", "3", "--max_train_pairs", "24",
                                                "--precompute_ref_batch_size", "8"))),)
