"""File sizes of a GPT-2 Large checkpoint as the Trainer writes it: the weights (save_pretrained) and optimizer.pt
with RMSprop's and AdamW's state, on random weights (CPU, ~12 GB of RAM and ~9 GB of disk in $TMPDIR or here, about
a minute). docs/cost.md, "Disk" is computed from these sizes.

    python benchmarks/checkpoint_sizes.py
"""
import os
import shutil
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel

config = GPT2Config(n_embd=1280, n_layer=36, n_head=20)  # gpt2-large: vocabulary 50257, 1024 positions
model = GPT2LMHeadModel(config)
folder = tempfile.mkdtemp(dir=os.environ.get("TMPDIR", "."))
try:
    model.save_pretrained(folder)
    print(f"parameters {model.num_parameters():,}; model.safetensors {os.path.getsize(os.path.join(folder, 'model.safetensors')) / 1e9:.3f} GB")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for name, make in (("RMSprop", torch.optim.RMSprop), ("AdamW", torch.optim.AdamW)):
        optimizer = make(model.parameters(), lr=1e-6)
        optimizer.step()
        path = os.path.join(folder, f"optimizer_{name}.pt")
        torch.save(optimizer.state_dict(), path)
        print(f"{name} optimizer.pt {os.path.getsize(path) / 1e9:.3f} GB")
        os.remove(path)
        del optimizer
finally:
    shutil.rmtree(folder)
