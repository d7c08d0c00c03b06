"""What a stage will cost, known before it loads anything: the GPU memory of its largest step, its optimizer steps,
checkpoints and disk, and its GPU time, from the model's config and the stage's settings.

Each GPU stage compares its memory estimate with the device's free memory before loading a model
(`check_memory`) and stops with the numbers and the setting to lower where it cannot fit; plan.py prints every
figure for a whole preset from these same functions.

The memory model, per part (bytes; P parameters, L layers, h hidden size, V vocabulary):
- training: fp32 weights 4P, gradients 4P, optimizer state 4P a slot (AdamW 2, RMSprop 1), under bf16 autocast the
  bf16 copies of the weights it keeps for the backward pass 2P, the activations saved for the backward pass
  (`ACTIVATION_BYTES` x h per token and layer), and the LM head's log-probs: TRL's fused head (SFT, DPO, RLOO,
  Preferred-FT) computes the logits of up to 32,768 tokens at a time, Unlikelihood materialises all of them.
- sampling: the weights in sampling_dtype, the KV cache (2 L h values a token of every row), and each decode step's
  next-token distribution, held in float32 and float64 by the per-sample inverse-CDF sampler.
- the KL pass: both models' log-softmax over the vocabulary at every position of kl_batch_size sequences, in fp32.
The activation figures are per token and layer (see ACTIVATION_BYTES); tests/test_costs.py holds the estimate to
within 25% of the peak resident memory of a real DPO step and a real sampling batch on the CPU, and on a GPU (the
tests marked `gpu`, and the GPU check's table) compares it with torch.cuda.max_memory_allocated.
"""

import contextlib
import dataclasses
import functools
import math
import os

import torch

from imdb_dpo.configuration.arguments import ConfigError
from imdb_dpo.configuration.errors import UserError, first_line
from imdb_dpo.planning import cards, fitting

GiB = 2**30
GB = 1e9

# Held for the backward pass, bytes per token and layer in units of h (a GPT-2 block, sdpa attention). fp32: fitted to
# the peak of TRL's DPO steps at the tiny shape (saved_tensors_hooks count 121, an upper bound: not all of it is alive
# at once); bf16 autocast: the saved_tensors_hooks count, until the GPU check measures it. Dropout adds its masks.
ACTIVATION_BYTES = {False: 106, True: 70}
DROPOUT_BYTES = {False: 13, True: 19}
FUSED_HEAD_TOKENS = 32_768  # TRL's _CHUNKED_LOGPROB_CHUNK_SIZE: the fused head's logits never exceed this many rows
# Bytes of a decode step's distribution over the vocabulary, per row: generate's fp32 logits and scores, the
# sampler's float64 softmax and cumulative sum, and the row of -inf it returns.
DECODE_BYTES_PER_VOCAB = 4 + 4 + 8 + 8 + 4
KL_BYTES_PER_VOCAB = 6 * 4  # logits, log p, log q, p, log p - log q and their product, fp32
LOCKSTEP_BYTES_PER_VOCAB = 5 * 4  # per decode step: the reference's logits, log p, log q, p and their product, fp32
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Published configs of the hub models the presets name, so that a plan needs no network and no cache.
KNOWN_CONFIGS = {
    "gpt2-large": ("gpt2", dict(n_embd=1280, n_layer=36, n_head=20, vocab_size=50257, n_positions=1024)),
    "siebert/sentiment-roberta-large-english": (
        "roberta", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2)),
}

# The card whose rates the plan's hours assume (imdb_dpo/planning/cards.py: an H100 SXM unless plan.py --gpu names
# another; `rated_on`). The evaluation's fp32 passes do not use TF32 unless eval_precision says so. The utilisations
# are assumptions, not measurements (issue 23 measures them).
CARD = cards.DEFAULT
MFU = 0.40
BANDWIDTH_USE = 0.60
# Operators an eager decode step runs a generated token, each at least one kernel launch on a GPU, as (per layer,
# more): benchmarks/bench_decode_ops.py counted generate() of a GPT-2 on the CPU (2026-12-05): 741 for GPT-2 Large's
# 36 layers in fp32, 1,103 under bf16 autocast, which casts every weight again at every step (how the Trainer runs
# RLOO's and online DPO's generate with `bf16: true`).
DECODE_OPS = {False: (19, 57), True: (29, 59)}
LAUNCH_SECONDS = 5e-6  # CPU time of one kernel launch in eager PyTorch: an assumption (5-10 us are typical)
# A compiled decode step (generation_compile) replays its kernels from one CUDA graph: the GPU still starts them one
# after another, at an assumed 1 us each (as many as eager runs: a bound, compilation fuses some), and the sampling
# around it stays eager. Compiling it costs minutes once a process: an assumed 60 s a run.
GRAPH_KERNEL_SECONDS = 1e-6
COMPILE_SECONDS = 60
# A cluster's shared filesystem, read or written by one job (1-2 GB/s): the GPU waits while a checkpoint is written
# or a model loaded. An assumption, stated with the plan.
STORAGE_BYTES_PER_S = 1.5e9


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the costs need to know of a model."""
    params: int
    layers: int
    hidden: int
    heads: int
    vocab: int
    dropout: bool  # whether its config has dropout that training keeps on unless disabled

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.params


def shape_of_config(config, classifier: bool = False) -> Shape:
    """The shape of the model `config` describes, its parameters counted on the meta device (no memory); a
    classifier has no vocabulary-sized output."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    builder = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    with torch.device("meta"):
        model = builder.from_config(config)
    text = config.get_text_config()
    dropout = any(getattr(text, name, 0) or 0 for name in ("resid_pdrop", "hidden_dropout_prob", "dropout"))
    return Shape(params=sum(p.numel() for p in model.parameters()), layers=text.num_hidden_layers,
                 hidden=text.hidden_size, heads=text.num_attention_heads, vocab=0 if classifier else text.vocab_size,
                 dropout=bool(dropout))


def model_config(name_or_path: str):
    """The transformers config of a model directory, of a cached hub model, or of a hub model the presets name
    (KNOWN_CONFIGS)."""
    from transformers import AutoConfig, CONFIG_MAPPING

    if name_or_path in KNOWN_CONFIGS and not os.path.isdir(name_or_path):
        kind, values = KNOWN_CONFIGS[name_or_path]
        return CONFIG_MAPPING[kind](**values)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{name_or_path!r}: its config.json is neither a folder here nor in the Hugging Face cache "
                          f"({first_line(error, 200)}); download it where the network is (docs/gpu.md, \"Offline "
                          "compute nodes\") or fix the name") from None


@functools.lru_cache(maxsize=32)
def model_shape(name_or_path: str, classifier: bool = False) -> Shape:
    """The shape of a model folder's or a hub model's config (read once a process: a fit asks it many times)."""
    config = model_config(name_or_path)
    return shape_of_config(config, classifier or not _is_causal(config))


def _is_causal(config) -> bool:
    return not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in config.architectures or [])


def optimizer_slots(optim: str) -> int:
    """fp32 values of optimizer state per parameter: AdamW's two moments, RMSprop's square average; unknown: 2."""
    name = str(getattr(optim, "value", optim)).lower()
    if name.startswith("rmsprop"):
        return 1
    if name.startswith(("sgd", "adafactor")):
        return 0
    return 2


def size(value: float) -> str:
    """Bytes of memory for people: GiB, or MiB below a tenth of one."""
    return f"{value / GiB:.1f} GiB" if value >= 0.1 * GiB else f"{value / 2**20:.1f} MiB"


class Memory(dict):
    """Named parts of a peak, in bytes; `total` is their sum."""

    @property
    def total(self) -> int:
        return sum(self.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {size(value)}" for name, value in self.items() if value)


def training_step(shape: Shape, rows: int, tokens_per_row: int, optim: str, bf16: bool, dropout: bool,
                  checkpointing: bool, full_logits: bool = False, lora: bool = False) -> Memory:
    """A training step's peak: weights, gradients, optimizer state, autocast copies, activations and the LM head.
    `full_logits` for a loss that materialises every position's logits (Unlikelihood); 0 vocabulary for a
    classifier (a scalar head). A LoRA adapter's gradients and optimizer state are too small to count."""
    P, tokens = shape.params, rows * tokens_per_row
    per_layer = (ACTIVATION_BYTES[bf16] + (DROPOUT_BYTES[bf16] if dropout else 0)) * shape.hidden
    if checkpointing:  # each layer's input kept, one layer's activations recomputed at a time
        activations = tokens * (4 * shape.hidden * shape.layers + per_layer)
    else:
        activations = tokens * per_layer * shape.layers
    trained = 0 if lora else P
    memory = Memory({"weights": 4 * P, "gradients": 4 * trained, "optimizer state": 4 * trained * optimizer_slots(optim)})
    if bf16:
        memory["bf16 weight copies"] = 2 * P
    memory["activations"] = activations
    if shape.vocab:
        head_tokens = tokens if full_logits else min(tokens, FUSED_HEAD_TOKENS)
        # all logits in the compute dtype, their fp32 copy and the gradient of each; or one chunk of the fused head
        # and its gradient
        memory["logits"] = head_tokens * shape.vocab * ((2 if bf16 else 4) * 2 + 8 if full_logits else 8)
    return memory


def forward_pass(shape: Shape, rows: int, tokens_per_row: int, dtype_bytes: int, weights: bool = True) -> Memory:
    """An inference forward pass (no gradients): a layer's transient activations and the fused head's logits."""
    tokens = rows * tokens_per_row
    memory = Memory({"weights": shape.params * dtype_bytes} if weights else {})
    memory["activations"] = tokens * 8 * shape.hidden * dtype_bytes
    if shape.vocab:
        memory["logits"] = min(tokens, FUSED_HEAD_TOKENS) * shape.vocab * 4 * 2
    return memory


def sampling_batch(shape: Shape, rows: int, context: int, dtype_bytes: int) -> Memory:
    """The working memory of sampling `rows` sequences of up to `context` tokens (weights not included)."""
    return Memory({"KV cache": 2 * shape.layers * rows * context * shape.hidden * dtype_bytes,
                   "next-token distributions": rows * shape.vocab * DECODE_BYTES_PER_VOCAB})


def kl_batch(shape: Shape, rows: int, context: int) -> Memory:
    return Memory({"KL pass": rows * context * (shape.vocab * KL_BYTES_PER_VOCAB + 8 * shape.hidden * 4)})


def classifier_batch(shape: Shape, rows: int, tokens: int, dtype_bytes: int) -> Memory:
    return Memory({"classifier batch": rows * tokens * (8 * shape.hidden + shape.heads * tokens) * dtype_bytes})


def merge(*parts: Memory) -> Memory:
    merged = Memory()
    for part in parts:
        for name, value in part.items():
            merged[name] = merged.get(name, 0) + value
    return merged


@dataclasses.dataclass
class Peak:
    """A stage's largest step: what it is, its memory, the setting to lower where it does not fit, and the pass size
    that sizes it (the config object and its field), which imdb_dpo/planning/fitting.py lowers where it is `auto`."""
    step: str
    memory: Memory
    fix: str
    knob: tuple = ()


def largest(*peaks: Peak) -> Peak:
    return max(peaks, key=lambda peak: peak.memory.total)


class NotEnoughMemory(UserError, RuntimeError):
    """The estimate of a stage's largest step exceeds the device's free memory."""


SKIP_VARIABLE = "IMDB_DPO_SKIP_MEMORY_CHECK"
# What PyTorch's caching allocator reserves beyond what it hands out (blocks split and cached between steps of
# changing shapes): an assumption, which the GPU check sets beside torch.cuda.max_memory_reserved. The CUDA context
# needs no share: free memory is measured after this process made it.
ALLOCATOR_MARGIN = 0.10
CHECKED: list[dict] = []  # the estimates this process checked, for the GPU check's resource report


def device_budget(device) -> tuple[int | None, str]:
    """(free bytes, what they are) of the device a stage runs on: a simulated card (IMDB_DPO_GPU_MEMORY, on any
    device), a CUDA device's free memory (this process's context already made), or (None, ...) on the CPU."""
    simulated = os.environ.get(fitting.MEMORY_VARIABLE, "")
    if simulated:
        try:
            gib = float(simulated)
        except ValueError:
            gib = math.nan
        if not gib > 0 or math.isinf(gib):
            raise ConfigError(f"{fitting.MEMORY_VARIABLE}={simulated!r}: give the free GPU memory to fit to in GiB, a "
                              "number > 0 (e.g. 39.5), or unset it")
        return int(gib * GiB), f"a simulated card with {gib:g} GiB free ({fitting.MEMORY_VARIABLE})"
    device = torch.device(device)
    if device.type != "cuda":
        return None, "the CPU"
    from imdb_dpo.lifecycle.distributed import least_over_processes

    free, total = torch.cuda.mem_get_info(device)
    free = least_over_processes(free)  # every process of a launch fits the same sizes: the most the fullest GPU allows
    return free, f"{torch.cuda.get_device_name(device)} with {free / GiB:.1f} GiB free of {total / GiB:.1f} GiB"


def check_memory(what: str, estimate, device, **configs) -> Peak:
    """Fit the `auto` pass sizes of `configs` ({label: parsed config}) to the device (imdb_dpo/planning/fitting.py),
    say what they became, and stop before loading anything where the estimate of the largest step (`estimate()`,
    read from those configs) and the allocator's margin still exceed the free memory: with the numbers, the setting
    to lower and the smallest card that would hold it. On the CPU nothing is fitted or checked. Returns the peak."""
    budget, where = device_budget(device)
    peak, chosen = fitting.fit(estimate if callable(estimate) else lambda: estimate, budget, where, configs,
                               ALLOCATOR_MARGIN)
    if chosen.sizes:
        fitted_or_not = f"fitted to {where}" if budget is not None else "on the CPU, their defaults (auto fits a GPU)"
        print(f"{what}: pass sizes {fitted_or_not}: {chosen.describe()}", flush=True)
        fitting.LAST.clear()
        fitting.LAST.update(fitted_to=where, sizes=chosen.sizes)
    CHECKED.append({"what": what, "step": peak.step, "gib": peak.memory.total / GiB, "sizes": chosen.sizes})
    if budget is None or chosen.fits or os.environ.get(SKIP_VARIABLE, "") not in ("", "0"):
        return peak
    needed = peak.memory.total * (1 + ALLOCATOR_MARGIN)
    card = cards.smallest_fitting(needed)
    smallest = (f"the smallest card that holds it is the {card.name}" if card else
                "no card in imdb_dpo/planning/cards.py holds it")
    knob_is_auto = bool(peak.knob) and peak.knob[1] in fitting.auto_sizes(peak.knob[0])
    fitted = f" even with {peak.knob[1]} at its smallest" if knob_is_auto else ""
    if knob_is_auto:  # that step is as small as it goes: what stays on the device beside it is too much
        fix = (f"{peak.knob[1]} is auto and already the smallest (with activation checkpointing, where that is auto); "
               "what the stage keeps on the device beside it does not fit: use that card")
    elif peak.knob:
        fix = f"{peak.fix}; or set {peak.knob[1]}: auto, and the stage fits it to the card"
    else:
        fix = peak.fix
    resident = ("; or frontier_eval: \"\" to evaluate its checkpoints afterwards with eval.py (the evaluation's models "
                "then leave training's memory)" if {"weights", "reference and evaluated model"} <= set(peak.memory) else "")
    raise NotEnoughMemory(
        f"{what} needs about {size(needed)} of GPU memory at its largest step{fitted} ({peak.step}: "
        f"{peak.memory.describe()}; and {ALLOCATOR_MARGIN:.0%} for what the allocator caches), but it runs on {where}: "
        f"{smallest}. {fix}{resident}. Nothing was loaded or written. (The estimate is "
        f"imdb_dpo/planning/costs.py's; where you know better, {SKIP_VARIABLE}=1 skips this check.)")


SAMPLING_FIX = ("Lower batch_size (it changes no sample: each has its own random stream) or set sampling_dtype "
                "bfloat16 (half the KV cache; it is a setting of the results)")
TRAINING_FIX = ("Lower per_device_train_batch_size (the most rows a pass holds: gradient accumulation makes up "
                "examples_per_step, which stays), or set activation_checkpointing: true")
KL_FIX = "Lower kl_batch_size (it changes no number)"
REWARD_FIX = "Lower reward_batch_size"


# ---- each stage's largest step, from its parsed settings (the stages and plan.py call these) --------------------

def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES.get(name, 4)


def classifier_shape(reward_model: str) -> Shape | None:
    """The reward classifier's shape; None for VADER, which runs on the CPU."""
    from imdb_dpo.models.reward import VADER

    return None if reward_model == VADER else model_shape(reward_model, classifier=True)


def frontier_inputs(frontier) -> tuple:
    """(evaluation settings, classifier shape) of a FrontierEvaluation, or (None, None) without one."""
    return (frontier.args, classifier_shape(frontier.args.reward_model)) if frontier else (None, None)


def longest_pair(pairs: list[dict], fields=("chosen_ids", "rejected_ids")) -> int:
    """Tokens of the longest prompt + completion of a pair file's pairs."""
    return max(len(p["prompt_ids"]) + max(len(p[f]) for f in fields) for p in pairs)


def trainer_memory(shape: Shape, training_args, rows: int, tokens_per_row: int, full_logits: bool = False,
                   lora: bool = False) -> Memory:
    """A training step of a TRL or transformers trainer configured by `training_args`."""
    dropout = shape.dropout and not getattr(training_args, "disable_dropout", False)
    checkpointing = getattr(training_args, "activation_checkpointing", training_args.gradient_checkpointing)
    return merge(training_step(shape, rows, tokens_per_row, training_args.optim, bool(training_args.bf16), dropout,
                               bool(checkpointing), full_logits, lora), ddp_buckets(shape, training_args, lora))


def ddp_buckets(shape: Shape, training_args, lora: bool = False) -> Memory:
    """DDP's gradient buckets: one more fp32 copy of the trained weights' gradients on each process, from the first
    backward pass to the end (one process, FSDP and DeepSpeed have none)."""
    from imdb_dpo.lifecycle.distributed import sharded_launch

    if training_args.world_size == 1 or lora or sharded_launch():
        return Memory()
    return Memory({"DDP gradient buckets": shape.fp32_bytes})


def resident_training_state(shape: Shape, training_args, lora: bool = False) -> Memory:
    """What stays on the device between steps: the weights, the optimizer state and DDP's gradient buckets."""
    slots = 0 if lora else optimizer_slots(training_args.optim)
    return Memory({"weights": shape.fp32_bytes, "optimizer state": shape.fp32_bytes * slots,
                   **ddp_buckets(shape, training_args, lora)})


def evaluation_models(eval_args, policy: Shape, classifier: Shape | None, proxy: Shape | None = None) -> Memory:
    """The reference and the evaluated model (each in sampling_dtype and, where it differs, kl_dtype too), the
    classifier and a learned reward model."""
    per_model = policy.params * dtype_bytes(eval_args.sampling_dtype)
    if eval_args.kl_dtype != eval_args.sampling_dtype:
        per_model += policy.params * dtype_bytes(eval_args.kl_dtype)
    memory = Memory({"reference and evaluated model": 2 * per_model})
    if classifier:
        memory["classifier"] = classifier.params * dtype_bytes(eval_args.reward_dtype)
    if proxy:
        memory["learned reward model"] = proxy.params * dtype_bytes(eval_args.reward_dtype)
    return memory


def kl_in_sampling(eval_args) -> bool:
    from imdb_dpo.evaluation.evaluator import kl_in_sampling as summed_while_sampling

    return summed_while_sampling(eval_args)


def evaluation_memory(eval_args, policy: Shape, classifier: Shape | None, proxy: Shape | None = None,
                      with_sft: bool = True) -> Peak:
    """eval.py's peak (`with_sft`: the SFT model's best-of-N samples are drawn in its batches) or one checkpoint's
    evaluation while training."""
    context = eval_args.max_prompt_tokens + eval_args.max_new_tokens
    rows = eval_args.batch_size * eval_args.samples_per_prompt
    sampling = sampling_batch(policy, rows, context, dtype_bytes(eval_args.sampling_dtype))
    steps = [Peak(f"sampling {eval_args.batch_size} prompts x {eval_args.samples_per_prompt}", sampling, SAMPLING_FIX,
                  (eval_args, "batch_size"))]
    if kl_in_sampling(eval_args):  # the reference decodes in lockstep: its cache and the KL terms
        sampling["reference's KV cache"] = sampling["KV cache"]
        sampling["KL terms"] = rows * policy.vocab * LOCKSTEP_BYTES_PER_VOCAB
    else:
        steps.append(Peak(f"the KL pass over {eval_args.kl_batch_size} samples",
                          kl_batch(policy, eval_args.kl_batch_size, context), KL_FIX, (eval_args, "kl_batch_size")))
    if with_sft:  # the reference's own samples, more of them a prompt and no KL to take
        steps.append(Peak(f"sampling {eval_args.batch_size} prompts x {eval_args.best_of_n_samples}", sampling_batch(
            policy, eval_args.batch_size * eval_args.best_of_n_samples, context, dtype_bytes(eval_args.sampling_dtype)),
            SAMPLING_FIX, (eval_args, "batch_size")))
    if classifier:
        steps.append(Peak(f"scoring {eval_args.reward_batch_size} samples", classifier_batch(
            classifier, eval_args.reward_batch_size, 2 * context, dtype_bytes(eval_args.reward_dtype)), REWARD_FIX,
            (eval_args, "reward_batch_size")))
    peak = largest(*steps)
    peak.memory = merge(evaluation_models(eval_args, policy, classifier, proxy), peak.memory)
    return peak


def sft_memory(training_args, policy: Shape, lora: bool = False) -> Peak:
    rows = training_args.per_device_train_batch_size
    return Peak(f"a training step of {rows} reviews x {training_args.max_length} tokens",
                trainer_memory(policy, training_args, rows, training_args.max_length, lora=lora), TRAINING_FIX,
                (training_args, "per_device_train_batch_size"))


def pairs_memory(args, policy: Shape, classifier: Shape | None) -> Peak:
    """Stage 2: the model in sampling_dtype and the classifier, then its largest batch."""
    context = args.max_prompt_tokens + args.max_new_tokens
    models = Memory({"weights": policy.params * dtype_bytes(args.sampling_dtype)})
    if classifier:
        models["classifier"] = classifier.params * dtype_bytes(args.reward_dtype)
    steps = [Peak(f"sampling {args.batch_size} prompts x {args.samples_per_prompt}", sampling_batch(
        policy, args.batch_size * args.samples_per_prompt, context, dtype_bytes(args.sampling_dtype)), SAMPLING_FIX,
        (args, "batch_size"))]
    if classifier:
        steps.append(Peak(f"scoring {args.reward_batch_size} samples", classifier_batch(
            classifier, args.reward_batch_size, 2 * context, dtype_bytes(args.reward_dtype)), REWARD_FIX,
            (args, "reward_batch_size")))
    peak = largest(*steps)
    peak.memory = merge(models, peak.memory)
    return peak


def with_frontier(training: Peak, training_args, policy: Shape, frontier_args, frontier_classifier: Shape | None,
                  lora: bool = False, resident: Memory | None = None, proxy: Shape | None = None) -> Peak:
    """A trained run's peak when it also evaluates its policy in memory (frontier_eval). The evaluation's models (the
    reference, the evaluated copy, the classifier and, for rloo_rm, the learned reward model in the evaluation's
    reward_dtype: `proxy`) are loaded at the first evaluation and stay for every later training step; an evaluation
    runs beside the training state and whatever the method keeps on the device (`resident`: its own reference, reward
    model, generation copy)."""
    if frontier_args is None:
        return training
    models = evaluation_models(frontier_args, policy, frontier_classifier, proxy)
    training = Peak(training.step, merge(training.memory, models), training.fix, training.knob)
    peak = evaluation_memory(frontier_args, policy, frontier_classifier, proxy, with_sft=False)
    evaluating = Peak(f"evaluating a checkpoint while training ({peak.step})",
                      merge(resident_training_state(policy, training_args, lora), resident or Memory(), peak.memory),
                      f"{peak.fix} in the evaluation config frontier_eval names", peak.knob)
    return largest(training, evaluating)


def dpo_memory(training_args, policy: Shape, tokens: int, frontier_args=None, frontier_classifier: Shape | None = None,
               lora: bool = False) -> Peak:
    tokens = min(tokens, training_args.max_length or tokens)
    rows = 2 * training_args.per_device_train_batch_size  # chosen and rejected in one batch
    step = trainer_memory(policy, training_args, rows, tokens, lora=lora)
    candidates = []
    if training_args.precompute_ref_log_probs:
        ref_pairs = training_args.precompute_ref_batch_size or training_args.per_device_eval_batch_size
        candidates.append(Peak(f"the reference pass over {ref_pairs} pairs",
                               merge(Memory({"weights": policy.fp32_bytes}), forward_pass(
                                   policy, 2 * ref_pairs, tokens, 2 if training_args.bf16 else 4, weights=False)),
                               "Lower precompute_ref_batch_size", (training_args, "precompute_ref_batch_size")))
    resident = Memory()
    if not training_args.precompute_ref_log_probs and not lora:  # a LoRA run's reference: its base, adapter off
        resident["reference model"] = policy.fp32_bytes
    candidates.append(Peak(f"a training step of {rows // 2} pairs x {tokens} tokens", merge(step, resident),
                           TRAINING_FIX, (training_args, "per_device_train_batch_size")))
    return with_frontier(largest(*candidates), training_args, policy, frontier_args, frontier_classifier, lora,
                         resident)


def static_cache_tokens(tokens: int) -> int:
    """The length of the generation copy's static KV cache for prompts and completions of `tokens`: rounded up to 32,
    so that a longer prompt rarely outgrows it (imdb_dpo/models/generation_copy.py)."""
    return -(-tokens // 32) * 32


def generation_copy_memory(policy: Shape, generation_dtype: str | None, compiled: bool, rows: int,
                           tokens: int) -> Memory:
    """The copy of the policy a method that samples as it trains samples from (`generation_dtype`) and, where its
    decode step is compiled, its static KV cache: both resident."""
    if not generation_dtype:
        return Memory()
    memory = Memory({"generation copy": policy.params * dtype_bytes(generation_dtype)})
    if compiled:
        memory["its static KV cache"] = sampling_batch(policy, rows, static_cache_tokens(tokens),
                                                       dtype_bytes(generation_dtype))["KV cache"]
    return memory


def policy_sampling(policy: Shape, training_args, rows: int, tokens: int, generation_dtype: str | None,
                    compiled: bool) -> Memory:
    """The working memory of sampling `rows` completions from the policy: its KV cache (in the copy's dtype, else in
    the training's autocast; a compiled copy's is resident instead) and next-token distributions."""
    working = sampling_batch(policy, rows, tokens, dtype_bytes(generation_dtype) if generation_dtype else
                             2 if training_args.bf16 else 4)
    if generation_dtype and compiled:
        del working["KV cache"]
    return working


def rloo_memory(training_args, policy: Shape, prompt_tokens: int, classifier: Shape | None, reward_dtype: str,
                frontier_args=None, frontier_classifier: Shape | None = None, lora: bool = False,
                generation_dtype: str | None = None, generation_compile: bool = False,
                learned_reward: bool = False, kl_coef: float | None = None) -> Peak:
    """RLOO holds the policy's training state, the reference (unless the KL coefficient is 0), the reward model and
    the generation copy; its largest step is a training step or the sampling of a generation batch. With a
    `learned_reward` (rloo_rm) the in-training evaluation loads that model once more, to score with it too.
    `kl_coef`: the largest of the sweep's coefficients, where the config's own beta is not what the runs use."""
    tokens = prompt_tokens + training_args.max_completion_length
    rows = training_args.per_device_train_batch_size
    generation_rows = rows * (training_args.steps_per_generation or training_args.gradient_accumulation_steps)
    others = generation_copy_memory(policy, generation_dtype, generation_compile, generation_rows, tokens)
    if (training_args.beta if kl_coef is None else kl_coef) and not lora:
        others["reference model"] = policy.fp32_bytes
    if classifier:
        others["reward model"] = classifier.params * dtype_bytes(reward_dtype)
    training = Peak(f"a training step of {rows} completions x {tokens} tokens",
                    merge(trainer_memory(policy, training_args, rows, tokens, lora=lora), others), TRAINING_FIX,
                    (training_args, "per_device_train_batch_size"))
    sampling = Peak(f"sampling {generation_rows} completions",
                    merge(resident_training_state(policy, training_args, lora), others,
                          policy_sampling(policy, training_args, generation_rows, tokens, generation_dtype,
                                          generation_compile)),
                    "Lower per_device_train_batch_size (or steps_per_generation)",
                    (training_args, "per_device_train_batch_size"))
    return with_frontier(largest(training, sampling), training_args, policy, frontier_args, frontier_classifier, lora,
                         others, classifier if learned_reward else None)


def online_dpo_memory(training_args, policy: Shape, prompt_tokens: int, classifier: Shape | None, reward_dtype: str,
                      frontier_args=None, frontier_classifier: Shape | None = None, lora: bool = False,
                      generation_dtype: str | None = None, generation_compile: bool = False) -> Peak:
    """Online DPO holds the policy's training state, the reference (a copy of the start, unless LoRA), the reward
    model and the generation copy; each step samples two completions a prompt, then scores both with every position's
    logits materialised."""
    tokens = prompt_tokens + training_args.max_new_tokens
    rows = 2 * training_args.per_device_train_batch_size
    others = generation_copy_memory(policy, generation_dtype, generation_compile, rows, tokens)
    if classifier:
        others["reward model"] = classifier.params * dtype_bytes(reward_dtype)
    if not lora:
        others["reference model"] = policy.fp32_bytes
    training = Peak(f"a training step of {rows} completions x {tokens} tokens",
                    merge(trainer_memory(policy, training_args, rows, tokens, full_logits=True, lora=lora), others),
                    TRAINING_FIX, (training_args, "per_device_train_batch_size"))
    sampling = Peak(f"sampling {rows} completions",
                    merge(resident_training_state(policy, training_args, lora), others,
                          policy_sampling(policy, training_args, rows, tokens, generation_dtype, generation_compile)),
                    "Lower per_device_train_batch_size", (training_args, "per_device_train_batch_size"))
    return with_frontier(largest(training, sampling), training_args, policy, frontier_args, frontier_classifier, lora,
                         others)


def supervised_memory(training_args, policy: Shape, tokens: int, pairs: bool, frontier_args=None,
                      frontier_classifier: Shape | None = None, lora: bool = False) -> Peak:
    """Preferred-FT (one completion a row, TRL's fused head) or Unlikelihood (`pairs`: chosen and rejected, every
    position's logits materialised)."""
    tokens = min(tokens, training_args.max_length or tokens)
    rows = training_args.per_device_train_batch_size * (2 if pairs else 1)
    what = f"{rows // 2} pairs" if pairs else f"{rows} completions"
    training = Peak(f"a training step of {what} x {tokens} tokens",
                    trainer_memory(policy, training_args, rows, tokens, full_logits=pairs, lora=lora), TRAINING_FIX,
                    (training_args, "per_device_train_batch_size"))
    return with_frontier(training, training_args, policy, frontier_args, frontier_classifier, lora)


def reward_model_memory(training_args, classifier: Shape, tokens: int) -> Peak:
    tokens = min(tokens, training_args.max_length or tokens)
    rows = training_args.per_device_train_batch_size * 2
    return Peak(f"a training step of {rows // 2} pairs x {tokens} tokens",
                trainer_memory(classifier, training_args, rows, tokens), TRAINING_FIX,
                (training_args, "per_device_train_batch_size"))


# ---- steps, disk and GPU time (plan.py) -------------------------------------------------------------------------

def trainer_steps(examples: int, per_device: int, accumulation: int, epochs: float, max_steps: int = -1,
                  processes: int = 1) -> int:
    """Optimizer steps of a Trainer run, as transformers' Trainer counts them (no dropped last batch)."""
    if max_steps and max_steps > 0:
        return max_steps
    batches = math.ceil(examples / (per_device * processes))
    return math.ceil(epochs * max(math.ceil(batches / accumulation), 1))


def checkpoint_bytes(shape: Shape, optim: str, lora: bool = False) -> tuple[int, int]:
    """(weights, optimizer state) of one checkpoint: fp32 safetensors and the optimizer's fp32 slots (a LoRA
    adapter's files are too small to count)."""
    if lora:
        return 0, 0
    return shape.fp32_bytes, shape.fp32_bytes * optimizer_slots(optim)


def record_bytes(tokens: int) -> int:
    """One per-sample JSON record (token ids, text and fields): about 12 bytes a token and 300 more."""
    return 300 + 12 * tokens


def training_flops(shape: Shape, tokens: int, context: int) -> float:
    """Forward and backward: 6 FLOPs a parameter a token, plus attention's 12 L h T."""
    return tokens * (6 * shape.params + 12 * shape.layers * shape.hidden * context)


def forward_flops(shape: Shape, tokens: int, context: int) -> float:
    return tokens * (2 * shape.params + 4 * shape.layers * shape.hidden * context)


@contextlib.contextmanager
def rated_on(card: cards.Card):
    """Time every cost in the block at `card`'s peaks and bandwidth (the plan of one card)."""
    global CARD
    before, CARD = CARD, card
    try:
        yield
    finally:
        CARD = before


def compute_seconds(flops: float, bf16: bool, tf32: bool = False) -> float:
    """On CARD at MFU: bf16 tensor cores, float32 on TF32 tensor cores (`tf32`), or IEEE float32 on CUDA cores."""
    peak = CARD.bf16_flops if bf16 else CARD.tf32_flops if tf32 else CARD.fp32_flops
    return flops / (peak * MFU)


def memory_seconds(nbytes: float) -> float:
    """Reading or writing `nbytes` of GPU memory at the assumed share of its bandwidth."""
    return nbytes / (CARD.bytes_per_s * BANDWIDTH_USE)


def storage_seconds(nbytes: float) -> float:
    return nbytes / STORAGE_BYTES_PER_S


def decode_seconds(shape: Shape, prompts: int, batch_prompts: int, samples: int, prompt_tokens: int,
                   new_tokens: int, weight_bytes: int, cache_bytes: int, tf32: bool = False,
                   autocast: bool = False, compiled: bool = False) -> float:
    """Sampling `samples` completions of `new_tokens` for each of `prompts` prompts, `batch_prompts` at a time: each
    decode step is bound by compute (2P FLOPs a row), by reading the weights and the KV cache, or by launching its
    kernels one by one (`autocast`: fp32 weights under bf16 autocast, cast again at every step; `compiled`: one CUDA
    graph a step, whose static cache is read whole), whichever is slowest."""
    rows = batch_prompts * samples
    per_step_compute = compute_seconds(2 * shape.params * rows, weight_bytes == 2 or autocast, tf32)
    cached = static_cache_tokens(prompt_tokens + new_tokens) if compiled else prompt_tokens + new_tokens / 2
    average_cache = 2 * shape.layers * rows * cached * shape.hidden * cache_bytes
    weights = shape.params * (weight_bytes + 2 * 2 if autocast else weight_bytes)  # autocast writes and reads a bf16 copy
    per_step_memory = memory_seconds(weights + average_cache)
    per_layer, more = DECODE_OPS[autocast]
    per_step_launches = (per_layer * shape.layers * (GRAPH_KERNEL_SECONDS if compiled else LAUNCH_SECONDS)
                         + more * LAUNCH_SECONDS)
    return math.ceil(prompts / batch_prompts) * new_tokens * max(per_step_compute, per_step_memory, per_step_launches)


def evaluation_seconds(eval_args, policy: Shape, classifier: Shape | None, samples: int, kl: bool = True) -> float:
    """One model's evaluation: sampling, the classifier and (but for the reference itself) the KL: the reference
    decoding in lockstep with the sampler where sampling_dtype is kl_dtype, else a pass of both models."""
    context = eval_args.max_prompt_tokens + eval_args.max_new_tokens
    sampling = dtype_bytes(eval_args.sampling_dtype)
    tf32 = eval_args.eval_precision == "tf32"
    decoding = decode_seconds(policy, eval_args.num_prompts, eval_args.batch_size, samples, eval_args.max_prompt_tokens,
                              eval_args.max_new_tokens, sampling, sampling, tf32)
    seconds = decoding
    tokens = eval_args.num_prompts * samples * context
    if kl and kl_in_sampling(eval_args):
        seconds += decoding
    elif kl:
        seconds += compute_seconds(2 * forward_flops(policy, tokens, context), eval_args.kl_dtype != "float32", tf32)
    if classifier:
        seconds += compute_seconds(forward_flops(classifier, tokens, context), eval_args.reward_dtype != "float32", tf32)
    return seconds
