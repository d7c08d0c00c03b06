"""One run per output folder at a time.

Two runs of a stage on one folder would interleave their appends and both mark the result finished (two
evaluations doubled every record; two pair runs wrote every prompt twice). Each stage therefore holds an
exclusive `flock` on `<parent>/.<folder>.lock` while it works on the folder. The kernel releases the lock
when the process ends, however it ends (SIGKILL, a SLURM time limit, a crashed node's NFS lease expiring), so
a lock left by a dead run is simply taken by the next one and a requeued job never waits on itself. The lock
file sits beside the folder, not in it, so `--overwrite` can delete the folder without dropping the lock.
The file also records who holds it, for the message the next run prints.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings

from imdb_dpo.configuration.errors import ConfigError, UserError


class FolderInUse(UserError, RuntimeError):
    """Another live process works on the folder; the message names it and what to do."""


def lock_path(directory: str) -> str:
    directory = os.path.abspath(directory)
    return os.path.join(os.path.dirname(directory), f".{os.path.basename(directory)}.lock")


@contextlib.contextmanager
def folder_lock(directory: str, stage: str):
    """Hold `directory` for this process until the block ends; fail at once if another process holds it."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"{directory} is a file, but {stage} writes a folder there; give output_dir a folder path "
                          "(one that does not exist yet is made)")
    path = lock_path(directory)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # e.g. Lustre mounted without -o flock
                warnings.warn(f"{path}: this file system refuses locks ({e.strerror}); running unlocked, so do not "
                              f"start a second {stage} on {directory}")
                yield
                return
            raise FolderInUse(
                f"{directory} is in use by another {stage} run ({_holder(fd)}); wait for it to end or stop it, or "
                "give this run another output folder. The lock is released whenever that process ends, even by a "
                f"kill; only if its machine crashed and the lock is still held minutes later, delete {path}"
            ) from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "stage": stage,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "slurm_job": os.environ.get("SLURM_JOB_ID")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return "holder unknown"
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}{job}"


def main_process_lock(directory: str, stage: str):
    """The folder lock for a folder the launcher's main process writes for all processes."""
    from imdb_dpo.lifecycle.distributed import is_main_process

    return folder_lock(directory, stage) if is_main_process() else contextlib.nullcontext()
