"""Every stage a preset defines, in order: what `./run_pipeline.sh <preset>` runs.

    python -m imdb_dpo.launch.pipeline tiny

A stage is its script's own entry (`run_stage(main, STAGES)` with `--config configs/<preset>/<stage>.yaml`), so its
outputs, resume, skip and messages are the script's. On a machine without a CUDA GPU the stages run one after the
other in this process: each would otherwise spend ~10 s importing torch, transformers and TRL, a third of the tiny
preset's time. With a GPU (or IMDB_DPO_FRESH_PROCESSES=1) each stage runs in a fresh process, as a user runs the
scripts by hand, so every stage starts with the whole GPU to itself; SIGTERM and SIGUSR1 are passed on to it, and a
Ctrl-C reaches it from the terminal. A stage that fails or is stopped (a signal, the stop file) ends the chain with
its exit status; running the pipeline again goes on where it stopped.

    python -m imdb_dpo.launch.pipeline gpt2-large --gpus 8

runs the preset's runs on a node's GPUs instead, one run per GPU at a time, each in a process of its own
(imdb_dpo/launch/gpu_pool.py).
"""

import gc
import os
import signal
import subprocess
import sys
import time

from imdb_dpo.launch.cli import EXIT_USER_ERROR, run_stage
from imdb_dpo.configuration.errors import UserError

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def stages() -> list[tuple[str, str]]:
    """(config file, command) of every stage, in order: the tiny base model, SFT, the pairs, every method of the
    registry (imdb_dpo/methods), and the evaluation of them all. A preset without a stage's config skips it."""
    from imdb_dpo.methods import registry

    return [("base", "imdb_dpo.data.tiny"), ("sft", "sft"), ("preference_pairs", "preference_pairs"),
            *((key, f"train {key}") for key in registry()), ("eval", "eval")]


def command_line(command: str, config: str) -> list[str]:
    module, *method = command.split()
    if module.startswith("imdb_dpo."):
        return [sys.executable, "-m", module, "--config", config]
    return [sys.executable, os.path.join(REPOSITORY, f"{module}.py"), *method, "--config", config]


def run_here(command: str, config: str) -> int:
    import importlib

    module, *method = command.split()
    if module == "imdb_dpo.data.tiny":
        from imdb_dpo.configuration.arguments import TinyBaseArguments
        from imdb_dpo.data.tiny import build_tiny_base

        return run_stage(build_tiny_base, [TinyBaseArguments], ["--config", config], "imdb_dpo.data.tiny")
    script = importlib.import_module(module)
    if method:
        return script.main([*method, "--config", config])
    return run_stage(script.main, script.STAGES, ["--config", config], f"{module}.py")


def end_of_stage() -> None:
    """What one stage leaves behind is not the next one's: its signal handlers (a Ctrl-C between stages stops the
    chain) and its memory."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    gc.collect()


def run_in_fresh_process(command: str, config: str) -> int:
    child = subprocess.Popen(command_line(command, config), cwd=REPOSITORY)

    def pass_on(signum, frame):
        child.send_signal(signum)

    # A Ctrl-C reaches the child from the terminal: here it must neither kill the child nor reach it twice (a second
    # SIGINT stops a stage without saving). A handler, unlike SIG_IGN, is not inherited by the child.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, pass_on)
    return child.wait()


USAGE = ("usage: python -m imdb_dpo.launch.pipeline <preset> [--gpus N]   (a folder of configs/, e.g. tiny, or a folder's "
         "path; --gpus N runs N runs at once, one per GPU of this node)")


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    options = [part for option in argv[1:]
               for part in (option.split("=", 1) if option.startswith("--gpus=") else [option])]  # --gpus=8: --gpus 8
    if not argv or options[:1] not in ([], ["--gpus"]) or len(options) > 2:
        print(USAGE, file=sys.stderr)
        return EXIT_USER_ERROR
    gpus = None
    if options:
        from imdb_dpo.launch.gpu_pool import parse_gpus  # not at the top: gpu_pool imports this module

        try:
            gpus = parse_gpus(options[1] if len(options) == 2 else "")
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USER_ERROR
    configs = os.path.join(REPOSITORY, "configs", argv[0])
    configs = configs if os.path.isdir(configs) else os.path.abspath(argv[0])
    if not os.path.isdir(configs):
        print(f"no preset '{argv[0]}': neither {os.path.join(REPOSITORY, 'configs', argv[0])} nor {configs} is a "
              "folder", file=sys.stderr)
        return EXIT_USER_ERROR
    sys.path.insert(0, REPOSITORY)  # the stage scripts
    if not any(os.path.isfile(os.path.join(configs, f"{stage}.yaml")) for stage, _ in stages()):
        print(f"{configs} holds no stage config ({', '.join(f'{stage}.yaml' for stage, _ in stages())}): it is not a "
              "preset", file=sys.stderr)
        return EXIT_USER_ERROR
    if gpus is not None:
        return run_on_gpus(configs, gpus)
    import torch

    fresh_processes = torch.cuda.is_available() or os.environ.get("IMDB_DPO_FRESH_PROCESSES") == "1"
    started = time.monotonic()
    for stage, command in stages():
        config = os.path.join(configs, f"{stage}.yaml")
        if not os.path.isfile(config):
            continue
        print(f"== {stage} ({config})", flush=True)
        stage_started = time.monotonic()
        try:
            if fresh_processes:
                code = run_in_fresh_process(command, config)
            else:
                code = run_here(command, config)
        except KeyboardInterrupt:
            print("\ninterrupted: the same command goes on from the last save", file=sys.stderr)
            return 130
        finally:
            end_of_stage()
        sys.stdout.flush()
        if code:
            print(f"== {stage} stopped (exit status {code}); run the same command again to go on", flush=True)
            return code
        print(f"== {stage}: {time.monotonic() - stage_started:.0f} s", flush=True)
    print(f"== done in {time.monotonic() - started:.0f} s: outputs under {os.environ.get('OUTPUT_ROOT', REPOSITORY)}")
    return 0


def run_on_gpus(configs: str, gpus: int) -> int:
    from imdb_dpo.launch.gpu_pool import run_pool

    try:
        return run_pool(configs, os.path.basename(os.path.normpath(configs)), gpus)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
