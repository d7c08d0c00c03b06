"""How a stage reports a problem the user can fix: one paragraph naming the file, the field and the fix, and exit
status 2, with no traceback unless `--debug` is passed or `IMDB_DPO_DEBUG=1` is set. Anything else is a bug and
keeps its traceback."""

import errno
import os
import sys
import time

import torch

from imdb_dpo.lifecycle import one_gpu
from imdb_dpo.configuration.arguments import ConfigError, parse_config
from imdb_dpo.configuration.errors import UserError, first_line

DEBUG_VARIABLE = "IMDB_DPO_DEBUG"
RESOURCE_REPORT = "IMDB_DPO_RESOURCE_REPORT"  # a path: the stage writes what it used there when it ends
EXIT_USER_ERROR = 2
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def user_message(error: BaseException, output_dirs: list[str]) -> str | None:
    """The paragraph to print for `error`, or None when it is a bug (which keeps its traceback).

    Libraries wrap a full disk in errors of their own (datasets' DatasetGenerationError, safetensors'
    SafetensorError, which keeps only the text "os error 28"), so the whole chain of causes is searched."""
    if isinstance(error, UserError):
        return str(error)
    where_out = " or ".join(output_dirs) or "the output folder"
    for cause in _chain(error):
        if isinstance(cause, torch.OutOfMemoryError):  # a training step; sampling and evaluation name their own fix
            return (f"out of memory while training ({first_line(cause, default='out of memory')}). Lower "
                    "per_device_train_batch_size (the most rows a pass holds: gradient accumulation makes up "
                    "examples_per_step, which stays), or lower precompute_ref_batch_size if DPO's reference pass ran "
                    "out. The newest checkpoint is kept: the same command resumes from it.")
        number = cause.errno if isinstance(cause, OSError) else None
        if number in _DISK_FULL or f"os error {errno.ENOSPC})" in str(cause):
            number = number or errno.ENOSPC
            where = f"writing {cause.filename}" if getattr(cause, "filename", None) else f"writing under {where_out}"
            return (f"{os.strerror(number)} while {where}. Free space (or raise the quota) there, or move the outputs "
                    "with OUTPUT_ROOT, and run the same command again: finished work is kept and unfinished work "
                    "resumes.")
        if number in (errno.EROFS, errno.EACCES, errno.EPERM):
            return (f"{os.strerror(number)}: {cause.filename or where_out}. The stage must write there (its output "
                    "folder and a lock file beside it): choose a writable output_dir, or set OUTPUT_ROOT to writable "
                    "storage.")
    return None


def _take_debug_flag(argv: list[str]) -> bool:
    """`--debug` (or `--debug true`) is ours; `--debug underflow_overflow` is TrainingArguments' own setting."""
    for i, arg in enumerate(argv):
        if arg in ("--debug=true", "--debug=True"):
            del argv[i]
            return True
        if arg == "--debug":
            value = argv[i + 1] if i + 1 < len(argv) else "--"
            if value in ("true", "True"):
                del argv[i : i + 2]
                return True
            if value.startswith("--"):
                del argv[i]
                return True
    return False


def run_stage(main, stages, argv: list[str] | None = None, program: str | None = None) -> int:
    """Parse the stage's config and run `main`; a user error becomes a message and exit status 2. `program` is how
    messages name the command (the script's file name by default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _take_debug_flag(argv) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    parsed, started, code = [], time.perf_counter(), None
    try:
        program = program or os.path.basename(getattr(sys.modules.get(main.__module__), "__file__", None)
                                              or "this stage")
        parsed = parse_config(stages, argv, program)
        check_output_dirs(parsed)
        gpu = one_gpu.first_line(any(getattr(p, "use_cpu", False) for p in parsed))
        if gpu:
            print(gpu, flush=True)
        code = main(*parsed)
        return code
    except KeyboardInterrupt:  # a second Ctrl-C (the first asks for a save: preemption.StopRequest)
        if debug:
            raise
        print("\ninterrupted: the work since the last save is lost; the same command resumes from the last save",
              file=sys.stderr)
        code = 130
        return code
    except Exception as error:
        message = user_message(error, [p.output_dir for p in parsed if getattr(p, "output_dir", None)])
        if message is None or debug:
            raise
        print(f"error: {message}\n(pass --debug or set {DEBUG_VARIABLE}=1 to see the traceback)", file=sys.stderr)
        code = EXIT_USER_ERROR
        return code
    finally:
        if os.environ.get(RESOURCE_REPORT) and os.environ.get("RANK", "0") == "0":
            write_resource_report(os.environ[RESOURCE_REPORT], time.perf_counter() - started, code)


def check_output_dirs(parsed) -> None:
    """An output_dir that exists as something other than a folder is named before any work (a later makedirs would
    end in NotADirectoryError)."""
    for args in parsed:
        path = getattr(args, "output_dir", None)
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"output_dir={path!r} is a file, not a folder: name a folder (new or one this stage "
                              "wrote); nothing was written")


def write_resource_report(path: str, seconds: float, code: int | None) -> None:
    """What the stage used, for the GPU check: wall seconds, peak GPU memory (PyTorch's allocator, this process)
    beside the estimate the stage checked before loading (imdb_dpo/planning/costs.py), and peak resident memory. `exit_code`
    is None when the stage raised."""
    import json
    import resource

    from imdb_dpo.planning.costs import CHECKED

    report = {"wall_s": seconds, "exit_code": code, "device": "cpu",
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "estimated_peak_gib": max((c["gib"] for c in CHECKED), default=None),
              "estimated_step": max(CHECKED, key=lambda c: c["gib"])["step"] if CHECKED else None,
              "fitted_sizes": max(CHECKED, key=lambda c: c["gib"])["sizes"] if CHECKED else {}}
    if torch.cuda.is_initialized():
        report.update(device=torch.cuda.get_device_name(), visible_gpus=torch.cuda.device_count(),
                      peak_gpu_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                      peak_gpu_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
