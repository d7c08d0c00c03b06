"""Reward models behind one interface: a callable from a list of texts to a list of floats in [0, 1].

- `SentimentClassifierReward`: any Hugging Face sequence classifier through the transformers pipeline
  (default `siebert/sentiment-roberta-large-english`); the reward is the probability of the label named by
  `positive_label` (POSITIVE by default), picked by name because the pipeline sorts its output by score. It runs
  on the device and in the dtype it is given (the stage's process device and `reward_dtype`, float32 unless set):
  a bf16 classifier gives a different reward, so the dtype is a setting, never a guess from the hardware.
- `VaderReward`: the offline VADER lexicon; its compound score in [-1, 1] mapped to [0, 1].
"""

import torch

from .config import ConfigError

VADER = "vader"


class SentimentClassifierReward:
    def __init__(self, model_name: str, batch_size: int = 64, device: str | torch.device = "cpu",
                 positive_label: str = "POSITIVE", dtype: torch.dtype = torch.float32):
        from transformers import pipeline

        self.classifier = pipeline("text-classification", model=model_name, top_k=None, truncation=True,
                                   max_length=512, device=device, dtype=dtype)
        config = self.classifier.model.config
        what = None
        if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
            what = (f"a {', '.join(config.architectures or ['model of unknown architecture'])}, not a classifier: loaded "
                    "as one, its classification head would be new random weights")
        elif config.num_labels < 2:
            what = "a model of one score and no labels (a reward_model.py output without its manifest.json?)"
        if what:
            raise ConfigError(
                f"reward_model={model_name!r} is {what}. Give a sentiment classifier with a positive label (the default "
                "siebert/sentiment-roberta-large-english), 'vader', or, for rloo.py, a folder reward_model.py finished")
        labels = set(config.id2label.values())
        if positive_label not in labels:
            raise ConfigError(f"reward_model={model_name!r} has no label {positive_label!r} (its labels: {sorted(labels)}); "
                              "set reward_positive_label to the label that means positive sentiment")
        self.positive_label = positive_label
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> list[float]:
        outputs = self.classifier(texts, batch_size=self.batch_size)
        return [next(d["score"] for d in scores if d["label"] == self.positive_label) for scores in outputs]


class VaderReward:
    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: list[str]) -> list[float]:
        return [(self.analyzer.polarity_scores(t)["compound"] + 1) / 2 for t in texts]


def make_reward(name: str, batch_size: int = 64, positive_label: str = "POSITIVE", device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32):
    if name == VADER:
        return VaderReward()
    return SentimentClassifierReward(name, batch_size=batch_size, device=device, positive_label=positive_label,
                                     dtype=dtype)
