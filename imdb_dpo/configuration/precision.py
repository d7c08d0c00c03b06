"""The precision rule, one for every stage (docs/precision.md).

- Training (SFT, DPO, RLOO, Preferred-FT, Unlikelihood) keeps fp32 weights (`dtype: float32`) and computes under
  bf16 autocast where the config sets `bf16: true` (the GPU presets); on CPU, `bf16: false`, plain fp32.
- Inference (sampling, the reward classifier, the KL pass) runs in the dtype its stage's setting names
  (`sampling_dtype`, `reward_dtype`, `kl_dtype`), float32 unless set, on whichever device the model is on. These
  settings decide results (a bf16 model samples a slightly different policy, a bf16 classifier gives a different
  reward), so they are part of every stage's settings: outputs made with other values are never mixed in.
- The device is the process's (`use_cpu: true` keeps a stage on the CPU on a machine with a GPU); nothing here
  looks at whether a GPU exists somewhere.
"""

import contextlib

import torch

from imdb_dpo.configuration.arguments import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(args, field: str) -> torch.dtype:
    """The torch dtype named by `args.<field>` (a ConfigError naming the field for any other value)."""
    name = getattr(args, field)
    if name not in DTYPES:
        raise ConfigError(f"{field}={name!r}: use one of {sorted(DTYPES)} (float32 unless you mean otherwise: "
                          "docs/precision.md); fix it in the config or on the command line")
    return DTYPES[name]


EVAL_PRECISIONS = {"fp32": "ieee", "tf32": "tf32"}  # eval_precision -> torch's fp32_precision of CUDA matmuls


def check_eval_precision(args) -> None:
    if args.eval_precision not in EVAL_PRECISIONS:
        raise ConfigError(f"eval_precision={args.eval_precision!r}: use 'fp32' (IEEE float32, the default) or 'tf32' "
                          "(tensor cores); fix it in the config or on the command line")


@contextlib.contextmanager
def evaluation_precision(name: str):
    """Float32 matrix products as `eval_precision` names them while the evaluation runs, then as they were: a training
    stage's `tf32: true` (or torch_compile) turns TF32 on for its whole process, and must not decide the numbers of
    the evaluation it runs between steps."""
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = EVAL_PRECISIONS[name]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
