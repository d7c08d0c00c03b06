"""The checkpoint schedule that places the frontier's points: exact steps, on a real Trainer."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from imdb_dpo.checkpoints import ScheduledCheckpoints, checkpoint_schedule, checkpoint_steps
from imdb_dpo.config import ConfigError


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


@pytest.mark.parametrize("kind", ["log+steps", "log"])
def test_a_real_trainer_saves_exactly_the_scheduled_steps(tmp_path, kind):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=20, save_strategy="steps",
                             save_steps=6, report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Sequences(), callbacks=[ScheduledCheckpoints(kind)]).train()
    saved = [step for step, _ in checkpoint_steps(str(tmp_path))]
    assert saved == checkpoint_schedule(kind, 20, 6)
    assert saved == {"log+steps": [1, 2, 4, 6, 12, 18, 20], "log": [1, 2, 4, 8, 16, 20]}[kind]
