"""The learned reward model and RL on it (the paper's PPO row): prompts never in both splits, a validation accuracy
well above chance recomputed by hand, exact resumption, the score RLOO optimises, and the proxy beside the true
reward in the evaluation."""

import csv
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import NO_FRONTIER_EVAL, REPO, kill_once_saved, refused_in_process, run_in_process
from test_eval import eval_argv, run_eval
from helpers import state_dicts_equal
from imdb_dpo.lifecycle.manifests import read_manifest, write_json_atomic
from imdb_dpo.methods.reward_model import prompt_key, split_by_prompt
from imdb_dpo.models.reward import LearnedReward
from imdb_dpo.data.pairs import PairFileError, read_pairs


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_run):
    return tiny_run["root"] / "outputs/tiny/reward_model"


def test_the_split_holds_out_whole_prompts_at_the_asked_share():
    pairs = [{"prompt_id": f"p{i}", "prompt_ids": [i], "n": j} for i in range(50) for j in range(i % 4 + 1)]
    train, validation = split_by_prompt(pairs, 0.2, seed=3)
    held_out = {prompt_key(p) for p in validation}
    assert held_out.isdisjoint(prompt_key(p) for p in train) and len(train) + len(validation) == len(pairs)
    assert len(held_out) == 10
    assert split_by_prompt(pairs, 0.2, seed=3) == (train, validation)
    assert {prompt_key(p) for p in split_by_prompt(pairs, 0.2, seed=4)[1]} != held_out
    for fraction in (0.001, 0.999):  # a prompt on each side, whatever the fraction
        train, validation = split_by_prompt(pairs, fraction, seed=3)
        assert len({prompt_key(p) for p in validation}) == (1 if fraction < 0.5 else 49) and train
    with pytest.raises(PairFileError, match="3 pairs of 1 prompt cannot be split"):
        split_by_prompt([{"prompt_id": "p", "prompt_ids": [1]}] * 3, 0.5, seed=0)


@torch.no_grad()
def pair_wins(model, pairs) -> list[bool]:
    """Per pair, whether the model scores the chosen sequence higher, each sequence scored alone and unpadded, with
    any trailing EOS cut (GPT-2 pads with EOS, so the trained model scores the last token before it)."""
    eos = model.config.eos_token_id

    def score(ids):
        while len(ids) > 1 and ids[-1] == eos:
            ids = ids[:-1]
        return model(torch.tensor([ids])).logits[0, 0].item()

    return [score(p["prompt_ids"] + p["chosen_ids"]) > score(p["prompt_ids"] + p["rejected_ids"]) for p in pairs]


def test_the_reward_model_beats_chance_on_held_out_prompts(tiny_reward_model, tiny_pairs):
    manifest = read_manifest(tiny_reward_model)
    assert manifest["finished"] and manifest["stage"] == "reward_model"
    assert manifest["prompts"]["validation"] >= 40
    accuracies = manifest["validation_accuracy"]
    kept = manifest["kept"]
    assert len(accuracies) == 3 and kept["metric"] == "eval_accuracy" and kept["value"] == max(accuracies.values())
    assert kept["checkpoint"] == f"checkpoint-{max(accuracies, key=accuracies.get)}"
    script = manifest["config"]["script"]
    _, validation = split_by_prompt(read_pairs(tiny_pairs)[: script["max_train_pairs"]], script["validation_fraction"],
                                    seed=manifest["config"]["training"]["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    wins = pair_wins(model, validation)
    accuracy = sum(wins) / len(wins)
    print(f"validation pair accuracy {accuracy:.3f} over {len(validation)} pairs; by epoch {accuracies}")
    assert accuracy > 0.6
    # The kept model is the best epoch's. TRL's eval_accuracy is the mean of per-batch accuracies over batches of
    # per_device_eval_batch_size pairs, in order, not the pooled share: recomputed here exactly that way.
    size = manifest["config"]["training"]["per_device_eval_batch_size"]
    batch_means = [sum(wins[i: i + size]) / len(wins[i: i + size]) for i in range(0, len(wins), size)]
    assert sum(batch_means) / len(batch_means) == pytest.approx(kept["value"], abs=1e-6)


def test_the_learned_score_ignores_padding_and_trailing_eos(tiny_reward_model, tiny_pairs):
    reward = LearnedReward(str(tiny_reward_model), "cpu", batch_size=3)
    pairs = read_pairs(tiny_pairs)[:7]
    prompts, completions = [p["prompt_ids"] for p in pairs], [p["chosen_ids"] for p in pairs]
    batched = reward.score(prompts, completions)
    alone = [reward.score([p], [c])[0] for p, c in zip(prompts, completions)]
    assert batched == pytest.approx(alone, abs=1e-5)
    eos = reward.model.config.eos_token_id
    assert reward.score(prompts[:1], [completions[0] + [eos]]) == pytest.approx(reward.score(prompts[:1], completions[:1]),
                                                                                abs=1e-5)
    # As RLOO calls a reward function: every data set column as a keyword, completion ids from the sampler.
    assert reward(prompts=["x"] * 7, completions=["y"] * 7, completion_ids=completions, prompt_ids=prompts,
                  trainer_state=None) == batched


def test_a_killed_reward_model_run_resumes_to_the_same_weights(tiny_sft, tiny_pairs, tiny_reward_model, tmp_path):
    run_dir = tmp_path / "reward_model"
    argv = ["--config", os.path.join(REPO, "configs/tiny/reward_model.yaml"), "--model_name_or_path", tiny_sft,
            "--pairs_file", tiny_pairs, "--output_dir", str(run_dir)]
    first_epoch = read_manifest(tiny_reward_model)["validation_accuracy"]
    kill_once_saved("reward_model.py", argv, run_dir / f"checkpoint-{min(int(s) for s in first_epoch)}", settle=0.5)
    assert not read_manifest(run_dir)["finished"]
    run_in_process("reward_model.py", argv)
    assert read_manifest(run_dir)["finished"]
    assert state_dicts_equal(AutoModelForSequenceClassification.from_pretrained(tiny_reward_model),
                             AutoModelForSequenceClassification.from_pretrained(run_dir)) == []


def test_a_reward_model_from_another_tokenizer_is_refused(tiny_pairs, gpt2_stand_in, tmp_path, capsys):
    err = refused_in_process("reward_model.py", ["--config", os.path.join(REPO, "configs/tiny/reward_model.yaml"),
                                                 "--model_name_or_path", gpt2_stand_in, "--pairs_file", tiny_pairs,
                                                 "--output_dir", str(tmp_path / "rm")], capsys)
    assert "has another tokenizer than" in err
    assert not (tmp_path / "rm").exists()


def test_lora_is_refused_for_the_reward_model(tiny_sft, tiny_pairs, tmp_path, capsys):
    err = refused_in_process("reward_model.py", ["--config", os.path.join(REPO, "configs/tiny/reward_model.yaml"),
                                                 "--model_name_or_path", tiny_sft, "--pairs_file", tiny_pairs,
                                                 "--output_dir", str(tmp_path / "rm"), "--use_peft", "true"], capsys)
    assert "use_peft" in err
    assert not (tmp_path / "rm").exists()


def proxy_rows(tiny_run):
    with open(tiny_run["root"] / "outputs/tiny/eval/summary.csv") as f:
        return [r for r in csv.DictReader(f) if r["method"] == "rloo_rm"]


def test_rloo_on_the_learned_reward_raises_it_and_the_evaluation_records_both(tiny_run, tiny_reward_model):
    run_dir = tiny_run["root"] / "outputs/tiny/rloo_rm/rloo_rm_kl0.05"
    manifest = read_manifest(run_dir)
    assert manifest["finished"] and manifest["stage"] == "rloo_rm"
    assert manifest["inputs"]["reward_model"]["run_id"] == read_manifest(tiny_reward_model)["run_id"]
    rows = sorted(proxy_rows(tiny_run), key=lambda r: int(r["step"]))
    assert [int(r["step"]) for r in rows] == manifest["checkpoints"]
    assert all(r["proxy_reward_mean"] != "" and r["reward_mean"] != "" for r in rows)
    print("step, KL, true reward, learned score:",
          [(r["step"], round(float(r["kl_mean"]), 2), round(float(r["reward_mean"]), 3),
            round(float(r["proxy_reward_mean"]), 3)) for r in rows])
    assert float(rows[-1]["proxy_reward_mean"]) > float(rows[0]["proxy_reward_mean"]) + 0.3
    # Each record's proxy is the learned model's score of its own ids.
    records_root = tiny_run["root"] / "outputs/tiny/eval/records"
    path = next(records_root.glob(f"*/rloo_rm_kl0.05/*/step-{rows[-1]['step']}/records.jsonl"))
    records = [json.loads(line) for line in open(path)][:5]
    reward = LearnedReward(str(tiny_reward_model), "cpu")
    assert [r["proxy_reward"] for r in records] == pytest.approx(
        reward.score([r["prompt_ids"] for r in records], [r["completion_ids"] for r in records]), abs=1e-5)
    # Other methods' rows carry no proxy.
    with open(tiny_run["root"] / "outputs/tiny/eval/summary.csv") as f:
        assert all(r["proxy_reward_mean"] == "" for r in csv.DictReader(f) if r["method"] != "rloo_rm")
    report = (tiny_run["root"] / "outputs/tiny/eval/report.md").read_text()
    assert "## Over-optimisation" in report and "rloo_rm_kl0.05" in report
    assert (tiny_run["root"] / "outputs/tiny/eval/overoptimisation.png").stat().st_size > 10_000


def test_an_rloo_run_whose_reward_model_was_replaced_is_left_out_with_the_reason(tiny_run, tiny_base, tiny_sft, tmp_path):
    run = tmp_path / "rloo_rm/rloo_rm_kl0.05"
    shutil.copytree(tiny_run["root"] / "outputs/tiny/rloo_rm/rloo_rm_kl0.05", run,
                    ignore=shutil.ignore_patterns("checkpoint-*"))
    manifest = read_manifest(run)
    manifest["inputs"]["reward_model"]["run_id"] = "an-earlier-reward-model"  # as after reward_model.py --overwrite
    write_json_atomic(str(run / "manifest.json"), manifest)
    argv = eval_argv(tiny_base, tiny_sft, "", tmp_path / "eval",
                     "--runs_root", str(tmp_path), "--methods", "rloo_rm",
                     "--num_prompts", "4", "--batch_size", "4", "--best_of_n_samples", "4")
    assert run_eval(argv) == 0
    report = (tmp_path / "eval/report.md").read_text()
    now = read_manifest(tiny_run["root"] / "outputs/tiny/reward_model")["run_id"]
    assert f"(run an-earlier-reward-model), has been replaced by run {now}; train the RLOO run again" in report
    with open(tmp_path / "eval/summary.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"sft", "base", "best_of_n"}


def test_rloo_on_an_unfinished_reward_model_is_refused_as_such(tiny_sft, tiny_pairs, tmp_path, capsys):
    unfinished = tmp_path / "reward_model"  # a killed first epoch: a manifest and no model yet
    unfinished.mkdir()
    write_json_atomic(str(unfinished / "manifest.json"), {"stage": "reward_model", "finished": False, "run_id": "x"})
    err = refused_in_process("rloo.py", ["--config", os.path.join(REPO, "configs/tiny/rloo_rm.yaml"),
                                         "--model_name_or_path", tiny_sft, "--pairs_file", tiny_pairs, "--reward_model",
                                         str(unfinished), "--output_dir", str(tmp_path / "rloo_rm")], capsys)
    assert "is an unfinished reward_model.py run; finish it" in err
    assert not (tmp_path / "rloo_rm").exists()


def test_a_model_with_an_untrained_head_is_refused_as_a_reward(tiny_sft, tiny_pairs, tmp_path, capsys):
    """The SFT model loads as a classifier (a new, random head): following "set reward_positive_label" must not train
    on that."""
    err = refused_in_process("rloo.py", ["--config", os.path.join(REPO, "configs/tiny/rloo.yaml"), "--model_name_or_path",
                                         tiny_sft, "--pairs_file", tiny_pairs, "--reward_model", tiny_sft,
                                         "--reward_positive_label", "LABEL_1", "--output_dir", str(tmp_path / "rloo"),
                                         *NO_FRONTIER_EVAL], capsys)
    assert "is a GPT2LMHeadModel, not a classifier" in err
    assert not any((tmp_path / "rloo").glob("*/checkpoint-*"))


def test_a_stop_mid_epoch_adds_no_evaluation_and_resumes_to_the_same_model(tiny_sft, tiny_pairs, tiny_reward_model,
                                                                           tmp_path):
    """A stop (here Ctrl-C, SIGINT, which asks for a save like SIGTERM) ends the epoch loop early; the Trainer must not
    evaluate there as at an epoch's end (that checkpoint could then be kept as the best)."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import wait_until

    run_dir = tmp_path / "reward_model"
    argv = ["--config", os.path.join(REPO, "configs/tiny/reward_model.yaml"), "--model_name_or_path", tiny_sft,
            "--pairs_file", tiny_pairs, "--output_dir", str(run_dir)]
    evaluated = read_manifest(tiny_reward_model)["validation_accuracy"]
    first = min(int(step) for step in evaluated)
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "reward_model.py"), *argv], cwd=REPO, stdout=out,
                                stderr=err)
        wait_until(lambda: (run_dir / f"checkpoint-{first}" / "trainer_state.json").is_file(), proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait() == 75
    assert "SIGINT received: finishing the current step, saving and exiting" in (tmp_path / "out.txt").read_text()
    assert "Traceback" not in (tmp_path / "err.txt").read_text()
    run_in_process("reward_model.py", argv)
    assert read_manifest(run_dir)["validation_accuracy"] == evaluated
    assert state_dicts_equal(AutoModelForSequenceClassification.from_pretrained(tiny_reward_model),
                             AutoModelForSequenceClassification.from_pretrained(run_dir)) == []
