"""What a stage does with its output folder before it works: skip, resume, start afresh or stage a replacement.

The rules, the same for every stage:
- A finished folder is read-only. Run again with the same settings, the stage skips it; with other settings it is
  an error that lists them. `--overwrite true` does the new work in a twin folder beside it (`.<name>.new`) and
  swaps the two only once the new work has finished: a typo, a crash or a kill leaves the finished folder as it was.
- An unfinished folder made with the same settings is resumed (a requeued job, with or without `--overwrite`).
  One made with other settings is discarded and started afresh when it holds no work yet (a failed first start
  never blocks the corrected one); when it holds work, resuming would mix two settings, so it is an error that
  lists them, and `--overwrite true` discards that unfinished work.

"Settings" are what decides a stage's results (`settings.py` defines them once).
"""

import os
import shutil
from dataclasses import dataclass

from imdb_dpo.configuration.arguments import ConfigError
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.lifecycle.settings import differences, manifest_settings

def _listing(diffs: list[str]) -> str:
    shown = "; ".join(diffs[:6])
    return shown + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")


def staging_dir(final: str) -> str:
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.new")


def _replaced_dir(final: str) -> str:
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old")


def promote(staging: str, final: str) -> None:
    """Swap a finished replacement in for the finished folder it replaces (two renames, then a delete)."""
    old = _replaced_dir(final)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old)


def _complete_interrupted_swap(final: str) -> None:
    """A kill between the two renames of `promote` leaves no folder under the final name: finish the swap."""
    old, staging = _replaced_dir(final), staging_dir(final)
    if not os.path.exists(final) and os.path.isdir(old):
        staged = read_manifest(staging) if os.path.isdir(staging) else None
        os.rename(staging if staged and staged.get("finished") else old, final)
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class OutputPlan:
    final: str
    directory: str  # where this run works: `final`, or its staging twin when it replaces a finished folder
    skip: bool = False

    @property
    def replacing(self) -> bool:
        return self.directory != self.final

    def finish(self) -> None:
        """Once the work in `directory` has finished: make it the final folder."""
        if self.replacing:
            promote(self.directory, self.final)


def plan_output(final: str, settings_now: dict, has_work, overwrite: bool, what: str, is_main: bool = True,
                barrier=lambda: None) -> OutputPlan:
    """Decide (on every process alike), then act (on the main one): see the module's rules.

    `settings_now` is `run_settings(...)` of this run, compared with the manifest's; `has_work(directory)` tells
    whether an unfinished folder holds results worth resuming (checkpoints, finished batches)."""
    final = os.path.abspath(final)
    if is_main:
        _complete_interrupted_swap(final)
    barrier()
    plan, discard = _decide(final, settings_now, has_work, overwrite, what)
    barrier()  # every process has read the folders before the main one changes them
    if discard and is_main:
        shutil.rmtree(plan.directory)
    barrier()
    return plan


def _decide(final, settings_now, has_work, overwrite, what) -> tuple[OutputPlan, bool]:
    manifest = read_manifest(final) if os.path.isdir(final) else None
    directory = final
    if manifest and manifest.get("finished"):
        diffs = differences(manifest_settings(manifest), settings_now)
        if not overwrite:
            if diffs:
                raise ConfigError(
                    f"{final} holds a finished {what} made with other settings ({_listing(diffs)}). To redo it with "
                    "these settings pass --overwrite true (the finished one is replaced only when the new one has "
                    "finished), or set another output folder to keep both")
            print(f"{what} in {final} is finished with these settings; skipping (--overwrite true redoes it)")
            return OutputPlan(final, final, skip=True), False
        directory = staging_dir(final)
        manifest = read_manifest(directory) if os.path.isdir(directory) else None
    if manifest is None:
        return OutputPlan(final, directory), False
    diffs = differences(manifest_settings(manifest), settings_now)
    if diffs and has_work(directory) and not overwrite:
        raise ConfigError(
            f"{directory} holds an unfinished {what} started with other settings ({_listing(diffs)}); resuming would "
            "mix the two. Run again with the settings it was started with to resume it, or pass --overwrite true to "
            "discard the unfinished work and start again with these")
    return OutputPlan(final, directory), bool(diffs)
