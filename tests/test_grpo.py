"""GRPO, the registry's proof: one module (imdb_dpo/methods/grpo.py) and two configs put it in the pipeline, the
plan, the frontier, the report and the comparisons. It samples the pair file's prompt ids, scores a padded row at the
positions it was sampled at, learns on stage 2's reward, and refuses a learned reward model."""

import csv
import os

import torch
from transformers import AutoModelForCausalLM
from trl import GRPOConfig

from conftest import CPU_FLAGS, NO_FRONTIER_EVAL, REPO, kill_once_saved, refused_in_process, run_in_process
from helpers import held_out_vader_reward, state_dicts_equal
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.methods.grpo import PretokenizedGRPOTrainer
from imdb_dpo.methods.rloo import SentimentReward, prompts_of_pairs
from imdb_dpo.models.modeling import load_tokenizer
from imdb_dpo.data.pairs import read_pairs
from imdb_dpo.models.reward import VaderReward


def grpo_trainer(tiny_sft, tiny_pairs, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, report_to=[],
                      use_cpu=True, bf16=False, disable_dropout=True, activation_checkpointing=False, beta=0.1)
    return PretokenizedGRPOTrainer(model=tiny_sft, reward_funcs=SentimentReward(VaderReward()), args=args,
                                   train_dataset=prompts_of_pairs(read_pairs(tiny_pairs), 8),
                                   processing_class=load_tokenizer(tiny_sft))


def test_grpo_samples_the_pair_files_prompt_ids_and_scores_a_padded_row_where_it_was_sampled(tiny_sft, tiny_pairs,
                                                                                           tmp_path):
    trainer = grpo_trainer(tiny_sft, tiny_pairs, tmp_path)
    rows = [{"prompt": "text that tokenises otherwise", "prompt_ids": [5, 6, 7]},
            {"prompt": "another", "prompt_ids": [8, 9]}]
    trainer._batch_prompt_ids = [r["prompt_ids"] for r in rows]
    assert trainer._tokenize_prompts([r["prompt"] for r in rows]) == ([[5, 6, 7], [8, 9]], None, {})
    short, long, completion = [5, 6], [7, 8, 9, 10, 11, 12], [20, 21, 22]
    padded = torch.tensor([[0] * 4 + short + completion, long + completion])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    with torch.no_grad():
        batch, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, padded, mask, 3)
        alone, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, torch.tensor([short + completion]),
                                                                 torch.ones(1, 5, dtype=torch.long), 3)
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-5)


def test_tiny_grpo_raises_the_reward_and_is_on_the_frontier_the_report_and_the_comparisons(tiny_base, tiny_sft,
                                                                                           tiny_run):
    run = tiny_run["root"] / "outputs/tiny/grpo/grpo_kl0.1"
    manifest = read_manifest(run)
    assert manifest["finished"] and manifest["stage"] == "grpo"
    assert manifest["config"]["training"]["beta"] == 0.1 and manifest["config"]["training"]["loss_type"] == "grpo"
    sft_reward = held_out_vader_reward(tiny_base, tiny_sft, tiny_sft)
    assert held_out_vader_reward(tiny_base, tiny_sft, str(run)) > sft_reward + 0.05
    evaluation = tiny_run["root"] / "outputs/tiny/eval"
    with open(evaluation / "summary.csv") as f:
        steps = sorted(int(r["step"]) for r in csv.DictReader(f) if r["method"] == "grpo" and r["run"] == run.name)
    assert steps == manifest["checkpoints"] and len(steps) >= 3  # every point, evaluated while training
    report = (evaluation / "report.md").read_text()
    assert "- GRPO runs in " in report and f"`{run.name}`: KL coef 0.1" in report
    with open(evaluation / "comparisons.csv") as f:
        assert any("grpo" in (r["a"], r["b"]) for r in csv.DictReader(f))


def test_grpo_refuses_a_learned_reward_model_before_any_folder(tiny_run, tiny_sft, tiny_pairs, tmp_path, capsys):
    learned = str(tiny_run["root"] / "outputs/tiny/reward_model")
    err = refused_in_process("train.py", ["grpo", "--config", os.path.join(REPO, "configs/tiny/grpo.yaml"),
                                          "--model_name_or_path", tiny_sft, "--pairs_file", tiny_pairs,
                                          "--reward_model", learned, "--output_dir", str(tmp_path / "out"),
                                          *CPU_FLAGS, *NO_FRONTIER_EVAL], capsys)
    assert f"reward_model={learned!r} is a learned reward model; GRPO here optimises stage 2's reward" in err
    assert not (tmp_path / "out").exists()


def test_killed_grpo_resumes_to_the_same_weights(tiny_sft, tiny_pairs, tmp_path):
    def argv(output_dir):
        return ["grpo", "--config", os.path.join(REPO, "configs/tiny/grpo.yaml"), "--model_name_or_path", tiny_sft,
                "--pairs_file", tiny_pairs, "--output_dir", str(output_dir), *CPU_FLAGS, *NO_FRONTIER_EVAL,
                "--max_train_prompts", "64", "--max_steps", "6", "--save_steps", "3", "--per_device_train_batch_size",
                "16", "--checkpoint_schedule", "steps"]

    run_in_process("train.py", argv(tmp_path / "straight"))
    killed = tmp_path / "killed"
    kill_once_saved("train.py", argv(killed), killed / "grpo_kl0.1" / "checkpoint-3", settle=0.3)
    assert not read_manifest(killed / "grpo_kl0.1")["finished"]
    run_in_process("train.py", argv(killed))
    assert read_manifest(killed / "grpo_kl0.1")["global_step"] == 6
    straight = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "grpo_kl0.1")
    assert state_dicts_equal(straight, AutoModelForCausalLM.from_pretrained(killed / "grpo_kl0.1")) == []
