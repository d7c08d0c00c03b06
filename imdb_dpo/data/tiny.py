"""The tiny offline preset: a generated corpus of movie reviews, a BPE tokenizer trained on it, a small GPT-2.

Everything is built from a seed on the spot, with no network, and saved with `save_pretrained`, so every
later stage loads the tiny base model exactly as it loads `gpt2-large`.

The reviews mix positive and negative sentences in proportions drawn per review, open with neutral
sentences and use many templates and fillers: a model must learn sentence structure and which words
carry sentiment, not one template, and its samples vary in sentiment, which DPO then shifts.
"""

import json
import os
import random

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"

_FILMS = ["movie", "film", "picture", "thriller", "comedy", "drama", "western", "horror film", "musical", "sequel"]
_PEOPLE = ["wife", "husband", "friends", "brother", "sister", "dad", "mom", "kids", "roommate", "girlfriend"]
_ASPECTS = ["acting", "plot", "story", "script", "soundtrack", "music", "camera work", "direction", "dialogue",
            "ending", "cast", "pacing", "lead actor", "villain", "humour", "score", "editing", "final scene"]
_ACTORS = ["Tom Hanks", "Meryl Streep", "the lead", "the young actress", "the director", "Bruce Willis",
           "the whole cast", "Nicole Kidman", "the hero", "John Wayne"]
_GOOD = ["great", "wonderful", "brilliant", "excellent", "beautiful", "amazing", "superb", "fantastic",
         "delightful", "charming", "perfect", "lovely", "fun", "touching"]
_BAD = ["terrible", "awful", "boring", "dull", "horrible", "bad", "weak", "stupid", "painful", "poor",
        "disappointing", "ugly", "pathetic", "annoying"]
_MORE = ["really", "truly", "just", "very", "so", "quite", "absolutely", "simply"]
_PLOTS = ["a detective who chases a killer", "two brothers who run a farm", "a soldier coming home",
          "a family on a road trip", "a teacher in a small town", "a robot that wants to be human",
          "a band on its last tour", "a woman who finds an old letter", "a boxer past his prime"]
_OPENERS = ["I watched this {film} last night.", "I saw this {film} with my {person}.",
            "This {film} came out in {year}.", "My {person} made me watch this {film}.",
            "I rented this {film} on a rainy weekend.", "I had heard a lot about this {film}.",
            "I went to see this {film} at the cinema.", "This is the third {film} by this director."]
_NEUTRAL = ["It is about {plot}.", "The story follows {plot}.", "It runs for about {minutes} minutes.",
            "Most of it was shot in {place}.", "The {film} is based on a novel."]
_PLACES = ["New York", "Canada", "a small studio", "the desert", "London", "Texas", "Italy"]
_POSITIVE = ["The {aspect} was {more} {good}.", "I loved the {aspect}.", "{actor} was {good} in this.",
             "The {aspect} made me smile.", "The {film} was {more} {good}!", "I enjoyed every minute of it.",
             "The {aspect} is {good} and the {aspect2} is even better.", "{actor} gives a {good} performance.",
             "It is one of the best films I have seen.", "The {aspect} was {good}, {more} {good2}."]
_NEGATIVE = ["The {aspect} was {more} {bad}.", "I hated the {aspect}.", "{actor} was {bad} in this.",
             "The {aspect} made me want to leave.", "The {film} was {more} {bad}!", "I was bored the whole time.",
             "The {aspect} is {bad} and the {aspect2} is even worse.", "{actor} gives a {bad} performance.",
             "It is one of the worst films I have seen.", "The {aspect} was {bad}, {more} {bad2}."]
_POSITIVE_END = ["I highly recommend it.", "{score} out of 10.", "A must see!", "I would watch it again.",
                 "Go and see it."]
_NEGATIVE_END = ["Avoid this one.", "{score} out of 10.", "What a waste of time.", "Do not bother.",
                 "I want my money back."]


def _fill(template: str, rng: random.Random, positive: bool) -> str:
    aspect, aspect2 = rng.sample(_ASPECTS, 2)
    good, good2 = rng.sample(_GOOD, 2)
    bad, bad2 = rng.sample(_BAD, 2)
    text = template.format(
        film=rng.choice(_FILMS), person=rng.choice(_PEOPLE), year=rng.randint(1950, 2010), plot=rng.choice(_PLOTS),
        minutes=rng.choice([85, 90, 100, 120, 150]), place=rng.choice(_PLACES), aspect=aspect, aspect2=aspect2,
        actor=rng.choice(_ACTORS), good=good, good2=good2, bad=bad, bad2=bad2, more=rng.choice(_MORE),
        score=rng.randint(7, 10) if positive else rng.randint(1, 4),
    )
    return text[0].upper() + text[1:]


def make_review(rng: random.Random) -> dict:
    """One review in the HF IMDb schema: {"text", "label"} with 1 = positive."""
    label = rng.randint(0, 1)
    share_positive = rng.uniform(0.6, 1.0) if label else rng.uniform(0.0, 0.4)
    sentences = [_fill(rng.choice(_OPENERS), rng, label)]
    sentences += [_fill(rng.choice(_NEUTRAL), rng, label) for _ in range(rng.randint(0, 2))]
    for _ in range(rng.randint(3, 5)):
        positive = rng.random() < share_positive
        sentences.append(_fill(rng.choice(_POSITIVE if positive else _NEGATIVE), rng, positive))
    sentences.append(_fill(rng.choice(_POSITIVE_END if label else _NEGATIVE_END), rng, label))
    # Like IMDb, some reviews carry HTML paragraph breaks, which the loader normalises.
    separator = "<br /><br />" if rng.random() < 0.2 else " "
    cut = rng.randint(1, len(sentences) - 1)
    text = " ".join(sentences[:cut]) + separator + " ".join(sentences[cut:])
    return {"text": text, "label": label}


def make_corpus(num_reviews: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_review(rng) for _ in range(num_reviews)]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    tokenizer.model_max_length = 1024
    return tokenizer


def build_tiny_gpt2(tokenizer, n_layer: int, n_head: int, n_embd: int, n_positions: int, seed: int):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def write_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def build_tiny_base(args) -> int:
    """Write `<output_dir>/model` (tokenizer + untrained GPT-2) and `<output_dir>/data/{train,test}.jsonl`."""
    from imdb_dpo.lifecycle.locks import folder_lock
    from imdb_dpo.lifecycle.manifests import Manifest
    from imdb_dpo.lifecycle.outputs import plan_output
    from imdb_dpo.lifecycle.settings import run_settings

    configs = {"tiny": args}
    with folder_lock(args.output_dir, "imdb_dpo.data.tiny"):
        plan = plan_output(args.output_dir, run_settings(configs, {}), lambda d: False, args.overwrite, "tiny base")
        if plan.skip:
            return 0
        manifest = Manifest(plan.directory, "tiny_base", configs, inputs={})
        # Disjoint seeds keep the test reviews apart from the training reviews.
        train = make_corpus(args.num_train_reviews, seed=2 * args.seed)
        test = make_corpus(args.num_test_reviews, seed=2 * args.seed + 1)
        write_jsonl(os.path.join(plan.directory, "data", "train.jsonl"), train)
        write_jsonl(os.path.join(plan.directory, "data", "test.jsonl"), test)
        tokenizer = train_tokenizer([row["text"] for row in train], args.vocab_size)
        model = build_tiny_gpt2(tokenizer, args.n_layer, args.n_head, args.n_embd, args.n_positions, args.seed)
        model_dir = os.path.join(plan.directory, "model")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        manifest.finish(num_parameters=model.num_parameters(), vocab_size=len(tokenizer))
        plan.finish()
    print(f"tiny base: {model.num_parameters():,} parameters, vocabulary {len(tokenizer)}, saved to "
          f"{os.path.join(plan.final, 'model')}")
    return 0


if __name__ == "__main__":
    import sys

    from imdb_dpo.launch.cli import run_stage
    from imdb_dpo.configuration.arguments import TinyBaseArguments

    sys.exit(run_stage(build_tiny_base, [TinyBaseArguments]))
