"""The precision rule, one for every stage (README, "Precision").

- Training (SFT, DPO, RLOO, Preferred-FT, Unlikelihood) keeps fp32 weights (`dtype: float32`) and computes under
  bf16 autocast where the config sets `bf16: true` (the GPU presets); on CPU, `bf16: false`, plain fp32.
- Inference (sampling, the reward classifier, the KL pass) runs in the dtype its stage's setting names
  (`sampling_dtype`, `reward_dtype`, `kl_dtype`), float32 unless set, on whichever device the model is on. These
  settings decide results (a bf16 model samples a slightly different policy, a bf16 classifier gives a different
  reward), so they are part of every stage's settings: outputs made with other values are never mixed in.
- The device is the process's (`use_cpu: true` keeps a stage on the CPU on a machine with a GPU); nothing here
  looks at whether a GPU exists somewhere.
"""

import torch

from .config import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(args, field: str) -> torch.dtype:
    """The torch dtype named by `args.<field>` (a ConfigError naming the field for any other value)."""
    name = getattr(args, field)
    if name not in DTYPES:
        raise ConfigError(f"{field}={name!r}: use one of {sorted(DTYPES)} (float32 unless you mean otherwise: "
                          "README, 'Precision'); fix it in the config or on the command line")
    return DTYPES[name]
