"""The checkpoint schedule that places the frontier's points: exact steps, on a real Trainer."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from imdb_dpo.lifecycle.checkpoints import ScheduledCheckpoints, checkpoint_schedule, checkpoint_steps
from imdb_dpo.configuration.arguments import ConfigError


def test_schedules_name_their_steps():
    assert checkpoint_schedule("log+steps", 86, 25) == [1, 2, 4, 8, 16, 25, 50, 75, 86]
    assert checkpoint_schedule("log", 86, 25) == [1, 2, 4, 8, 16, 32, 64, 86]
    assert checkpoint_schedule("steps", 86, 25) == [25, 50, 75, 86]
    assert checkpoint_schedule("log+steps", 64, 16) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert checkpoint_schedule("log", 1, 25) == [1]
    # GPT-2 Large's sweep: ~2,300 steps a beta, save_steps 100.
    assert len(checkpoint_schedule("log+steps", 2300, 100)) == 7 + 23
    assert len(checkpoint_schedule("log", 2300, 100)) == 12 + 1
    with pytest.raises(ConfigError, match="checkpoint_schedule='logarithmic': use one of"):
        checkpoint_schedule("logarithmic", 10, 5)


class Sequences(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        ids = torch.arange(i % 7, i % 7 + 8) % 32
        return {"input_ids": ids, "labels": ids}


def test_lr_log_puts_a_point_where_the_learning_so_far_doubles():
    """GPT-2 Large's DPO run (2,344 steps, 150 warm-up steps, then constant): recomputed here from the warm-up's own
    definition, the update of step s (from 1) at min((s - 1) / 150, 1) of the learning rate."""
    args = TrainingArguments(output_dir="unused", learning_rate=1e-6, lr_scheduler_type="constant_with_warmup",
                             warmup_steps=150, use_cpu=True, report_to=[])
    learned = [0.0]
    for step in range(1, 2345):
        learned.append(learned[-1] + min((step - 1) / 150, 1.0))
    expected = sorted({next(n for n in range(2345) if learned[n] >= learned[-1] / 2 ** k) for k in range(11)})
    assert checkpoint_schedule("lr-log", 2344, 100, args, 11) == expected == [
        27, 37, 53, 74, 104, 147, 218, 360, 643, 1210, 2344]
    assert all(0 < learned[s] <= 0.5 * learned[t] + 1 for s, t in zip(expected, expected[1:]))  # each point doubles it
    assert expected[0] < 150 < expected[-1]  # points in the warm-up too, but none where nothing was learned yet
    # A short run gets fewer distinct points rather than two at one step.
    assert checkpoint_schedule("lr-log", 6, 1, args, 11) == [2, 3, 4, 5, 6]


def test_a_real_trainers_learning_rates_place_the_lr_log_points(tmp_path):
    """The sums of the learning rates a real Trainer logs at each step, cosine schedule with warm-up."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=20, learning_rate=1e-3,
                             lr_scheduler_type="cosine", warmup_steps=4, save_strategy="steps", save_steps=100,
                             report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True)
    schedule = lambda n: checkpoint_schedule("lr-log", n, 100, args, 4)  # noqa: E731
    trainer = Trainer(model=model, args=args, train_dataset=Sequences(), callbacks=[ScheduledCheckpoints(schedule)])
    trainer.train()
    rates = [entry["learning_rate"] / 1e-3 for entry in trainer.state.log_history if "learning_rate" in entry]
    assert len(rates) == 20
    learned = [sum(rates[:n]) for n in range(21)]
    expected = sorted({next(n for n in range(21) if learned[n] >= learned[-1] / 2 ** k - 1e-9) for k in range(4)})
    assert [step for step, _ in checkpoint_steps(str(tmp_path))] == schedule(20) == expected
    assert len(expected) == 4


@pytest.mark.parametrize("kind", ["log+steps", "log"])
def test_a_real_trainer_saves_exactly_the_scheduled_steps(tmp_path, kind):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=20, save_strategy="steps",
                             save_steps=6, report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Sequences(),
            callbacks=[ScheduledCheckpoints(lambda n: checkpoint_schedule(kind, n, 6))]).train()
    saved = [step for step, _ in checkpoint_steps(str(tmp_path))]
    assert saved == checkpoint_schedule(kind, 20, 6)
    assert saved == {"log+steps": [1, 2, 4, 6, 12, 18, 20], "log": [1, 2, 4, 8, 16, 20]}[kind]


@pytest.mark.parametrize("flags, message", [
    (["--resume_minutes", "-1"], "resume_minutes=-1.0: the minutes between"),
    (["--resume_minutes", "nan"], "resume_minutes=nan: the minutes between"),
    (["--resume_minutes", "5", "--frontier_eval", ""], "resume_minutes=5 does nothing without frontier_eval"),
    (["--schedule_points", "0"], "schedule_points=0: a whole number >= 1"),
])
def test_resume_minutes_and_schedule_points_are_refused_where_they_cannot_work(flags, message):
    import os

    from imdb_dpo.methods import dpo
    from conftest import CPU_FLAGS, REPO
    from imdb_dpo.lifecycle.checkpoints import check_schedule
    from imdb_dpo.configuration.arguments import parse_config

    script_args, training_args, _ = parse_config(dpo.STAGES, ["--config", os.path.join(REPO, "configs/tiny/dpo.yaml"),
                                                              *CPU_FLAGS, *flags])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_schedule(script_args, training_args)
