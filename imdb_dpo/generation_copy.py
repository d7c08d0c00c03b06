"""The copy of the policy that RLOO and online DPO sample from while they train (`generation_dtype`).

TRL samples with the training model itself: fp32 weights under the bf16 autocast accelerate wraps its forward in, so
each decode step casts every weight to bf16 again, reads 8 bytes a parameter instead of 2 and launches 1,103 kernels
a token instead of 741 (GPT-2 Large, benchmarks/bench_decode_ops.py). A resident copy in `generation_dtype`, refreshed
from the policy's weights before every generation, samples from the current policy with the same bf16 matrix
products, without the casts. Unlike autocast, its layer norms, softmax and residual stream are bf16 too: the samples
are a training signal, not a measurement, and the evaluation samples in its own sampling_dtype.
"""

import torch

from .errors import ConfigError
from .distributed import sharded_launch
from .modeling import model_like
from .precision import DTYPES


def check_generation_dtype(script_args, use_peft: bool) -> None:
    name = script_args.generation_dtype
    if name is None:
        return
    if name not in DTYPES:
        raise ConfigError(f"generation_dtype={name!r}: use one of {', '.join(DTYPES)}, or leave it unset to sample with "
                          "the training model itself")
    if use_peft:
        raise ConfigError(f"generation_dtype={name} with use_peft: the copy would merge the adapter into a copy of the "
                          "whole model at every step; leave generation_dtype unset for a LoRA run")
    sharded = sharded_launch()
    if sharded:
        raise ConfigError(f"generation_dtype={name} under {sharded}: each process copies the whole model it holds, and "
                          f"{sharded} holds a shard; leave generation_dtype unset, or launch with "
                          "configs/accelerate/ddp.yaml")


class GenerationCopy:
    """One process's resident copy of its policy replica, in `dtype`."""

    def __init__(self, dtype_name: str):
        self.dtype = DTYPES[dtype_name]
        self.model = None

    @torch.no_grad()
    def refresh(self, policy) -> torch.nn.Module:
        """The copy, holding `policy`'s current weights (rounded to its dtype)."""
        if self.model is None:
            device = next(policy.parameters()).device
            # Building draws random initial weights: the sampling that follows must draw what it would have drawn
            # from the policy itself, and a resumed run what a straight one drew.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                self.model = model_like(policy, self.dtype, device)
        self.model.load_state_dict(policy.state_dict())
        return self.model


def make_generation_copy(script_args) -> GenerationCopy | None:
    return GenerationCopy(script_args.generation_dtype) if script_args.generation_dtype else None
