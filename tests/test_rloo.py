"""The RLOO baseline: its reward is stage 2's, it learns, its KL coefficient orders the KL, and it resumes exactly."""

import copy
import csv
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments
from trl import RLOOConfig

from conftest import CPU_FLAGS, NO_FRONTIER_EVAL, REPO, kill_once_saved, refused_in_process, run_in_process
from helpers import held_out_vader_reward, state_dicts_equal
from imdb_dpo.lifecycle.checkpoints import checkpoint_schedule, checkpoint_steps
from imdb_dpo.models.generation_copy import GenerationCopy
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.data.pairs import read_pairs
from imdb_dpo.models.reward import VaderReward, make_reward
from imdb_dpo.methods.rloo import PretokenizedRLOOTrainer, SentimentReward, prompts_of_pairs
from imdb_dpo.models.sampling import left_pad


def rloo_argv(tiny_sft, tiny_pairs, output_dir, *extra):
    return ["--config", os.path.join(REPO, "configs/tiny/rloo.yaml"), "--model_name_or_path", tiny_sft,
            "--pairs_file", tiny_pairs, "--output_dir", str(output_dir), *CPU_FLAGS, *NO_FRONTIER_EVAL, *extra]


@torch.no_grad()
def positive_probabilities(classifier_dir, texts):
    """P(POSITIVE) by the classifier's own forward pass and softmax, without the pipeline."""
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    positive = model.config.label2id["POSITIVE"]
    return [torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits[0].float(), -1)[positive].item() for t in texts]


def test_the_reward_rloo_trains_on_is_the_classifiers_positive_probability(tiny_sft, tiny_pairs, gpt2_classifier,
                                                                            tmp_path):
    # POSITIVE is label 1 of this classifier: TRL's reward-model path would have scored logits[:, 0] (NEGATIVE).
    assert AutoModelForSequenceClassification.from_pretrained(gpt2_classifier).config.id2label[0] == "NEGATIVE"
    args = RLOOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_steps=1,
                      max_completion_length=16, disable_dropout=True, report_to=[], use_cpu=True, bf16=False,
                      activation_checkpointing=False, save_strategy="no", logging_steps=1)
    trainer = PretokenizedRLOOTrainer(model=tiny_sft, reward_funcs=SentimentReward(make_reward(gpt2_classifier)),
                                      args=args, train_dataset=prompts_of_pairs(read_pairs(tiny_pairs), 8),
                                      processing_class=load_tokenizer(tiny_sft))
    trainer.train()
    prompts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    rewards = list(trainer._logs["rewards"]["sentiment"])
    assert len(rewards) == 8 and len(set(prompts)) == 2
    expected = positive_probabilities(gpt2_classifier, [p + c for p, c in zip(prompts, completions)])
    assert torch.allclose(torch.tensor(rewards), torch.tensor(expected), atol=1e-5), (rewards, expected)


def test_a_left_padded_completion_is_scored_at_the_positions_it_was_sampled_at(tiny_sft, tiny_pairs, tmp_path):
    """TRL's log-prob pass gives GPT-2 no position ids; the project's trainer gives a padded row its own."""
    args = RLOOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, report_to=[],
                      use_cpu=True, bf16=False, disable_dropout=True, activation_checkpointing=False)
    trainer = PretokenizedRLOOTrainer(model=tiny_sft, reward_funcs=SentimentReward(VaderReward()), args=args,
                                      train_dataset=prompts_of_pairs(read_pairs(tiny_pairs), 8),
                                      processing_class=load_tokenizer(tiny_sft))
    short, long, completion = [5, 6], [7, 8, 9, 10, 11, 12], [20, 21, 22]
    padded = torch.tensor([[0] * 4 + short + completion, long + completion])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    with torch.no_grad():
        batch, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, padded, mask, 3)
        alone, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, torch.tensor([short + completion]),
                                                                 torch.ones(1, 5, dtype=torch.long), 3)
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-5)


class RecordingRLOOTrainer(PretokenizedRLOOTrainer):
    """The real trainer, keeping what each generation sampled from: the policy's weights, the random state and the
    prompt ids."""

    rounds: list

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
        seen = {"weights": copy.deepcopy(self.accelerator.unwrap_model(self.model).state_dict()),
                "rng": torch.get_rng_state(), "prompt_ids": [list(p) for p in prompt_ids]}
        completions = super()._generate_single_turn(prompt_ids, images, multimodal_fields)
        self.rounds.append({**seen, "completion_ids": completions})
        return completions


@pytest.mark.parametrize("compile", [False, True])
def test_with_a_generation_copy_each_step_samples_the_current_policy_rounded_to_bf16(compile, tiny_sft, tiny_pairs,
                                                                                     tmp_path):
    """`generation_dtype: bfloat16` (the gpt2-large preset): each generation samples from the policy's weights of
    that moment rounded to bf16, drawing what a bf16 model of them draws from the same random state; with
    `generation_compile`, through the compiled decode step and its static cache."""
    from torch._dynamo.utils import counters

    counters.clear()
    args = RLOOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_steps=3,
                      max_completion_length=12, learning_rate=1e-3, disable_dropout=True, report_to=[], use_cpu=True,
                      bf16=False, activation_checkpointing=False, save_strategy="no", logging_steps=1)
    trainer = RecordingRLOOTrainer(model=tiny_sft, reward_funcs=SentimentReward(VaderReward()), args=args,
                                   train_dataset=prompts_of_pairs(read_pairs(tiny_pairs), 24),
                                   processing_class=load_tokenizer(tiny_sft),
                                   generation_copy=GenerationCopy("bfloat16", compile=compile))
    trainer.rounds = []
    trainer.train()
    assert len(trainer.rounds) == 3 and (counters["stats"]["unique_graphs"] > 0) == compile
    start, copy_model = load_causal_lm(tiny_sft), trainer.generation_copy.model
    assert copy_model.dtype == torch.bfloat16
    for step, seen in enumerate(trainer.rounds):
        policy = load_causal_lm(tiny_sft)
        policy.load_state_dict(seen["weights"])
        assert step == 0 or state_dicts_equal(policy, start)  # the policy had moved by the second step
        # The copy refreshed from these weights, through its own path (compiled where it compiles), draws the samples
        assert replay_copy(trainer, policy, seen) == seen["completion_ids"]
        if not compile:  # eager: what any bf16 model of these weights draws
            assert replay(copy.deepcopy(policy).to(torch.bfloat16), seen, trainer) == seen["completion_ids"]
        if step:
            assert replay_copy(trainer, start, seen) != seen["completion_ids"]  # not the start's samples
    assert trainer.generation_copy.model is copy_model  # built once
    assert hasattr(copy_model, "_compiled_call") == compile
    assert [type(c).__name__ for _, c in trainer.generation_copy.caches.values()] == (["StaticCache"] if compile else [])


def replay_copy(trainer, policy, seen) -> list:
    torch.set_rng_state(seen["rng"])
    ids, _, out = trainer.generation_copy.generate(policy, seen["prompt_ids"], trainer.generation_config,
                                                   trainer._tokenizer.pad_token_id)
    return cut_after_eos(out[:, ids.size(1):].tolist(), trainer.eos_token_ids)


def replay(model, seen, trainer) -> list:
    """`model`'s completions of a generation's prompts from its random state, cut after the first EOS as TRL cuts them."""
    ids, mask = left_pad(seen["prompt_ids"], trainer._tokenizer.pad_token_id)
    torch.set_rng_state(seen["rng"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=trainer.generation_config)
    return cut_after_eos(out[:, ids.size(1):].tolist(), trainer.eos_token_ids)


def cut_after_eos(rows: list[list[int]], eos: list[int]) -> list[list[int]]:
    completions = []
    for row in rows:
        ends = [i for i, token in enumerate(row) if token in eos]
        completions.append(row[:ends[0] + 1] if ends else row)
    return completions


def test_the_prompts_are_the_pair_files_own_token_ids(tiny_pairs):
    pairs = read_pairs(tiny_pairs)
    dataset = prompts_of_pairs(pairs)
    assert len(dataset) == len({p["prompt_id"] for p in pairs})
    first = {}
    for p in pairs:
        first.setdefault(p["prompt_id"], p["prompt_ids"])
    assert dataset["prompt_ids"] == list(first.values())


def test_tiny_rloo_raises_the_reward_and_a_smaller_kl_coefficient_gives_a_larger_kl(tiny_base, tiny_sft, tiny_run):
    runs = tiny_run["root"] / "outputs/tiny/rloo"
    low, high = runs / "rloo_kl0.01", runs / "rloo_kl0.1"
    sft_reward = held_out_vader_reward(tiny_base, tiny_sft, tiny_sft)
    for run in (low, high):
        assert read_manifest(run)["finished"]
        assert held_out_vader_reward(tiny_base, tiny_sft, str(run)) > sft_reward + 0.1, run
        steps = read_manifest(run)["checkpoints"]  # evaluated while training (frontier_eval), then deleted
        training = read_manifest(run)["config"]["training"]
        args = TrainingArguments(output_dir="unused", lr_scheduler_type=training["lr_scheduler_type"],
                                 warmup_steps=training["warmup_steps"], use_cpu=True, report_to=[])
        assert steps == checkpoint_schedule("lr-log", read_manifest(run)["global_step"], 10, args, 8) and len(steps) >= 5
        assert checkpoint_steps(str(run)) == []
    with open(tiny_run["root"] / "outputs/tiny/eval/summary.csv") as f:
        finals = {}
        for row in csv.DictReader(f):
            if row["run"] in (low.name, high.name):
                finals[row["run"]] = max(finals.get(row["run"], row), row, key=lambda r: int(r["step"]))
    assert float(finals[low.name]["kl_mean"]) > float(finals[high.name]["kl_mean"]), finals


@pytest.mark.parametrize("copy_args", [[], ["--generation_dtype", "bfloat16"],
                                       ["--generation_dtype", "bfloat16", "--generation_compile", "true"]])
def test_killed_rloo_resumes_to_the_same_weights(copy_args, tiny_sft, tiny_pairs, tmp_path):
    extra = ["--kl_coefs", "0.1", "--max_train_prompts", "64", "--max_steps", "8", "--save_steps", "4",
             "--per_device_train_batch_size", "16", *copy_args]
    run_in_process("rloo.py", rloo_argv(tiny_sft, tiny_pairs, tmp_path / "straight", *extra))

    killed = tmp_path / "killed"
    kill_once_saved("rloo.py", rloo_argv(tiny_sft, tiny_pairs, killed, *extra), killed / "rloo_kl0.1" / "checkpoint-4",
                    settle=0.3)  # land between two checkpoints
    run_dir = killed / "rloo_kl0.1"
    assert not read_manifest(run_dir)["finished"]

    run_in_process("rloo.py", rloo_argv(tiny_sft, tiny_pairs, killed, *extra))
    manifest = read_manifest(run_dir)
    assert manifest["finished"] and manifest["global_step"] == 8
    straight = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "rloo_kl0.1")
    assert state_dicts_equal(straight, AutoModelForCausalLM.from_pretrained(run_dir)) == []
    assert [s for s, _ in checkpoint_steps(str(run_dir))] == [2, 3, 4, 5, 6] and manifest["checkpoints"] == [2, 3, 4, 5, 6, 8]


def test_rloo_evaluated_in_memory_and_killed_after_a_resume_checkpoint_ends_with_the_same_weights(tiny_base, tiny_sft,
                                                                                                    tiny_pairs, tmp_path):
    """RLOO samples from the global random state, which nothing the evaluation does in memory may touch (building
    the evaluation model draws random weights): killed after a resume checkpoint (one a step here) and resumed, the
    run ends with the weights of one that ran straight through, every point evaluated."""
    import yaml

    extra = ["--kl_coefs", "0.1", "--max_train_prompts", "64", "--max_steps", "8", "--per_device_train_batch_size", "16",
             "--resume_minutes", "0.00001"]
    with open(os.path.join(REPO, "configs/tiny/eval.yaml")) as f:
        evaluation = yaml.safe_load(f)

    def argv(name):
        config = tmp_path / f"{name}_eval.yaml"
        config.write_text(yaml.safe_dump({**evaluation, "sft_model": tiny_sft, "base_model": "", "num_prompts": 4,
                                          "runs_root": str(tmp_path / name), "methods": ["rloo"],
                                          "output_dir": str(tmp_path / f"{name}_eval"),
                                          "train_file": tiny_base["train"], "test_file": tiny_base["test"]}))
        return [*rloo_argv(tiny_sft, tiny_pairs, tmp_path / name / "rloo", *extra), "--frontier_eval", str(config)]

    run_in_process("rloo.py", argv("straight"))
    kill_once_saved("rloo.py", argv("killed"), tmp_path / "killed" / "rloo" / "rloo_kl0.1" / "checkpoint-5", settle=0.2)
    run_dir = tmp_path / "killed" / "rloo" / "rloo_kl0.1"
    assert not read_manifest(run_dir)["finished"]
    run_in_process("rloo.py", argv("killed"))
    straight = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "rloo" / "rloo_kl0.1")
    assert state_dicts_equal(straight, AutoModelForCausalLM.from_pretrained(run_dir)) == []
    assert read_manifest(run_dir)["checkpoints"] == read_manifest(tmp_path / "straight" / "rloo" / "rloo_kl0.1")["checkpoints"] == [
        2, 3, 4, 5, 6, 8]
    assert checkpoint_steps(str(run_dir)) == []


@pytest.mark.parametrize("extra, expected", [
    (["--top_k", "-1"], "top_k must be >= 0"),
    (["--top_p", "0"], "top_p in (0, 1]"),
    (["--temperature", "0"], "temperature=0.0: must be > 0 (RLOO samples)"),
    (["--use_vllm", "true"], "remove use_vllm"),
    (["--vllm_gpu_memory_utilization", "0.5"], "vllm_gpu_memory_utilization setting would do nothing"),
    (["--generation_dtype", "float8"], "generation_dtype='float8': use one of"),
    (["--generation_dtype", "bfloat16", "--use_peft", "true"], "pass --generation_dtype none --generation_compile false for a LoRA run"),
])
def test_sampling_settings_it_would_ignore_or_fail_on_are_refused_before_any_folder(extra, expected, tiny_sft,
                                                                                     tiny_pairs, tmp_path, capsys):
    err = refused_in_process("rloo.py", rloo_argv(tiny_sft, tiny_pairs, tmp_path / "out", *extra), capsys)
    assert expected in err and not (tmp_path / "out").exists()
