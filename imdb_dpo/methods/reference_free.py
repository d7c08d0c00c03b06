"""The reference-free methods on stage 2's pairs, with TRL's experimental trainers: ORPO (Hong et al., 2024) and CPO
(Xu et al., 2024) with SimPO's loss (Meng et al., 2024).

    python train.py orpo --config configs/gpt2-large/orpo.yaml            # from the SFT model
    python train.py orpo_base --config configs/gpt2-large/orpo_base.yaml  # from the base model, as ORPO's paper does
    python train.py cpo --config configs/gpt2-large/cpo.yaml
    python train.py simpo --config configs/gpt2-large/simpo.yaml

None of them keeps a reference model while training, but the frontier still measures every checkpoint's KL against
the SFT model: the same axis as every other method. ORPO from the base model folds the SFT step into its loss (the
chosen completions' negative log-likelihood), so it starts from the model the SFT stage started from; every other
run starts from the model that sampled the pairs.
"""

from trl import ModelConfig
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from imdb_dpo.configuration.arguments import PairMethodArguments
from imdb_dpo.planning.costs import supervised_memory
from imdb_dpo.configuration.errors import ConfigError
from imdb_dpo.lifecycle.manifests import describe_model_input
from imdb_dpo.data.pairs import REQUIRED_IDS
from imdb_dpo.lifecycle.training_runs import pairs_input, read_training_pairs
from imdb_dpo.methods import GPUCheck
from imdb_dpo.methods.recipe import Recipe, recipe_method

IGNORED = -100  # a label the loss skips
PAIR_CURVES = [
    ("loss", "loss"),
    ("nll_loss", "NLL of the chosen completions"),
    ("rewards/accuracies", "reward accuracy"),
    (("logps/chosen", "logps/rejected"), "log-prob of chosen / rejected"),
]
CPO_LOSSES = ("sigmoid", "hinge", "ipo")  # CPOConfig's losses that train.py cpo runs; simpo is train.py simpo


class SampledPairRows:
    """A trainer mixin: ORPO's and CPO's rows built from the token ids that were sampled, where TRL would re-tokenise
    text, add BOS to the prompt and EOS to every completion (one cut at the length cap would learn to stop). A
    completion longer than max_length leaves is cut, as TRL cuts it."""

    def tokenize_row(self, feature, model=None) -> dict:
        prompt = feature["prompt_ids"]
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            completion = feature[f"{side}_ids"][: max(0, self.max_length - len(prompt))]
            row[f"{side}_input_ids"] = prompt + completion
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(completion))
            row[f"{side}_labels"] = [IGNORED] * len(prompt) + completion
        return row


class PretokenizedORPOTrainer(SampledPairRows, ORPOTrainer):
    pass


class PretokenizedCPOTrainer(SampledPairRows, CPOTrainer):
    pass


def pair_examples(from_sampler: bool):
    """The examples of a pair method: every pair of the file; `from_sampler` False lets the run start from another
    model than the one that sampled them (ORPO from the base model), which the manifest then names."""
    def examples(script_args: PairMethodArguments, model_args: ModelConfig) -> tuple[list[dict], dict]:
        model = model_args.model_name_or_path
        inputs = {"pairs": pairs_input(script_args.pairs_file, model if from_sampler else None, "its start"),
                  "model": describe_model_input(model)}
        pairs = read_training_pairs(script_args.pairs_file, model)
        return [{k: p[k] for k in REQUIRED_IDS} for p in pairs[: script_args.max_train_pairs]], inputs
    return examples


def keep_row_columns(args) -> None:
    args.remove_unused_columns = False  # the rows' columns are not the model's arguments; TRL would set it later,
    # after the manifest recorded the config


def check_cpo(args) -> None:
    keep_row_columns(args)
    if args.loss_type not in CPO_LOSSES:
        fix = "run train.py simpo for SimPO's loss" if args.loss_type in ("simpo", "alphapo") else "fix loss_type"
        raise ConfigError(f"loss_type={args.loss_type!r}: train.py cpo runs CPO's {', '.join(CPO_LOSSES)}; {fix}")
    if args.simpo_gamma != CPOConfig.__dataclass_fields__["simpo_gamma"].default:
        raise ConfigError(f"simpo_gamma={args.simpo_gamma} is SimPO's target margin: CPO's {args.loss_type} loss never "
                          "reads it; remove it, or run train.py simpo")
    if args.label_smoothing and args.loss_type != "sigmoid":
        raise ConfigError(f"label_smoothing={args.label_smoothing}: CPO's {args.loss_type} loss ignores it (TRL reads "
                          "it in the sigmoid loss only); remove it or use loss_type sigmoid")
    _check_bc_weight(args)


def check_simpo(args) -> None:
    if args.loss_type != "simpo":
        raise ConfigError(f"loss_type={args.loss_type!r}: train.py simpo trains SimPO's loss; set loss_type: simpo "
                          "(CPO's other losses are train.py cpo)")
    if not args.simpo_gamma >= 0:
        raise ConfigError(f"simpo_gamma={args.simpo_gamma}: SimPO's target margin between the chosen and the rejected "
                          "reward must be >= 0 (its paper: gamma/beta about 0.5); fix simpo_gamma")
    keep_row_columns(args)
    _check_bc_weight(args)


def _check_bc_weight(args) -> None:
    if not args.cpo_alpha >= 0:
        raise ConfigError(f"cpo_alpha={args.cpo_alpha}: the weight of the chosen completions' NLL must be >= 0")


def _variants(args) -> str:
    """The settings that change any CPO loss, where they are set: AlphaPO's reward shape and label smoothing."""
    return (f"_alpha{args.alpha:g}" if args.alpha else "") + (f"_ls{args.label_smoothing:g}" if args.label_smoothing
                                                                else "")


def cpo_name(args, beta: float) -> str:
    """`cpo_sigmoid_beta0.1`; the NLL weight where it is not CPO's 1 (`_nll0.5`)."""
    return (f"cpo_{args.loss_type}_beta{beta:g}" + (f"_nll{args.cpo_alpha:g}" if args.cpo_alpha != 1 else "")
            + _variants(args))


def simpo_name(args, beta: float) -> str:
    """`simpo_beta2_gamma0.5`; CPO-SimPO's NLL weight where it is not 0 (`_nll1`)."""
    return (f"simpo_beta{beta:g}_gamma{args.simpo_gamma:g}" + (f"_nll{args.cpo_alpha:g}" if args.cpo_alpha else "")
            + _variants(args))


def _pairs_memory(script_args, training_args, *rest, **kw):
    return supervised_memory(training_args, *rest[:2], True, *rest[2:], **kw)  # chosen and rejected, full logits


def _recipe(key, title, config, trainer, from_sampler, run_name, check=keep_row_columns) -> Recipe:
    return Recipe(key=key, title=title, script=PairMethodArguments, config=config, trainer=trainer,
                  curves=PAIR_CURVES, examples=pair_examples(from_sampler), memory=_pairs_memory, run_name=run_name,
                  limit_field="max_train_pairs", completion_fields=("chosen_ids", "rejected_ids"),
                  metric=("rewards/accuracies", "reward accuracy"), check=check)


RECIPES = {
    "orpo": _recipe("orpo", "ORPO", ORPOConfig, PretokenizedORPOTrainer, True, lambda args, beta: f"orpo_beta{beta:g}"),
    "orpo_base": _recipe("orpo_base", "ORPO from the base model", ORPOConfig, PretokenizedORPOTrainer, False,
                         lambda args, beta: f"orpo_base_beta{beta:g}"),  # run names are unique across methods
    "cpo": _recipe("cpo", "CPO", CPOConfig, PretokenizedCPOTrainer, True, cpo_name, check_cpo),
    "simpo": _recipe("simpo", "SimPO", CPOConfig, PretokenizedCPOTrainer, True, simpo_name, check_simpo),
}

ORPO_STYLE = {"cmap": "RdPu", "fmt": "-", "marker": "*"}
METHODS = (
    recipe_method(RECIPES["orpo"], 80, ORPO_STYLE, gpu_check=GPUCheck(("--betas", "0.1"), "orpo_beta0.1_seed0")),
    recipe_method(RECIPES["orpo_base"], 90, {"cmap": "Greys", "fmt": ":", "marker": "*"},
                  gpu_check=GPUCheck(like="orpo")),
    recipe_method(RECIPES["cpo"], 100, {"cmap": "YlOrBr", "fmt": "-.", "marker": "X"}, loss_field="loss_type",
                  gpu_check=GPUCheck(like="simpo")),
    recipe_method(RECIPES["simpo"], 110, {"cmap": "GnBu", "fmt": "--", "marker": "h"},
                  gpu_check=GPUCheck((), "simpo_beta2_gamma1_seed0")),
)
