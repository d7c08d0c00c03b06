"""Random-weight stand-ins of the gpt2-large preset's models, for machines without the Hugging Face Hub:
a GPT-2 (GPT-2 Large's shape or a tiny one) with GPT-2's own tokenizer, and a NEGATIVE/POSITIVE classifier of
`siebert/sentiment-roberta-large-english`'s shape (RoBERTa Large) with a byte-level BPE tokenizer built from
GPT-2's vocabulary and merges (RoBERTa's BPE is GPT-2's; here GPT-2's ids follow RoBERTa's four special tokens).

Trap: in transformers 5, `RobertaTokenizerFast(vocab_file=..., merges_file=...)` builds a 5-token vocabulary that
turns every text into `<s></s>`, and a classifier on it scores every text alike. The tokenizer is built with the
`tokenizers` library instead, and checked to split a sentence into words.
"""

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, RobertaConfig,
                          RobertaForSequenceClassification)

POLICY_SHAPES = {"gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20), "tiny": dict(n_embd=64, n_layer=2, n_head=2)}
CLASSIFIER_SHAPES = {
    "gpt2-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
}
ROBERTA_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def build_policy(size: str, gpt2_tokenizer_dir: str, directory: str, device: str = "cpu", seed: int = 0) -> str:
    """A GPT-2 of `size` with random weights and GPT-2's tokenizer (vocabulary 50,257, context 1,024), saved
    with `save_pretrained`. Built on `device` (a GPU initialises GPT-2 Large's 774M weights in seconds)."""
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(**POLICY_SHAPES[size], vocab_size=len(tokenizer), n_positions=1024,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def roberta_tokenizer(gpt2_tokenizer_dir: str) -> PreTrainedTokenizerFast:
    """RoBERTa's byte-level BPE from GPT-2's vocab.json and merges.txt."""
    with open(os.path.join(gpt2_tokenizer_dir, "vocab.json")) as f:
        gpt2_vocab = json.load(f)
    vocab = dict(ROBERTA_SPECIALS)
    for token, index in sorted(gpt2_vocab.items(), key=lambda item: item[1]):
        vocab[token] = index + len(ROBERTA_SPECIALS)
    vocab["<mask>"] = len(vocab)
    with open(os.path.join(gpt2_tokenizer_dir, "merges.txt")) as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line.strip()]
    backend = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", sep_token="</s>", cls_token="<s>", mask_token="<mask>",
                                        model_max_length=512)
    ids = tokenizer("This movie was great, I loved it")["input_ids"]
    assert len(ids) == 10, f"the RoBERTa tokenizer split a 7-word sentence into {len(ids)} ids: {ids}"
    return tokenizer


def build_classifier(size: str, gpt2_tokenizer_dir: str, directory: str, device: str = "cpu", seed: int = 0) -> str:
    """A sequence classifier of siebert's shape and labels (NEGATIVE, POSITIVE) with random weights."""
    tokenizer = roberta_tokenizer(gpt2_tokenizer_dir)
    torch.manual_seed(seed)
    config = RobertaConfig(**CLASSIFIER_SHAPES[size], vocab_size=len(tokenizer), max_position_embeddings=514,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2,
                           id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    with torch.device(device):
        model = RobertaForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
