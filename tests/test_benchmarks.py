"""The benchmark scripts run end to end at tiny size on CPU and report every figure they promise.
(Timings belong in benchmarks/RESULTS.md, not in assertions.)"""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def run_benchmark(name, tmp_path):
    out = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, f"benchmarks/{name}.py", "--size", "tiny", "--output", str(out)], cwd=REPO,
                   check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())


def test_dpo_benchmark_reports_both_variants(tmp_path):
    result = run_benchmark("bench_dpo", tmp_path)
    variants = {r["variant"]: r for r in result["results"]}
    assert set(variants) == {"trl_defaults", "project"}
    assert variants["trl_defaults"]["gradient_checkpointing"] and variants["trl_defaults"]["reference_in_step"]
    assert not variants["project"]["gradient_checkpointing"] and not variants["project"]["reference_in_step"]
    for r in variants.values():
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_gb"] > 0 and "mfu" in r
    assert result["device"] and result["date"]


@pytest.mark.parametrize("name, keys", [
    ("bench_sampling", ["speedup"]),
    ("bench_eval", ["sampling_s", "reward_s", "kl_s", "projected_500_prompts_s"]),
])
def test_generation_benchmarks_report_their_figures(tmp_path, name, keys):
    result = run_benchmark(name, tmp_path)
    assert all(result[k] > 0 for k in keys)
    for r in result.get("results", []):
        assert r["prompts_per_s"] > 0 and r["projected_25k_prompts_min"] > 0
