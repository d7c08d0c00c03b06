"""Manifests and atomic writes: how a stage tells the next one what it made and whether it finished.

A manifest (`manifest.json` beside a stage's outputs) records the config, the inputs (with the run id
of the stage that made them, or a content hash for plain files), package versions, the git commit and
a `finished` flag. It is always written atomically, so a killed job leaves either the old manifest or
the new one, never half of one.
"""

import copy
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import subprocess
import tempfile
import time
import uuid

MANIFEST_NAME = "manifest.json"
_VERSIONED_PACKAGES = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "tokenizers")


def write_text_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError) and not error.filename:  # a full disk: name the file
            raise OSError(error.errno, error.strerror, path) from error
        raise


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str) -> str:
    """The file's SHA-256, read once per process while the file is unchanged (same inode, size and modification
    time): a stage checks its pair file and records it as an input, and the paper's is about 100 MB."""
    status = os.stat(path)
    return _sha256(os.path.abspath(path), status.st_ino, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def config_to_dict(obj) -> dict:
    if hasattr(obj, "to_dict"):  # TrainingArguments and the TRL configs
        # A copy all the way down: some trainers edit the config's dicts in place once the manifest holds them (TRL's
        # ORPO and CPO add device_map to model_init_kwargs), and the manifest records what the run was asked for.
        return copy.deepcopy(obj.to_dict())
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj)


def read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_finished(directory: str) -> bool:
    manifest = read_manifest(directory)
    return bool(manifest and manifest.get("finished"))


def describe_model_input(path: str) -> dict:
    """How a stage names the model it consumed: its path and the run id of the stage that made it."""
    manifest = read_manifest(path) if os.path.isdir(path) else None
    return {
        "path": os.path.abspath(path) if os.path.exists(path) else path,
        "run_id": manifest.get("run_id") if manifest else None,
    }


def describe_file_input(path: str, field: str = "an input file") -> dict:
    """An input file as a manifest records it: by content (its SHA-256), with where it was."""
    if not os.path.isfile(path):
        from imdb_dpo.configuration.errors import ConfigError

        raise ConfigError(f"{field}={path!r}: file not found; check the path (relative paths start at {os.getcwd()})")
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}


class Manifest:
    """The manifest of one run: created unfinished at the start, marked finished at the very end.

    A resumed run keeps the run id of the interrupted one, so the stages downstream still match it. Under a
    launcher the main process writes it, unless the directory belongs to this process alone (`own=True`).
    """

    def __init__(self, directory: str, stage: str, configs: dict, inputs: dict, own: bool = False):
        self.directory = directory
        self.own = own
        previous = read_manifest(directory)
        self.data = {
            "stage": stage,
            "run_id": previous["run_id"] if previous else uuid.uuid4().hex,
            "finished": False,
            "started_at": previous["started_at"] if previous else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {name: config_to_dict(cfg) for name, cfg in configs.items()},
            "inputs": inputs,
            "versions": package_versions(),
            "git_commit": git_commit(),
        }
        from imdb_dpo.planning.fitting import LAST

        if LAST:  # the pass sizes this process fitted to its device: how it ran, not what it computes
            self.data["performance"] = copy.deepcopy(LAST)
        self.save()

    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    def save(self) -> None:
        from imdb_dpo.lifecycle.distributed import is_main_process

        if self.own or is_main_process():  # one writer; other ranks would each draw another run id
            write_json_atomic(os.path.join(self.directory, MANIFEST_NAME), self.data)

    def finish(self, **results) -> None:
        self.data.update(results, finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.save()
