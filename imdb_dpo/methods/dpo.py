"""What the project adds to TRL's DPOTrainer: its losses checked before any work and named in the run's folder,
exact sampled token ids, and a NaN guard."""

import math

import trl
from trl import DPOTrainer

from ..errors import ConfigError, UserError
from ..pairs import REQUIRED_IDS

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


def run_name(args, beta: float, use_peft: bool = False) -> str:
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
    return name + ("_lora" if use_peft else "")


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
