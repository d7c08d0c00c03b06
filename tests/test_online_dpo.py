"""Online DPO (train.py online_dpo): every step trains on completions the current policy sampled from the pair file's
prompt ids, scored at the positions they were sampled at; a run raises the reward, resumes to the same weights after
a kill, and refuses what it cannot do."""

import copy
import json

import pytest
import torch
from datasets import Dataset

from conftest import NO_FRONTIER_EVAL, kill_once_saved, refused_in_process, run_in_process
from helpers import state_dicts_equal
from imdb_dpo.models.generation_copy import GenerationCopy
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.methods.online_dpo import PretokenizedOnlineDPOTrainer
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.data.pairs import read_pairs
from imdb_dpo.configuration.precision import DTYPES
from test_methods_family import method_argv

RUN = "online_sigmoid_beta0.1"


class RecordingTrainer(PretokenizedOnlineDPOTrainer):
    """The real trainer, keeping what each step sampled from: the weights, the random state and the prompt ids."""

    rounds: list

    def _generate(self, model, prompts, images=None):
        seen = {"weights": copy.deepcopy(model.state_dict()), "rng": torch.get_rng_state(),
                "prompt_ids": [list(p) for p in self._batch_prompt_ids]}
        out = super()._generate(model, prompts, images)
        self.rounds.append({**seen, "completion_ids": out[2].tolist(), "completion_mask": out[3].tolist()})
        return out


@pytest.mark.parametrize("generation_dtype, compile", [(None, False), ("bfloat16", False), ("bfloat16", True)])
def test_each_round_samples_the_current_policy_on_the_pair_files_prompt_ids(generation_dtype, compile, tiny_run,
                                                                           tmp_path):
    """... and with a generation copy (the gpt2-large preset), the current policy rounded to bf16, its decode step
    compiled or not."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    from imdb_dpo.methods.rloo import SentimentReward
    from imdb_dpo.models.reward import make_reward

    root = tiny_run["root"]
    sft = str(root / "outputs/tiny/sft")
    pairs = read_pairs(str(root / "generations/tiny/pairs.jsonl"))
    prompts = list({tuple(p["prompt_ids"]): {"prompt": p["prompt"], "prompt_ids": p["prompt_ids"]} for p in pairs}
                   .values())[:24]
    args = OnlineDPOConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, max_new_tokens=24,
                           learning_rate=1e-3, temperature=1.0, top_k=0, use_cpu=True, bf16=False, report_to="none",
                           save_strategy="no", remove_unused_columns=False, model_init_kwargs={"device_map": None},
                           logging_steps=1, seed=0)
    trainer = RecordingTrainer(model=sft, reward_funcs=SentimentReward(make_reward("vader", 8, "POSITIVE", "cpu",
                                                                                   torch.float32)),
                               args=args, train_dataset=Dataset.from_list(prompts),
                               processing_class=load_tokenizer(sft, padding_side="right"),
                               generation_copy=GenerationCopy(generation_dtype, compile) if generation_dtype else None)
    trainer.rounds = []
    trainer.train()
    assert len(trainer.rounds) == 3
    prompt_sets = {tuple(p["prompt_ids"]) for p in prompts}
    policy, start = load_causal_lm(sft), load_causal_lm(sft)
    config, unrounded = trainer.generation_config, []
    for step, seen in enumerate(trainer.rounds):
        assert {tuple(p) for p in seen["prompt_ids"]} <= prompt_sets  # the exact ids of the file, not re-tokenised
        policy.load_state_dict(seen["weights"])
        assert step == 0 or state_dicts_equal(policy, start)  # the policy had moved by the second round
        dtype = DTYPES[generation_dtype or "float32"]
        draw = sample_copy if compile else lambda model, *args: sample(copy.deepcopy(model).to(dtype), *args)
        assert draw(policy, seen, config, trainer) == seen["completion_ids"]
        if step:
            assert draw(start, seen, config, trainer) != seen["completion_ids"]  # not the SFT model's samples
        unrounded.append(sample(policy, seen, config, trainer) != seen["completion_ids"])
    assert any(unrounded) == bool(generation_dtype)  # the fp32 policy itself would have drawn other samples


def sample_copy(model, seen, config, trainer) -> list:
    """The trainer's generation copy, refreshed from `model`, through its compiled decode step."""
    from trl.experimental.utils import truncate_right

    torch.set_rng_state(seen["rng"])
    ids, _, out = trainer.generation_copy.generate(model, seen["prompt_ids"] * 2, config, trainer._tokenizer.pad_token_id)
    return truncate_right(out[:, ids.size(1):], trainer.eos_token_ids, trainer._tokenizer.pad_token_id)[0].tolist()


def sample(model, seen, config, trainer) -> list:
    """`model`'s completions from the random state a round sampled with, as the trainer cuts them."""
    from trl.experimental.utils import truncate_right

    from imdb_dpo.models.sampling import left_pad

    ids, mask = (t.repeat(2, 1) for t in left_pad(seen["prompt_ids"], trainer._tokenizer.pad_token_id))
    torch.set_rng_state(seen["rng"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return truncate_right(out[:, ids.size(1):], trainer.eos_token_ids, trainer._tokenizer.pad_token_id)[0].tolist()


def test_completions_are_scored_at_the_positions_they_were_sampled_at(tiny_run):
    """A left-padded row's log-probs are the row's own: GPT-2's positions count from its first real token."""
    model = load_causal_lm(str(tiny_run["root"] / "outputs/tiny/sft"))
    short, long = [5, 6], [7, 8, 9, 10, 11, 12]
    completions = torch.tensor([[20, 21, 22], [23, 24, 25]])
    padded = torch.tensor([[0] * 4 + short, long])
    mask = torch.tensor([[0] * 4 + [1] * 2, [1] * 6])

    class Scorer:
        max_length = 128

    score = PretokenizedOnlineDPOTrainer._forward
    with torch.no_grad():
        batch = score(Scorer, model, padded, mask, completions, torch.ones_like(completions))
        alone = score(Scorer, model, torch.tensor([short]), torch.ones(1, 2, dtype=torch.long), completions[:1],
                      torch.ones(1, 3, dtype=torch.long))
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-5)


def test_a_run_raises_the_reward_and_a_killed_one_resumes_to_the_same_weights(tiny_run, tmp_path, capsys):
    root = tiny_run["root"]
    argv = method_argv("online_dpo", root, tmp_path / "whole", *NO_FRONTIER_EVAL)
    run_in_process("train.py", argv)
    assert "256 prompts; last logged mean reward of the sampled completions 0." in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "whole" / RUN)
    assert manifest["finished"] and manifest["stage"] == "online_dpo" and manifest["global_step"] == 8
    with open(tmp_path / "whole" / RUN / "trainer_state.json") as f:
        scores = [e["objective/scores"] for e in json.load(f)["log_history"] if "objective/scores" in e]
    print(f"online DPO: mean reward of the sampled completions, every 2 rounds: {scores}")
    assert len(scores) == 4 and scores[-1] > scores[0] + 0.05
    argv = method_argv("online_dpo", root, tmp_path / "killed", *NO_FRONTIER_EVAL)
    kill_once_saved("train.py", argv, tmp_path / "killed" / RUN / "checkpoint-4", settle=0.3)
    assert not read_manifest(tmp_path / "killed" / RUN)["finished"]
    run_in_process("train.py", argv)
    assert state_dicts_equal(load_causal_lm(str(tmp_path / "whole" / RUN)),
                             load_causal_lm(str(tmp_path / "killed" / RUN))) == []


def test_a_run_too_short_to_log_says_so(tiny_run, tmp_path, capsys):
    run_in_process("train.py", method_argv("online_dpo", tiny_run["root"], tmp_path / "out", *NO_FRONTIER_EVAL,
                                           "--max_steps", "1", "--logging_steps", "2"))
    assert "no mean reward of the sampled completions logged (see logging_steps)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [
    (["--loss_type", "hinge"], "invalid choice: 'hinge' (choose from 'sigmoid', 'ipo')"),
    (["--beta", "0.1", "0.2"], "give one beta"),
    (["--reward_model_path", "x"], "remove them"),
    (["--use_vllm", "true"], "remove use_vllm"),
    (["--temperature", "0"], "temperature=0.0"),
    (["--max_train_prompts", "0"], "max_train_prompts"),
    (["--reward_dtype", "int8"], "reward_dtype='int8'"),
    (["--betas", "0.1", "--beta", "0.2"], "betas=[0.1] decides the runs"),
    (["--top_k", "-1"], "top_k must be >= 0"),
    (["--top_p", "1.5"], "top_p in (0, 1]"),
    (["--cache_implementation", "static"], "cache_implementation setting would do nothing"),
    (["--vllm_gpu_memory_utilization", "0.3"], "vllm_gpu_memory_utilization setting would do nothing"),
    (["--max_length", "50"], "max_length=50 is below the longest prompt"),
])
def test_bad_settings_are_refused_before_any_folder(extra, expected, tiny_run, tmp_path, capsys):
    argv = method_argv("online_dpo", tiny_run["root"], tmp_path / "out", *NO_FRONTIER_EVAL, *extra)
    err = refused_in_process("train.py", argv, capsys)
    assert expected in err and not (tmp_path / "out").exists()
