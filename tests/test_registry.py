"""The registry (imdb_dpo/methods) is the only place a method is listed: no module outside it names a method's key,
and every list of methods the project keeps (the pipeline, train.py, the plan, the evaluation, the SLURM jobs, the
GPU check) is the registry's own."""

import ast
import dataclasses
import glob
import os
import re
import subprocess
import sys

from conftest import REPO
from imdb_dpo.configuration.arguments import RLOOScriptArguments
from imdb_dpo.methods import frontier_methods, registry

# A key that is also the name of a setting (the reward model a stage scores with) is that setting wherever it appears.
SETTINGS = {f.name for f in dataclasses.fields(RLOOScriptArguments)}


def method_keys() -> set[str]:
    return set(registry()) - SETTINGS


def project_files(*patterns) -> list[str]:
    files = [f for pattern in patterns for f in glob.glob(os.path.join(REPO, pattern), recursive=True)]
    return sorted(f for f in files if os.sep + os.path.join("imdb_dpo", "methods") + os.sep not in f)


def test_no_module_outside_the_registry_names_a_method():
    keys, found = method_keys(), []
    for path in project_files("*.py", "imdb_dpo/**/*.py", "benchmarks/*.py"):
        with open(path) as f:
            tree = ast.parse(f.read())
        found += [f"{os.path.relpath(path, REPO)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in keys]
    for path in project_files("*.sh", "slurm/*"):
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                code = line.split("#", 1)[0] if not line.startswith("#!") else ""
                found += [f"{os.path.relpath(path, REPO)}:{number}: {word!r}" for word in re.findall(r"[\w-]+", code)
                          if word in keys]
    assert found == [], "method keys named outside imdb_dpo/methods (ask the registry instead):\n" + "\n".join(found)


def test_the_scan_finds_a_method_named_outside_the_registry(tmp_path):
    """The check above can fail: a module that names a key is caught."""
    key = sorted(method_keys())[0]
    tree = ast.parse(f"ORDER = ['sft', {key!r}]")
    assert [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in method_keys()] == [key]


def test_every_list_of_methods_is_the_registrys():
    from imdb_dpo.launch.pipeline import stages
    from imdb_dpo.planning.plan import stage_names

    keys = list(registry())
    assert [s for s, _ in stages()][3:-1] == keys and stage_names()[2:-1] == keys
    proc = subprocess.run([sys.executable, "train.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and f"<method> is one of {', '.join(keys)} " in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "imdb_dpo.launch.sweep_tasks", "jobs", "configs/gpt2-large"], cwd=REPO,
                          capture_output=True, text=True)
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == keys  # the preset has every method
    for preset in ("tiny", "gpt2-large"):  # each method's two configs, one per preset
        assert all(os.path.isfile(os.path.join(REPO, "configs", preset, f"{k}.yaml")) for k in keys if
                   preset == "gpt2-large" or k not in ("orpo_base", "cpo")), preset
    assert {m.key for m in frontier_methods()} == set(keys) - {m.key for m in registry().values() if not m.on_frontier}
