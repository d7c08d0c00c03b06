"""The SLURM arrays' tasks (imdb_dpo/launch/sweep_tasks.py): task i is the i-th run of the stage's own sweep."""

import os
import subprocess
import sys

import pytest

from conftest import CPU_FLAGS, REPO
from imdb_dpo.configuration.arguments import parse_config, strict_yaml
from imdb_dpo.methods import registry
from imdb_dpo.launch.sweep_tasks import main as sweep_tasks_main

# Each method of the gpt2-large preset run with seeds, and its sweep as the registry declares it.
STAGES = {m.key: m.sweep for m in registry().values()
          if "seeds" in (strict_yaml(os.path.join(REPO, f"configs/gpt2-large/{m.key}.yaml")) or {})}


def sweep_tasks(*args) -> subprocess.CompletedProcess:
    """As the job scripts run it, `python -m imdb_dpo.launch.sweep_tasks ...`, but in this process (its main is the
    whole command; test_the_command_runs_as_the_job_scripts_run_it runs it as a process once): exit status, stdout and
    stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sweep_tasks_main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_the_command_runs_as_the_job_scripts_run_it():
    config = os.path.join(REPO, "configs/gpt2-large/dpo.yaml")
    proc = subprocess.run([sys.executable, "-m", "imdb_dpo.launch.sweep_tasks", config, "betas", "count"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "12\n", proc.stderr


def task_flags(capsys, *args) -> str:
    """The same, in this process (a second a call less)."""
    capsys.readouterr()
    assert sweep_tasks_main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_task_is_one_run_of_the_preset_and_the_tasks_are_every_run_in_the_stages_order(stage, capsys):
    config, field = os.path.join(REPO, f"configs/gpt2-large/{stage}.yaml"), STAGES[stage]
    stages = registry()[stage].stages
    (whole, *_) = parse_config(stages, ["--config", config, *CPU_FLAGS])  # bf16 needs a GPU here
    values = getattr(whole, field) if field != "-" else [None]
    expected = [(v, s) for v in values for s in whole.seeds]  # training_runs.train_sweep's order
    assert len(whole.seeds) == 3 and whole.keep_final_model_seeds == [0]  # the preset's three seeds, one disk

    assert int(task_flags(capsys, config, field, "count")) == len(expected)
    for task, (value, seed) in enumerate(expected):
        flags = task_flags(capsys, config, field, "task", str(task)).split()
        (one, *_) = parse_config(stages, ["--config", config, *CPU_FLAGS, *flags])  # what the job script runs
        assert one.seeds == [seed] and (field == "-" or getattr(one, field) == [value]), (task, flags)


def test_a_task_beyond_the_array_or_a_config_without_a_list_is_named(tmp_path):
    config = os.path.join(REPO, "configs/gpt2-large/dpo.yaml")
    out = sweep_tasks(config, "betas", "task", "12")
    assert out.returncode == 2 and "has 12 runs" in out.stderr and "--array=0-11" in out.stderr
    bad = tmp_path / "dpo.yaml"
    bad.write_text("betas: 0.1\n")
    out = sweep_tasks(str(bad), "betas", "count")
    assert out.returncode == 2 and "betas is 0.1" in out.stderr and str(bad) in out.stderr
    bad.write_text("betas: [0.1, 1e-1]\n")  # YAML reads 1e-1 as text
    out = sweep_tasks(str(bad), "betas", "count")
    assert out.returncode == 2 and "entry '1e-1' is not a number" in out.stderr
    bad.write_text("betas: [0.1, 1.0, 0.1]\n")  # two array tasks would train one run at once
    out = sweep_tasks(str(bad), "betas", "count")
    assert out.returncode == 2 and "gives a value twice" in out.stderr and str(bad) in out.stderr
    bad.write_text("betas: [0.1]\nbetas: [0.2]\n")
    out = sweep_tasks(str(bad), "betas", "count")
    assert out.returncode == 2 and "line 2" in out.stderr and "given twice" in out.stderr
    out = sweep_tasks(str(tmp_path / "missing.yaml"), "betas", "count")
    assert out.returncode == 2 and "missing.yaml" in out.stderr and "Traceback" not in out.stderr
    for field, message in (("beta", "field 'beta': name the stage's sweep"), ("seeds", "field 'seeds'"),
                           ("-", "sweeps betas, not nothing"), ("alphas", "sweeps betas, not alphas")):
        out = sweep_tasks(config, field, "count")  # a typo would run every beta in each task
        assert out.returncode == 2 and message in out.stderr, (field, out.stderr)
    out = sweep_tasks(config, "betas", "task", "\u00b2")
    assert out.returncode == 2 and "tasks 0 to 11" in out.stderr and "Traceback" not in out.stderr
    # A config without the list or seeds (or with seeds: []) runs its single value once: one task, no flag.
    single = tmp_path / "one.yaml"
    single.write_text("beta: 0.1\nseeds: []\n")
    assert sweep_tasks(str(single), "betas", "count").stdout == "1\n"
    assert sweep_tasks(str(single), "betas", "task", "0").stdout == "\n"


def test_the_jobs_of_a_folder_that_is_no_preset_are_refused(tmp_path):
    out = sweep_tasks("jobs", str(tmp_path / "nosuch"))
    assert out.returncode == 2 and "nosuch: no such folder; name a preset's folder of configs" in out.stderr
    out = sweep_tasks("jobs", str(tmp_path))
    assert out.returncode == 2 and "holds no method's config" in out.stderr and out.stdout == ""
