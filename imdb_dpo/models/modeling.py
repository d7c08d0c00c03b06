"""Loading a stage's model directory, whether it holds full weights or a LoRA adapter."""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ADAPTER_CONFIG = "adapter_config.json"


def load_tokenizer(path: str, padding_side: str = "left"):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-2 has none; EOS pads, and the attention mask hides it
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def same_tokenizer(a: str, b: str) -> bool:
    """Whether the models at `a` and `b` map text to the same token ids (the same vocabulary)."""
    return AutoTokenizer.from_pretrained(a).get_vocab() == AutoTokenizer.from_pretrained(b).get_vocab()


def base_model_of(path: str) -> str | None:
    """The base model an adapter directory was trained on, or None for a full model."""
    config_path = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        return json.load(f)["base_model_name_or_path"]


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count from each row's first real token, as generate() numbers a left-padded row. Without
    them GPT-2 (learned absolute positions) scores a left-padded row as if its tokens sat further along."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def set_model_init_kwargs(training_args, model_args) -> None:
    """How the trainer loads the model from its path: ModelConfig's dtype (fp32 weights: the precision rule) and
    attention implementation, and on no device map (the Trainer places it on this process's device), under any
    model_init_kwargs the config gives explicitly. TRL would pick device_map="auto" on any CUDA machine (ORPO and CPO
    under a launcher too): each process would spread its model over every GPU of the node, and accelerate refuses to
    train such a model in any distributed mode."""
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
                                       "device_map": None, **(training_args.model_init_kwargs or {})}


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A model ready for inference; a LoRA adapter is merged into its base so sampling runs at full speed."""
    base = base_model_of(path)
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path)
        model = model.merge_and_unload()
    return model.to(device).eval()


def model_like(source, dtype: torch.dtype, device) -> torch.nn.Module:
    """A resident model of `source`'s architecture in `dtype` on `device`, in eval mode, for its weights to be copied
    into. Built from the config rather than copied: a copy would keep the forward that accelerate wraps in bf16
    autocast for training. Building draws random initial weights from the global generator: a caller that must not
    move it forks it."""
    import copy

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(source.config, dtype=dtype)
    model.generation_config = copy.deepcopy(source.generation_config)
    # Parameters that require grad, as a loaded model's do: on the CPU, PyTorch multiplies by a frozen weight along
    # another path, whose rounding moved the KL in the eighth digit.
    return model.eval()
