"""Unlikelihood (Welleck et al. 2019), the DPO paper's baseline that pushes the rejected completion down directly.

On a pair (x, y_w, y_l), with p_t the model's probability of the token actually at position t:

    loss = mean_t [-log p_t(y_w)]  +  alpha * mean_t [-log(1 - p_t(y_l))]

the first term is Preferred-FT's (the chosen completion's mean token negative log-likelihood), the second the
unlikelihood term over the rejected completion's tokens, weighted by alpha. Token means keep the loss on the scale
of Preferred-FT's, so the two baselines share learning rates. 1 - p is clamped at 1e-5, as in Welleck et al.'s code:
a token the model is sure of would otherwise give an infinite loss. There is no reference model.

Trains on the pair file's exact token ids (a completion ends with EOS only where the model ended it).
"""

from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed
from trl import ModelConfig, get_peft_config
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import selective_log_softmax

from imdb_dpo.lifecycle.checkpoints import check_schedule
from imdb_dpo.configuration.checks import check_model, check_positive, check_training
from imdb_dpo.configuration.arguments import UnlikelihoodScriptArguments
from imdb_dpo.planning.costs import check_memory, frontier_inputs, longest_pair, model_shape, supervised_memory
from imdb_dpo.evaluation.in_training import frontier_of
from imdb_dpo.lifecycle.manifests import describe_model_input
from imdb_dpo.models.modeling import load_tokenizer, set_model_init_kwargs
from imdb_dpo.data.pairs import REQUIRED_IDS
from imdb_dpo.planning.plan import plan_supervised
from imdb_dpo.lifecycle.preemption import exit_resumable
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from imdb_dpo.lifecycle.training_runs import (last_logged, logged_line, pairs_input, read_training_pairs, seed_values, sweep_values,
                             train_sweep)
from imdb_dpo.methods import GPUCheck, Method

CURVES = [
    ("loss", "Unlikelihood loss"),
    (("nll/chosen", "unlikelihood/rejected"), "chosen NLL / rejected unlikelihood term (per token)"),
    (("logps/chosen", "logps/rejected"), "log-prob of chosen / rejected"),
]


@dataclass
class UnlikelihoodConfig(TrainingArguments):
    alpha: float = field(default=1.0, metadata={"help": "Weight of the unlikelihood term on the rejected completion."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Longest prompt + completion in tokens; longer pairs are cut at the end."}
    )
    model_init_kwargs: dict | None = field(
        default=None, metadata={"help": "Keyword arguments of AutoModelForCausalLM.from_pretrained."}
    )


def run_name(args, alpha: float) -> str:
    """e.g. `unlikelihood_alpha1`: the method and its weight at a glance."""
    return f"unlikelihood_alpha{alpha:g}"


def unlikelihood_loss(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor, alpha: float):
    """The loss of a batch whose first half holds prompt + chosen and second half prompt + rejected (the layout of
    TRL's DataCollatorForPreference), with its two terms and the sequences' log-probabilities for the logs."""
    logp = selective_log_softmax(logits[:, :-1].float(), input_ids[:, 1:])  # position t-1 predicts token t
    mask = completion_mask[:, 1:].to(logp.dtype)
    logp_chosen, logp_rejected = logp.chunk(2)
    mask_chosen, mask_rejected = mask.chunk(2)
    nll = -(logp_chosen * mask_chosen).sum(1) / mask_chosen.sum(1)
    one_minus_p = (1 - logp_rejected.exp()).clamp_min(1e-5)
    unlikely = -(torch.log(one_minus_p) * mask_rejected).sum(1) / mask_rejected.sum(1)
    return (nll + alpha * unlikely).mean(), {
        "nll/chosen": nll.mean().item(), "unlikelihood/rejected": unlikely.mean().item(),
        "logps/chosen": (logp_chosen * mask_chosen).sum(1).mean().item(),
        "logps/rejected": (logp_rejected * mask_rejected).sum(1).mean().item()}


class UnlikelihoodTrainer(Trainer):
    """A plain `Trainer` with the unlikelihood loss over pre-tokenised pairs (`prompt_ids`, `chosen_ids`,
    `rejected_ids`); the model is loaded from `model` (a path) with `args.model_init_kwargs`."""

    loss_is_scaled_for_ga = False  # a mean over the batch: the Trainer divides by gradient_accumulation_steps

    def __init__(self, model: str, args: UnlikelihoodConfig, train_dataset, processing_class, peft_config=None,
                 callbacks=None):
        model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        collator = DataCollatorForPreference(pad_token_id=processing_class.pad_token_id, max_length=args.max_length)
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         processing_class=processing_class, callbacks=callbacks)
        self._logged: dict[str, list[float]] = {}

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        loss, terms = unlikelihood_loss(logits, inputs["input_ids"], inputs["completion_mask"], self.args.alpha)
        for key, value in terms.items():
            self._logged.setdefault(key, []).append(value)
        return (loss, logits) if return_outputs else loss

    def log(self, logs: dict, start_time=None) -> None:
        if "loss" in logs:  # a training log: add the means of the terms since the last one
            logs.update({key: sum(values) / len(values) for key, values in self._logged.items() if values})
            self._logged = {}
        super().log(logs, start_time)


STAGES = (UnlikelihoodScriptArguments, UnlikelihoodConfig, ModelConfig)


def main(script_args: UnlikelihoodScriptArguments, training_args: UnlikelihoodConfig, model_args: ModelConfig) -> int:
    training_args.distributed_state  # first, so the process group follows use_cpu as the Trainer will
    check_wandb_credentials(training_args.report_to)
    alphas = sweep_values("alphas", script_args.alphas, "alpha", training_args.alpha,
                          UnlikelihoodConfig.__dataclass_fields__["alpha"].default)
    seeds = seed_values(script_args.seeds)
    check_training(training_args)
    check_positive(script_args, "max_train_pairs")
    check_positive(training_args, "max_length")
    check_schedule(script_args, training_args)
    frontier = frontier_of(script_args, "unlikelihood", training_args.output_dir)
    check_model("model_name_or_path", model_args.model_name_or_path)
    pairs = read_training_pairs(script_args.pairs_file, model_args.model_name_or_path)
    shape, tokens = model_shape(model_args.model_name_or_path), longest_pair(pairs)
    check_memory("Unlikelihood", lambda: supervised_memory(training_args, shape, tokens, True, *frontier_inputs(frontier),
                                                           lora=model_args.use_peft),
                 training_args.distributed_state.device, training=training_args, frontier_eval=frontier and frontier.args)
    inputs = {"pairs": pairs_input(script_args.pairs_file, model_args.model_name_or_path, "Unlikelihood's start"),
              "model": describe_model_input(model_args.model_name_or_path)}
    dataset = Dataset.from_list([{k: p[k] for k in REQUIRED_IDS} for p in pairs[: script_args.max_train_pairs]])
    set_model_init_kwargs(training_args, model_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, padding_side="right")

    def make_trainer(args, callbacks):
        set_seed(args.seed)
        return UnlikelihoodTrainer(model_args.model_name_or_path, args, dataset, tokenizer,
                                   get_peft_config(model_args), callbacks)

    def results(trainer):
        return {"final_metrics": last_logged(trainer, "loss"), "pairs": len(dataset)}

    def finished_line(manifest):
        return f"{len(dataset)} pairs; " + logged_line(manifest["final_metrics"], [
            ("logps/chosen", "log-prob of chosen", ".2f"), ("logps/rejected", "of rejected", ".2f")])

    if not train_sweep(alphas, field="alpha", run_name=run_name, stage="unlikelihood", what="Unlikelihood run",
                       configs={"script": script_args, "training": training_args, "model": model_args},
                       inputs=inputs, make_trainer=make_trainer, curves=CURVES, results=results,
                       finished_line=finished_line, frontier=frontier, seeds=seeds):
        return exit_resumable()
    return 0


def plan(preset, stage, script_args, training_args, model_args):
    return plan_supervised(preset, stage, script_args, training_args, model_args, pairs=True)


METHODS = (Method(key="unlikelihood", title="Unlikelihood", order=60, stages=STAGES, main=main, plan=plan,
                  sweep="alphas", parameter="alpha", parameter_field="alpha",
                  style={"cmap": "Purples", "fmt": "-.", "marker": "s"},
                  gpu_check=GPUCheck(("--alphas", "1"), "unlikelihood_alpha1_seed0", on_cpu=True)),)
