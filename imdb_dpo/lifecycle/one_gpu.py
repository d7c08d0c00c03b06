"""Imported first by every stage script: without a launcher, a stage runs on one GPU, whatever the node shows.

Started with plain `python` on a node with several visible GPUs, TRL's trainers would load the model with
`device_map="auto"` split over all of them (one working at a time), and the Trainer would wrap Unlikelihood and online
DPO in `nn.DataParallel` (a batch of 64 x N pairs a step: another experiment). CUDA reads CUDA_VISIBLE_DEVICES once,
when a process first touches it, and some imports query CUDA: so the first GPU the variable lists (the node's first
where it is unset) is pinned here, before anything else is imported. A launcher (`accelerate launch`, `torchrun`)
gives each process its rank's GPU instead, and `./run_pipeline.sh --gpus N` one GPU a run.
"""

import os

LAUNCHED = ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


def pinned(environ) -> str | None:
    """The CUDA_VISIBLE_DEVICES a stage started as `environ` runs with: its first listed device without a launcher,
    None (left as it is) under one."""
    if any(name in environ for name in LAUNCHED):
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return "0"
    return visible.split(",")[0].strip()


def first_line(use_cpu: bool) -> str | None:
    """What a stage started without a launcher prints first on a GPU machine (unless it runs on the CPU): the one GPU
    it uses."""
    import torch

    if use_cpu or pinned(os.environ) is None or not torch.cuda.is_available():
        return None
    return (f"GPU: {torch.cuda.get_device_name(0)} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}): "
            "one GPU a stage without a launcher; several with accelerate launch, or ./run_pipeline.sh --gpus N for one "
            "run a GPU (docs/slurm.md, 'Several GPUs or nodes')")


def pin() -> None:
    device = pinned(os.environ)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


pin()
