"""Reward models behind one interface: a callable from a list of texts to a list of floats in [0, 1].

- `SentimentClassifierReward`: any Hugging Face sequence classifier through the transformers pipeline
  (default `siebert/sentiment-roberta-large-english`); the reward is the probability of the label named by
  `positive_label` (POSITIVE by default), picked by name because the pipeline sorts its output by score. It runs
  on the device and in the dtype it is given (the stage's process device and `reward_dtype`, float32 unless set):
  a bf16 classifier gives a different reward, so the dtype is a setting, never a guess from the hardware.
- `VaderReward`: the offline VADER lexicon; its compound score in [-1, 1] mapped to [0, 1].
- `LearnedReward`: a reward_model.py output, its unbounded score of token ids (what rloo_rm optimises).
"""

import torch

from imdb_dpo.configuration.arguments import ConfigError

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


class LearnedReward:
    """A reward_model.py output as a reward: its scalar score of prompt ids + completion ids (a logit, unbounded).

    `score(prompt_ids, completion_ids)` takes lists of id lists; called with keyword arguments it is an RLOO reward
    function (RLOO passes the data set's `prompt_ids` column and the sampled `completion_ids`)."""

    __name__ = "learned_reward"

    def __init__(self, path: str, device, dtype: torch.dtype = torch.float32, batch_size: int = 64):
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        self.pad = self.model.config.pad_token_id
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[float]:
        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start: start + self.batch_size]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [self.pad] * (width - len(s)) for s in batch], device=self.model.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.model.device)
            scores += self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
        return scores

    def __call__(self, prompts=None, completions=None, completion_ids=None, prompt_ids=None, **kwargs) -> list[float]:
        return self.score(prompt_ids, completion_ids)
