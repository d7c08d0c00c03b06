"""The Unlikelihood baseline: its loss recomputed by hand, it trains on the pairs' exact ids, it pushes the rejected
completions down (more so with a larger alpha) while raising the chosen ones, and the evaluation finds its runs."""

import csv
import math
import os

import torch

from conftest import NO_FRONTIER_EVAL, REPO, kill_once_saved, run_in_process
from helpers import sequence_log_probs, state_dicts_equal
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.methods.unlikelihood import unlikelihood_loss
from imdb_dpo.models.modeling import load_causal_lm
from imdb_dpo.data.pairs import read_pairs


def test_the_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)  # one pair: row 0 prompt + chosen, row 1 prompt + rejected
    input_ids = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 5, 6, 6]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]])  # the chosen row's last position is padding
    alpha = 0.7
    loss, terms = unlikelihood_loss(logits, input_ids, completion_mask, alpha)
    p = torch.softmax(logits, -1)
    nll = -(math.log(p[0, 1, 3]) + math.log(p[0, 2, 4])) / 2  # position t-1 predicts token t
    unlikely = -sum(math.log(1 - p[1, t - 1, input_ids[1, t]]) for t in (2, 3, 4)) / 3
    assert abs(loss.item() - (nll + alpha * unlikely)) < 1e-5
    assert abs(terms["nll/chosen"] - nll) < 1e-5 and abs(terms["unlikelihood/rejected"] - unlikely) < 1e-5
    assert abs(terms["logps/rejected"] - sum(math.log(p[1, t - 1, input_ids[1, t]]) for t in (2, 3, 4))) < 1e-5


def mean_log_probs(model, pairs):
    with torch.no_grad():
        chosen = [sequence_log_probs(model, p["prompt_ids"], p["chosen_ids"]).item() for p in pairs]
        rejected = [sequence_log_probs(model, p["prompt_ids"], p["rejected_ids"]).item() for p in pairs]
    return sum(chosen) / len(chosen), sum(rejected) / len(rejected)


def test_unlikelihood_pushes_the_rejected_down_and_a_larger_alpha_further(tiny_sft, tiny_pairs, tiny_run, tmp_path):
    preset_run = tiny_run["root"] / "outputs/tiny/unlikelihood/unlikelihood_alpha1"
    manifest = read_manifest(preset_run)
    assert manifest["finished"] and manifest["global_step"] == 25 and manifest["checkpoints"] == [2, 3, 4, 5, 6, 9, 14, 25]
    strong = tmp_path / "unlikelihood_alpha4"
    run_in_process("unlikelihood.py", ["--config", os.path.join(REPO, "configs/tiny/unlikelihood.yaml"),
                                   "--model_name_or_path", tiny_sft, "--pairs_file", tiny_pairs,
                                   "--output_dir", str(tmp_path), "--alphas", "4", *NO_FRONTIER_EVAL])
    trained = read_pairs(tiny_pairs)[: manifest["config"]["script"]["max_train_pairs"]][::8]
    sft_chosen, sft_rejected = mean_log_probs(load_causal_lm(tiny_sft), trained)
    chosen_1, rejected_1 = mean_log_probs(load_causal_lm(str(preset_run)), trained)
    chosen_4, rejected_4 = mean_log_probs(load_causal_lm(str(strong)), trained)
    print(f"log p chosen / rejected: SFT {sft_chosen:.2f} / {sft_rejected:.2f}, alpha 1 {chosen_1:.2f} / "
          f"{rejected_1:.2f}, alpha 4 {chosen_4:.2f} / {rejected_4:.2f}")
    assert rejected_1 < sft_rejected - 1 and rejected_4 < rejected_1 - 1
    assert chosen_1 - rejected_1 > sft_chosen - sft_rejected  # the pair is pulled apart, not everything pushed down


def test_the_evaluation_draws_the_unlikelihood_run(tiny_run):
    with open(tiny_run["root"] / "outputs/tiny/eval/summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "unlikelihood"]
    assert {r["run"] for r in rows} == {"unlikelihood_alpha1"} and {r["beta"] for r in rows} == {"1.0"}
    assert sorted(int(r["step"]) for r in rows) == [2, 3, 4, 5, 6, 9, 14, 25]


def test_a_killed_run_resumes_to_the_preset_runs_weights(tiny_sft, tiny_pairs, tiny_run, tmp_path):
    argv = ["--config", os.path.join(REPO, "configs/tiny/unlikelihood.yaml"), "--model_name_or_path", tiny_sft,
            "--pairs_file", tiny_pairs, "--output_dir", str(tmp_path), *NO_FRONTIER_EVAL]
    run_dir = tmp_path / "unlikelihood_alpha1"
    kill_once_saved("unlikelihood.py", argv, run_dir / "checkpoint-6", settle=0.3)  # between two checkpoints
    assert not read_manifest(run_dir)["finished"]
    run_in_process("unlikelihood.py", argv)
    assert read_manifest(run_dir)["finished"]
    uninterrupted = load_causal_lm(str(tiny_run["root"] / "outputs/tiny/unlikelihood/unlikelihood_alpha1"))
    assert state_dicts_equal(uninterrupted, load_causal_lm(str(run_dir))) == []


def test_a_run_too_short_to_log_says_so_instead_of_nan(tiny_sft, tiny_pairs, tmp_path, capsys):
    run_in_process("unlikelihood.py", ["--config", os.path.join(REPO, "configs/tiny/unlikelihood.yaml"),
                                       "--model_name_or_path", tiny_sft, "--pairs_file", tiny_pairs,
                                       "--output_dir", str(tmp_path), "--max_steps", "1", "--logging_steps", "5",
                                       *NO_FRONTIER_EVAL])
    out = capsys.readouterr().out
    assert "no log-prob of chosen or of rejected logged (see logging_steps)" in out and "nan" not in out
