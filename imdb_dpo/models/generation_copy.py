"""The copy of the policy that RLOO and online DPO sample from while they train (`generation_dtype`).

TRL samples with the training model itself: fp32 weights under the bf16 autocast accelerate wraps its forward in, so
each decode step casts every weight to bf16 again, reads 8 bytes a parameter instead of 2 and launches 1,103 kernels
a token instead of 741 (GPT-2 Large, benchmarks/bench_decode_ops.py). A resident copy in `generation_dtype`, refreshed
from the policy's weights before every generation, samples from the current policy with the same bf16 matrix
products, without the casts. Unlike autocast, its layer norms, softmax and residual stream are bf16 too: the samples
are a training signal, not a measurement, and the evaluation samples in its own sampling_dtype.

`generation_compile` compiles the copy's decode step (transformers' static cache and CompileConfig; on a GPU,
torch.compile's "reduce-overhead" replays it as one CUDA graph): an eager step of GPT-2 Large launches its 741 kernels
one by one from the CPU, a few milliseconds a token whatever the GPU's speed. The copy is refreshed in place, so the
graph reads the current weights at the addresses it captured. It compiles on any device (the CPU too, with no
graphs), once a process: a sweep's later runs reuse it.
"""

import copy

import torch

from imdb_dpo.planning.costs import static_cache_tokens
from imdb_dpo.configuration.errors import ConfigError, UserError, first_line
from imdb_dpo.lifecycle.distributed import sharded_launch
from imdb_dpo.models.modeling import model_like
from imdb_dpo.configuration.precision import DTYPES


def check_generation_dtype(script_args, use_peft: bool) -> None:
    if script_args.generation_dtype in ("", "none"):  # how a command line unsets what a config sets
        script_args.generation_dtype = None
    name = script_args.generation_dtype
    if name is None:
        if script_args.generation_compile:
            raise ConfigError("generation_compile: true compiles the generation copy's decode step, and there is no copy: "
                              "set generation_dtype (bfloat16), or remove generation_compile")
        return
    if name not in DTYPES:
        raise ConfigError(f"generation_dtype={name!r}: use one of {', '.join(DTYPES)}, or none to sample with the "
                          "training model itself")
    if use_peft:
        raise ConfigError(f"generation_dtype={name} with use_peft: the copy would merge the adapter into a copy of the "
                          "whole model at every step; pass --generation_dtype none --generation_compile false for a LoRA run")
    sharded = sharded_launch()
    if sharded:
        raise ConfigError(f"generation_dtype={name} under {sharded}: each process copies the whole model it holds, and "
                          f"{sharded} holds a shard; pass --generation_dtype none --generation_compile false, or launch with "
                          "configs/accelerate/ddp.yaml")


class GenerationCopy:
    """One process's resident copy of its policy replica, in `dtype`, its decode step compiled where `compile`."""

    def __init__(self, dtype_name: str, compile: bool = False):
        self.dtype = DTYPES[dtype_name]
        self.compile = compile
        self.model = None
        self.caches = {}

    def generation_config(self, config):
        """The trainer's generation config as the copy samples with it: with its KV cache (TRL turns the cache off
        where the training model checkpoints its activations, which the copy does not), and a compiled decode step
        where it compiles (TRL's own config disables compilation; the static cache is the copy's, `static_cache`)."""
        from transformers import CompileConfig

        config = copy.deepcopy(config)
        config.use_cache = True
        if not self.compile:
            return config
        config.disable_compile = False
        config.compile_config = CompileConfig(fullgraph=True)
        config.compile_config._compile_all_devices = True  # the CPU compiles too: the flag does what it says anywhere
        return config

    @torch.no_grad()
    def generate(self, policy, prompt_ids: list[list[int]], config, pad_id: int) -> tuple[torch.Tensor, ...]:
        """The copy, refreshed from `policy`, samples the left-padded `prompt_ids` with `config` (from the global random
        state, as TRL's generate would): the padded prompts (their mask too) and the prompts followed by completions."""
        from imdb_dpo.models.sampling import left_pad

        model = self.refresh(policy)
        ids, mask = (t.to(model.device) for t in left_pad(prompt_ids, pad_id))
        if not self.compile:
            return ids, mask, model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        cache = self.static_cache(len(prompt_ids), ids.size(1) + config.max_new_tokens)
        try:
            return ids, mask, model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                             past_key_values=cache)
        except torch._dynamo.exc.TorchDynamoException as error:  # InductorError and compiler failures among them
            raise UserError(f"generation_compile: true: torch.compile could not compile the generation copy's decode "
                            f"step on this machine ({first_line(error)}). Run again with --generation_compile false "
                            "--overwrite true (eager decoding, slower where kernel launches bound it; a setting of the "
                            "run, since its samples differ, so --overwrite true starts its runs again)") \
                from error

    def static_cache(self, rows: int, tokens: int):
        """One static KV cache a batch size, kept from generation to generation: transformers would allocate a new one
        at each, and a CUDA graph that reads a cache at other addresses is recorded again (torch gives up on graphs
        after 128 such recordings)."""
        from transformers import StaticCache

        length, cache = self.caches.get(rows, (0, None))
        if length < tokens:
            length = static_cache_tokens(tokens)
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self.caches[rows] = length, cache
        cache.reset()
        return cache

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


class SamplesFromCopy:
    """A trainer mixin: `generation_copy=` (None: TRL's own sampling), and the generation config the copy samples with
    (only the copy samples, so the trainer's config becomes the copy's)."""

    def __init__(self, *args, generation_copy: GenerationCopy | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_copy = generation_copy
        if generation_copy is not None:
            self.generation_config = generation_copy.generation_config(self.generation_config)


def make_generation_copy(script_args) -> GenerationCopy | None:
    if not script_args.generation_dtype:
        return None
    return GenerationCopy(script_args.generation_dtype, script_args.generation_compile)
