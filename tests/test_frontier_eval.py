"""`frontier_eval`: a run's checkpoints evaluated while it trains, so that a finished run keeps only its final model.

The frontier must not change: the records written during training equal eval.py's records of the same checkpoints
kept on disk, a kill in the middle of an in-training evaluation resumes to the same records, and eval.py then only
gathers them (and says which steps it cannot evaluate under other settings)."""

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from imdb_dpo.methods import dpo as dpo_stage
from conftest import REPO, dpo_argv, refused_in_process, run_in_process
from helpers import wait_until
from imdb_dpo.lifecycle.checkpoints import checkpoint_steps
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.lifecycle.preemption import EXIT_RESUMABLE, STOP_FILE_VARIABLE

# 192 pairs at 32 a step: 6 steps, points at 2, 3, 4, 5 and 6 on the preset's lr-log schedule (warm-up 10 steps).
STEPS = [2, 3, 4, 5, 6]
RUN = "sigmoid_beta0.1"


def eval_config(tmp_path, tiny_base, tiny_sft, name: str, dpo_dir=None, batch_size: int = 4) -> str:
    """An evaluation config of its own for the DPO runs under `dpo_dir` (`<name>/dpo`), on 12 prompts in batches of
    `batch_size` (not a setting: the records are the same at any)."""
    root = tmp_path / name
    with open(os.path.join(REPO, "configs/tiny/eval.yaml")) as f:
        config = yaml.safe_load(f)
    assert dpo_dir is None or os.path.basename(dpo_dir) == "dpo"
    config.update(sft_model=tiny_sft, base_model="", runs_root=str(os.path.dirname(dpo_dir) if dpo_dir else root),
                  methods=["dpo"], output_dir=str(root / "eval"), train_file=tiny_base["train"],
                  test_file=tiny_base["test"], num_prompts=12, batch_size=batch_size)
    path = tmp_path / f"{name}_eval.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def dpo(tiny_sft, tiny_pairs, tmp_path, name: str, frontier_eval: str) -> list[str]:
    return dpo_argv(tiny_sft, tiny_pairs, tmp_path / name / "dpo", "--betas", "0.1", "--max_train_pairs", "192",
                    "--frontier_eval", frontier_eval)


def output_dir_of(eval_config_path: str) -> str:
    with open(eval_config_path) as f:
        return yaml.safe_load(f)["output_dir"]


def records(eval_config_path: str) -> dict:
    """{step: the run's records at that step}, without the run id (each run has its own)."""
    found = {}
    for path in glob.glob(os.path.join(output_dir_of(eval_config_path), "records", "*", RUN, "*", "step-*",
                                       "records.jsonl")):
        with open(path) as f:
            found[int(path.split("step-")[-1].split("/")[0])] = [json.loads(line) for line in f]
    return found


def summary_rows(output_dir) -> list[dict]:
    """summary.csv's rows of the run."""
    with open(os.path.join(output_dir, "summary.csv")) as f:
        return [r for r in csv.DictReader(f) if r["run"] == RUN]


def summary(eval_config_path: str) -> dict:
    return {int(r["step"]): r for r in summary_rows(output_dir_of(eval_config_path))}


@pytest.fixture(scope="module")
def runs(tiny_base, tiny_sft, tiny_pairs, dpo_with_checkpoints, tmp_path_factory):
    """The same DPO run trained twice: with `frontier_eval` (evaluated while training) and without (every checkpoint
    kept: `dpo_with_checkpoints`), each then gathered or evaluated by eval.py."""
    tmp_path = tmp_path_factory.mktemp("frontier_eval")
    during = eval_config(tmp_path, tiny_base, tiny_sft, "during")
    after = eval_config(tmp_path, tiny_base, tiny_sft, "after", os.path.dirname(dpo_with_checkpoints))
    run_in_process("dpo.py", dpo(tiny_sft, tiny_pairs, tmp_path, "during", during))
    in_training = records(during)
    for config in (during, after):
        run_in_process("eval.py", ["--config", config])
    return {"tmp": tmp_path, "during": during, "after": after, "in_training": in_training,
            "kept": dpo_with_checkpoints}


def test_a_run_evaluated_while_training_keeps_no_checkpoint_and_the_same_frontier(runs):
    during, after = runs["tmp"] / "during/dpo" / RUN, runs["kept"]
    assert checkpoint_steps(during) == [] and os.path.isfile(during / "model.safetensors")
    assert not glob.glob(str(during / ".checkpoint-*"))
    manifest = read_manifest(during)
    assert manifest["checkpoints"] == STEPS and manifest["kept_checkpoints"] == []
    assert manifest["frontier_eval"]["config"] == runs["during"]
    # Without it every checkpoint stays for eval.py but the last, which the run folder's final model duplicates.
    assert [s for s, _ in checkpoint_steps(after)] == STEPS[:-1] and read_manifest(after)["kept_checkpoints"] == STEPS[:-1]

    # The records written while training are eval.py's records of the kept checkpoints, number for number.
    assert sorted(runs["in_training"]) == STEPS
    kept = records(runs["after"])
    for step in STEPS:
        assert len(kept[step]) == 12 * 4 and runs["in_training"][step] == kept[step], step
    # eval.py gathered them unchanged, and its summary rows equal the other run's.
    assert records(runs["during"]) == runs["in_training"]
    a, b = summary(runs["during"]), summary(runs["after"])
    assert sorted(a) == STEPS == sorted(b)
    for step in STEPS:
        for column in ("reward_mean", "reward_lo", "reward_hi", "kl_mean", "kl_logratio_mean", "win_rate_vs_sft",
                       "distinct_2", "n"):
            assert a[step][column] == b[step][column], (step, column)


def test_a_kill_during_an_in_training_evaluation_resumes_to_the_same_records(runs, tiny_base, tiny_sft, tiny_pairs):
    tmp = runs["tmp"]
    config = eval_config(tmp, tiny_base, tiny_sft, "killed", batch_size=1)  # 12 batches: time to land a kill
    argv = dpo(tiny_sft, tiny_pairs, tmp, "killed", config)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "dpo.py"), *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed once the evaluation of step 2 has written a batch (of 12) and not finished.
    pattern = str(tmp / "killed/eval/records/*" / RUN / "*/step-2/records.jsonl")
    wait_until(lambda: glob.glob(pattern) and os.path.getsize(glob.glob(pattern)[0]) > 0, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not read_manifest(glob.glob(os.path.dirname(pattern))[0]).get("finished")

    run_in_process("dpo.py", argv)
    # The same samples, rewards and KLs; only where each record was logged differs (batches of 1 prompt, not 4).
    # A logit computed in a batch of another shape may round otherwise in the last bit, which moves a sampled token
    # only where its uniform lies that close to a boundary (imdb_dpo/models/sampling.py): allow 2 such samples in 192.
    resumed, whole = records(config), runs["in_training"]
    assert sorted(resumed) == sorted(whole) == STEPS
    moved = 0
    for step in STEPS:
        for a, b in zip(resumed[step], whole[step], strict=True):
            assert (a["prompt_id"], a["sample"], a["batch_size"], b["batch_size"]) == (b["prompt_id"], b["sample"], 4, 16)
            if a["completion_ids"] != b["completion_ids"]:
                moved += 1
                continue
            drop = ("batch", "batch_size", "kl_exact", "kl_logratio")
            assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
            # Summed as sampled: in a batch of other prompts, padded otherwise, each token's log p - log q carries
            # rounding of ~1e-7, which a sample's near-zero KL shows (1.8e-6 of 0.0095 seen).
            assert a["kl_exact"] == pytest.approx(b["kl_exact"], rel=1e-5, abs=1e-5)
    assert moved <= 2, moved
    assert checkpoint_steps(tmp / "killed/dpo" / RUN) == []


def test_eval_under_other_settings_names_the_deleted_steps_and_evaluates_the_final_model(runs, tiny_base, tiny_sft,
                                                                                         capsys):
    other = runs["tmp"] / "other_eval"
    run_in_process("eval.py", ["--config", runs["during"], "--num_prompts", "8", "--output_dir", str(other)])
    assert [int(r["step"]) for r in summary_rows(other)] == [STEPS[-1]]
    report = (other / "report.md").read_text()
    for step in STEPS[:-1]:
        assert f"checkpoint-{step}" in report
    assert "evaluated while training under the settings of" in report
    # Under the same settings in another output_dir, the reason says where the records are.
    elsewhere = runs["tmp"] / "elsewhere_eval"
    run_in_process("eval.py", ["--config", runs["during"], "--output_dir", str(elsewhere)])
    report = (elsewhere / "report.md").read_text()
    assert "evaluated while training under these settings" in report and "not under this evaluation's output_dir" in report


def test_a_frontier_eval_that_cannot_be_used_is_refused_before_any_folder(tiny_base, tiny_sft, tiny_pairs, tmp_path,
                                                                          capsys):
    err = refused_in_process("dpo.py", dpo(tiny_sft, tiny_pairs, tmp_path, "x", str(tmp_path / "missing.yaml")), capsys)
    assert "frontier_eval=" in err and "no such file" in err
    elsewhere = eval_config(tmp_path, tiny_base, tiny_sft, "elsewhere")
    err = refused_in_process("dpo.py", dpo(tiny_sft, tiny_pairs, tmp_path, "x", elsewhere), capsys)
    assert f"these runs go to {tmp_path / 'x' / 'dpo'}, but eval.py would look for them in" in err
    for change, expected in (({"runs_root": ""}, 'its runs_root is "", so eval.py evaluates no method\'s runs'),
                             ({"methods": ["rloo"]}, "its methods (rloo) leave dpo out, so eval.py would not evaluate")):
        config = eval_config(tmp_path, tiny_base, tiny_sft, "x")
        with open(config) as f:
            changed = {**yaml.safe_load(f), **change}
        with open(config, "w") as f:
            yaml.safe_dump(changed, f)
        assert expected in refused_in_process("dpo.py", dpo(tiny_sft, tiny_pairs, tmp_path, "x", config), capsys)
    # Its prompts are made at the start: a missing test file stops the stage before training, not at its first save.
    config = eval_config(tmp_path, tiny_base, tiny_sft, "x")
    with open(config) as f:
        broken = {**yaml.safe_load(f), "test_file": str(tmp_path / "no_reviews.jsonl")}
    with open(config, "w") as f:
        yaml.safe_dump(broken, f)
    err = refused_in_process("dpo.py", dpo(tiny_sft, tiny_pairs, tmp_path, "x", config), capsys)
    assert "no_reviews.jsonl" in err
    assert not (tmp_path / "x" / "dpo").exists()


def test_the_presets_frontier_eval_is_found_from_any_directory_and_a_folder_is_refused(tmp_path, monkeypatch):
    from imdb_dpo.configuration.arguments import ConfigError
    from imdb_dpo.evaluation.in_training import resolve_config_path

    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("configs/tiny/eval.yaml") == os.path.join(REPO, "configs/tiny/eval.yaml")
    (tmp_path / "configs/tiny").mkdir(parents=True)
    (tmp_path / "configs/tiny/eval.yaml").write_text("num_prompts: 8\n")
    assert resolve_config_path("configs/tiny/eval.yaml") == "configs/tiny/eval.yaml"  # where it is given first
    with pytest.raises(ConfigError, match="is a folder"):
        resolve_config_path("configs")
    with pytest.raises(ConfigError, match='no such file .*--frontier_eval ""'):
        resolve_config_path("configs/tiny/missing.yaml")


def test_only_the_kept_seeds_keep_their_final_model_and_eval_gathers_the_others_last_step(tiny_base, tiny_sft,
                                                                                       tiny_pairs, tmp_path, capsys):
    """keep_final_model_seeds (the gpt2-large preset's three seeds on the disk of one): the other seeds' runs keep
    their records alone, also when each seed is an array task of its own, the frontier loses no point, and a kill
    between finishing and deleting is cleaned up."""
    config = eval_config(tmp_path, tiny_base, tiny_sft, "seeds")
    argv = dpo(tiny_sft, tiny_pairs, tmp_path, "seeds", config) + ["--keep_final_model_seeds", "3"]
    for seed in ("3", "4"):  # as two SLURM array tasks run them
        run_in_process("dpo.py", argv + ["--seeds", seed])
    kept, other = (tmp_path / f"seeds/dpo/{RUN}_seed{s}" for s in (3, 4))
    assert (kept / "model.safetensors").is_file() and read_manifest(kept)["final_model_kept"] is True
    assert not glob.glob(str(other / "*.safetensors")) and read_manifest(other)["final_model_kept"] is False
    assert (other / "config.json").is_file() and (other / "trainer_state.json").is_file()

    run_in_process("eval.py", ["--config", config])
    with open(tmp_path / "seeds/eval/summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["setting"] == RUN]
    for seed in ("3", "4", "mean"):
        assert sorted(int(r["step"]) for r in rows if r["seed"] == seed) == STEPS, seed
    assert "## Not evaluated" not in (tmp_path / "seeds/eval/report.md").read_text()

    # Killed after its manifest said finished, before its weights were deleted: the next start deletes them.
    shutil.copy(kept / "model.safetensors", other / "model.safetensors")
    run_in_process("dpo.py", argv + ["--seeds", "3", "4"])
    assert not (other / "model.safetensors").exists() and (kept / "model.safetensors").is_file()

    # Its records deleted: eval.py and dpo.py say they are gone and what brings them back.
    shutil.rmtree(glob.glob(str(tmp_path / "seeds/eval/records/*" / f"{RUN}_seed4"))[0])
    capsys.readouterr()
    run_in_process("eval.py", ["--config", config])
    assert "its records are gone from" in (tmp_path / "seeds/eval/report.md").read_text()
    run_in_process("dpo.py", argv + ["--seeds", "4"])
    assert "are gone from" in capsys.readouterr().out

    # Without frontier_eval, nothing would hold seed 1's last point: refused before any folder.
    err = refused_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, tmp_path / "none", "--seeds", "0", "1",
                                                "--keep_final_model_seeds", "0"), capsys)
    assert "keep_final_model_seeds=[0]" in err and "seed(s) 1" in err and "frontier_eval" in err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("evaluated_while_training", [True, False])
def test_a_stops_checkpoint_off_the_schedule_only_resumes_the_run(evaluated_while_training, tiny_base, tiny_sft,
                                                                   tiny_pairs, tmp_path, monkeypatch):
    """A stop (SLURM's warning, the stop file) saves where it stops, here step 1 of a schedule of steps 4 and 6: the
    resumed run neither evaluates that checkpoint nor keeps or lists it, so the frontier has the schedule's points."""
    name = "during" if evaluated_while_training else "after"
    config = eval_config(tmp_path, tiny_base, tiny_sft, name)
    argv = [*dpo(tiny_sft, tiny_pairs, tmp_path, name, config if evaluated_while_training else ""),
            "--checkpoint_schedule", "steps", "--save_steps", "4"]
    stop_file = tmp_path / "stop"
    stop_file.write_text("")
    monkeypatch.setenv(STOP_FILE_VARIABLE, str(stop_file))
    assert run_stage(dpo_stage.main, dpo_stage.STAGES, argv) == EXIT_RESUMABLE
    monkeypatch.delenv(STOP_FILE_VARIABLE)
    run_dir = tmp_path / name / "dpo" / RUN
    assert [s for s, _ in checkpoint_steps(run_dir)] == [1]
    assert run_stage(dpo_stage.main, dpo_stage.STAGES, argv) == 0
    manifest = read_manifest(run_dir)
    assert manifest["global_step"] == 6 and manifest["checkpoints"] == [4, 6]
    kept = [4] if not evaluated_while_training else []
    assert manifest["kept_checkpoints"] == kept and [s for s, _ in checkpoint_steps(run_dir)] == kept
    if evaluated_while_training:
        assert sorted(records(config)) == [4, 6]
    run_in_process("eval.py", ["--config", config])
    assert sorted(summary(config)) == [4, 6]


def test_checkpoints_only_resume_and_a_kill_after_one_resumes_to_the_same_weights_and_records(runs, tiny_base,
                                                                                             tiny_sft, tiny_pairs):
    """With frontier_eval a checkpoint is written every resume_minutes (here after every step), each replacing the
    one before; a kill then loses only the steps since, and the resumed run ends with the uninterrupted run's weights
    and records."""
    from helpers import state_dicts_equal
    from imdb_dpo.lifecycle.checkpoints import is_complete
    from imdb_dpo.models.modeling import load_causal_lm

    tmp = runs["tmp"]
    config = eval_config(tmp, tiny_base, tiny_sft, "timed")
    argv = dpo(tiny_sft, tiny_pairs, tmp, "timed", config) + ["--resume_minutes", "0.00001"]
    run_dir = tmp / "timed/dpo" / RUN
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "dpo.py"), *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []

    def resumable_from_step_4():
        seen.append(len(checkpoint_steps(run_dir)))
        return any(step >= 4 and is_complete(path) for step, path in checkpoint_steps(run_dir))

    wait_until(resumable_from_step_4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(seen) <= 2  # the newest complete one, and the one being written
    assert not read_manifest(run_dir).get("finished")

    run_in_process("dpo.py", argv)
    manifest = read_manifest(run_dir)
    assert manifest["checkpoints"] == STEPS and checkpoint_steps(run_dir) == []
    assert records(config) == runs["in_training"]
    assert state_dicts_equal(load_causal_lm(str(run_dir)), load_causal_lm(str(tmp / "during/dpo" / RUN))) == []


def test_a_stop_during_an_evaluation_saves_that_step_and_the_resumed_run_evaluates_it_first(runs, tiny_base, tiny_sft,
                                                                                           tiny_pairs):
    tmp = runs["tmp"]
    config = eval_config(tmp, tiny_base, tiny_sft, "stopped", batch_size=1)  # 12 batches: time to land the stop
    argv = dpo(tiny_sft, tiny_pairs, tmp, "stopped", config)
    stop_file = tmp / "stop_during_evaluation"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "dpo.py"), *argv], cwd=REPO,
                            env={**os.environ, STOP_FILE_VARIABLE: str(stop_file)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = str(tmp / "stopped/eval/records/*" / RUN / "*/step-3/records.jsonl")
    wait_until(lambda: glob.glob(pattern) and os.path.getsize(glob.glob(pattern)[0]) > 0, proc)
    stop_file.write_text("")
    assert proc.wait() == EXIT_RESUMABLE
    run_dir = tmp / "stopped/dpo" / RUN
    assert [s for s, _ in checkpoint_steps(run_dir)] == [3]
    assert not read_manifest(os.path.dirname(glob.glob(pattern)[0])).get("finished")

    run_in_process("dpo.py", argv)
    assert read_manifest(run_dir)["checkpoints"] == STEPS and checkpoint_steps(run_dir) == []
    resumed, whole = records(config), runs["in_training"]
    assert sorted(resumed) == STEPS
    # In batches of 1 prompt, not 4: the same samples but where rounding moves one (see the kill's test).
    moved = sum(a["completion_ids"] != b["completion_ids"] or a["reward"] != b["reward"]
                for step in STEPS for a, b in zip(resumed[step], whole[step], strict=True))
    assert moved <= 2, moved


def test_passes_fitted_to_a_small_card_train_and_evaluate_the_same_run(runs, tiny_base, tiny_sft, tiny_pairs, monkeypatch,
                                                                      capsys):
    """The `during` run again with every pass size auto, on a simulated card that holds 2 pairs a pass beside the
    evaluation's models (imdb_dpo/planning/fitting.py): its records are the fixed-size run's (32 pairs a pass, 4
    prompts an evaluation pass), record for record, and its weights equal them up to the rounding of another
    summation order."""
    from safetensors.torch import load_file

    from imdb_dpo.planning import costs, fitting

    config = eval_config(runs["tmp"], tiny_base, tiny_sft, "small_card", batch_size="auto")
    with open(config) as f:
        settings = yaml.safe_load(f)
    settings.update(kl_batch_size="auto", reward_batch_size="auto")
    with open(config, "w") as f:
        yaml.safe_dump(settings, f)
    argv = [*dpo(tiny_sft, tiny_pairs, runs["tmp"], "small_card", config), "--examples_per_step", "32",
            "--per_device_train_batch_size", "auto", "--precompute_ref_batch_size", "auto",
            "--activation_checkpointing", "auto"]
    from imdb_dpo.configuration.arguments import EvalArguments, parse_config

    _, training, _ = parse_config(dpo_stage.STAGES, argv)
    (evaluation,) = parse_config((EvalArguments,), ["--config", config])
    fitting.set_rows(training, 2)
    training.precompute_ref_batch_size, evaluation.batch_size = 2, 1
    with open(tiny_pairs) as f:
        tokens = costs.longest_pair([json.loads(line) for line in f])
    peak = costs.dpo_memory(training, costs.model_shape(tiny_sft), tokens, evaluation, None)
    monkeypatch.setenv(fitting.MEMORY_VARIABLE, f"{(peak.memory.total * 1.1 + 2**10) / 2**30:.9f}")
    capsys.readouterr()
    run_in_process("dpo.py", argv)
    out = capsys.readouterr().out
    assert "training.per_device_train_batch_size 2," in out, out[-3000:]
    manifest = read_manifest(runs["tmp"] / "small_card/dpo" / RUN)
    sizes = manifest["performance"]["sizes"]
    assert sizes["training.per_device_train_batch_size"] == 2 and sizes["frontier_eval.batch_size"] != 4
    assert manifest["config"]["training"]["gradient_accumulation_steps"] == 16

    # The same samples, rewards and every other field; the KL to rounding, as the weights differ by rounding. How
    # a record was batched (`batch`, `batch_size`) is bookkeeping, not a result.
    small, fixed = records(config), runs["in_training"]
    assert sorted(small) == sorted(fixed) == STEPS
    for step in STEPS:
        assert len(small[step]) == len(fixed[step]) == 12 * 4
        for a, b in zip(small[step], fixed[step]):
            kl = ("kl_exact", "kl_logratio")
            assert {k: v for k, v in a.items() if k not in {*kl, "batch", "batch_size"}} == {
                k: v for k, v in b.items() if k not in {*kl, "batch", "batch_size"}}, step
            for key in kl:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (step, key)  # nats
    # The weights: their difference is under 1% of what training changed (measured: 0.05%; another order of the
    # pairs, or another step, would differ by about all of it).
    small = load_file(runs["tmp"] / "small_card/dpo" / RUN / "model.safetensors")
    fixed = load_file(runs["tmp"] / "during/dpo" / RUN / "model.safetensors")
    start = load_file(os.path.join(tiny_sft, "model.safetensors"))
    assert small.keys() == fixed.keys() <= start.keys()
    difference = sum((small[k] - fixed[k]).double().pow(2).sum() for k in fixed).sqrt()
    trained = sum((fixed[k] - start[k]).double().pow(2).sum() for k in fixed).sqrt()
    assert 0 < trained and difference <= 0.01 * trained, (difference, trained)
