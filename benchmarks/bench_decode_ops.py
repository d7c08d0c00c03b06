"""Operators an eager decode step launches, per generated token: on a GPU each is at least one kernel launch, whose
~5-10 us of CPU time bounds a step from below whatever the GPU's speed (RLOO and online DPO sample as they train).

A GPT-2 with GPT-2 Large's 36 layers and a small width runs the very same operators a token as GPT-2 Large (the
count does not depend on the width), so the CPU counts them in seconds: torch.profiler's leaf aten operators over
generate(), fp32 and under bf16 autocast (how the Trainer runs RLOO's generate with `bf16: true`: accelerate wraps
the model's forward), divided by the tokens decoded. The launch-bound floor uses 5 and 10 us a launch.

It also times generate() at the given `--size` on this machine's device (GPT-2 Large's shape on a GPU: the GPU
check's row for RL sampling), in ms a decoded token of all rows, both ways, and RLOO's bf16 generation copy
(`generation_dtype`), eager and with its decode step compiled (`generation_compile`).

    python benchmarks/bench_decode_ops.py [--size gpt2-large] [--rows 64] [--new_tokens 64] [--output ops.json]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from benchmarks.common import SIZES, Timer, build_device, emit  # noqa: E402

LAYERS = 36  # GPT-2 Large
COUNTED_TOKENS = 8


# Operators that only describe a tensor (its shape, strides, an alias, memory not yet written) or do nothing in eval
# mode: no kernel on a GPU.
METADATA = {"aten::view", "aten::as_strided", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::t",
            "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::slice",
            "aten::select", "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::narrow",
            "aten::detach", "aten::detach_", "aten::alias", "aten::empty", "aten::empty_strided", "aten::empty_like",
            "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh", "aten::result_type", "aten::dropout",
            "aten::contiguous", "aten::to", "aten::_to_copy", "aten::resize_", "aten::scalar_tensor", "aten::size",
            "aten::linear", "aten::matmul", "aten::layer_norm", "aten::scaled_dot_product_attention", "aten::softmax"}


def computes(event) -> bool:
    return event.name.startswith("aten::") and event.name not in METADATA


def kernel_ops(event) -> int:
    """Operators under `event` (itself included) that compute, counting only the innermost of nested ones."""
    inner = sum(kernel_ops(child) for child in event.cpu_children)
    return inner or int(computes(event))


def leaf_ops(model, input_ids, new_tokens: int, autocast: bool) -> int:
    """Computing operators (each at least one kernel on a GPU) over one generate()."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, pad_token_id=0)
    # As accelerate wraps it: autocast entered (and its cast weights dropped) at every forward.
    forward = autocast_forward(model, "cpu") if autocast else model.forward
    try:
        with torch.no_grad():
            model.generate(input_ids, **kwargs)  # warm up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model.generate(input_ids, **kwargs)
    finally:
        model.forward = forward
    return sum(kernel_ops(e) for e in prof.events() if e.cpu_parent is None)


def autocast_forward(model, device_type: str):
    """The model's forward wrapped as accelerate wraps it under mixed precision bf16; returns the original."""
    forward = model.forward
    model.forward = torch.autocast(device_type, dtype=torch.bfloat16)(forward)
    return forward


def ms_a_token(size: str, rows: int, new_tokens: int, autocast: bool) -> float:
    """Wall time of generate() of a GPT-2 of `size` on this machine's device, a decoded token (all rows)."""
    device = build_device()
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT2LMHeadModel(GPT2Config(**SIZES[size], bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    if autocast:
        autocast_forward(model, torch.device(device).type)
    input_ids = torch.randint(1, model.config.vocab_size, (rows, 6), device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, pad_token_id=0)
    with torch.no_grad():
        model.generate(input_ids, **kwargs)  # warm up
        with Timer() as timer:
            model.generate(input_ids, **kwargs)
    return 1000 * timer.seconds / new_tokens


def copy_ms_a_token(size: str, rows: int, new_tokens: int, compile: bool) -> float:
    """Wall time of a generation from RLOO's bf16 generation copy (imdb_dpo/models/generation_copy.py: refreshed from the fp32
    policy, then sampled; its decode step compiled where `compile`), a decoded token (all rows), after a warm-up
    generation (which compiles)."""
    from transformers import GenerationConfig

    from imdb_dpo.models.generation_copy import GenerationCopy

    device = build_device()
    torch.manual_seed(0)
    with torch.device(device):
        policy = GPT2LMHeadModel(GPT2Config(**SIZES[size], bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    copy = GenerationCopy("bfloat16", compile)
    config = copy.generation_config(GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                     do_sample=True, pad_token_id=0, eos_token_id=0))
    prompts = torch.randint(1, policy.config.vocab_size, (rows, 6)).tolist()
    copy.generate(policy, prompts, config, 0)  # warm up (and compile)
    with Timer() as timer:
        copy.generate(policy, prompts, config, 0)
    return 1000 * timer.seconds / new_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="the shape generate() is timed at")
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=LAYERS, n_embd=64, n_head=4, vocab_size=512, n_positions=256)).eval()
    # The count a token depends on neither the rows nor the tokens: 8 of each keep the profile small.
    input_ids = torch.randint(1, 512, (8, 6))
    result = {"layers": LAYERS, "rows": args.rows, "new_tokens": args.new_tokens}
    for name, autocast in (("fp32", False), ("bf16 autocast", True)):
        per_token = leaf_ops(model, input_ids, COUNTED_TOKENS, autocast) / COUNTED_TOKENS
        result[f"{name}: operators a token"] = round(per_token)
        result[f"{name}: launch-bound ms a token at 5-10 us a launch"] = [round(per_token * 5e-3, 1),
                                                                         round(per_token * 10e-3, 1)]
        result[f"{name}: ms a token at {args.size}'s shape on {build_device()}"] = round(
            ms_a_token(args.size, args.rows, args.new_tokens, autocast), 2)
    for name, compile in (("bf16 copy", False), ("bf16 copy compiled", True)):
        result[f"{name}: ms a token at {args.size}'s shape on {build_device()}"] = round(
            copy_ms_a_token(args.size, args.rows, args.new_tokens, compile), 2)
    emit({"benchmark": "decode_ops", **result}, args.output)


if __name__ == "__main__":
    main()
