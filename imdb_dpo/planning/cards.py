"""The GPUs researchers run on: memory, peak rates and bandwidth, for the plan of a card (`plan.py --gpu KIND`) and for
naming the smallest card a stage fits.

Dense (no sparsity) figures from each vendor's datasheet; memory as `nvidia-smi` reports it (MiB), which is a little
below the nominal GB. Sources:
- H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (2023): bf16 989 TFLOP/s, TF32 495, FP32 67, 3.35 TB/s.
- H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (2024): as the H100 SXM, 141 GB at 4.8 TB/s.
- A100 SXM4 80 GB and 40 GB: NVIDIA A100 Tensor Core GPU datasheet (2021): bf16 312, TF32 156, FP32 19.5,
  2,039 GB/s (80 GB) and 1,555 GB/s (40 GB).
- L40S: NVIDIA L40S datasheet (2023): bf16 362, TF32 183, FP32 91.6, 864 GB/s.
- RTX A6000: NVIDIA RTX A6000 datasheet (2021) and the Ampere GA102 whitepaper: bf16 (FP32 accumulate) ~155, TF32
  ~77, FP32 38.7, 768 GB/s.
- RTX 4090: NVIDIA Ada Lovelace architecture whitepaper v1.0 (2022), appendix A: bf16 with FP32 accumulate 165.2,
  TF32 82.6, FP32 82.6, 1,008 GB/s.
- RTX 3090: NVIDIA Ampere GA102 GPU architecture whitepaper v2.0 (2021), appendix A: bf16 with FP32 accumulate 71,
  TF32 35.6, FP32 35.6, 936 GB/s.
"""

import dataclasses

MiB = 2**20
GiB = 2**30
# The CUDA context and what the libraries load with it (cuBLAS workspaces, kernels): an assumption of a few hundred
# MB, gone before a stage measures its free memory, so that a card's plan starts from what a stage would see.
CONTEXT_BYTES = GiB // 2


@dataclasses.dataclass(frozen=True)
class Card:
    kind: str              # what --gpu takes
    name: str              # how tables name it
    memory_mib: int        # as nvidia-smi reports it
    bf16_flops: float      # dense tensor-core peaks, FLOP/s
    tf32_flops: float
    fp32_flops: float      # IEEE float32 on CUDA cores
    bytes_per_s: float     # memory bandwidth

    @property
    def usable_bytes(self) -> int:
        """What a stage finds free on the idle card, once its CUDA context exists."""
        return self.memory_mib * MiB - CONTEXT_BYTES


CARDS = {card.kind: card for card in (
    Card("h100", "H100 SXM 80 GB", 81_559, 989.4e12, 494.7e12, 66.9e12, 3.35e12),
    Card("h200", "H200 SXM 141 GB", 143_771, 989.4e12, 494.7e12, 66.9e12, 4.8e12),
    Card("a100-80gb", "A100 SXM 80 GB", 81_920, 312e12, 156e12, 19.5e12, 2.039e12),
    Card("a100-40gb", "A100 SXM 40 GB", 40_960, 312e12, 156e12, 19.5e12, 1.555e12),
    Card("l40s", "L40S 48 GB", 46_068, 362e12, 183e12, 91.6e12, 0.864e12),
    Card("rtx-a6000", "RTX A6000 48 GB", 49_140, 154.8e12, 77.4e12, 38.7e12, 0.768e12),
    Card("rtx4090", "RTX 4090 24 GB", 24_564, 165.2e12, 82.6e12, 82.6e12, 1.008e12),
    Card("rtx3090", "RTX 3090 24 GB", 24_576, 71e12, 35.6e12, 35.6e12, 0.936e12),
)}
DEFAULT = CARDS["h100"]


def card(kind: str) -> Card:
    from imdb_dpo.configuration.errors import ConfigError

    found = {squeezed(c.kind): c for c in CARDS.values()}.get(squeezed(kind))
    if found is None:
        raise ConfigError(f"--gpu {kind!r} is not a card this project knows: use one of {', '.join(CARDS)} "
                          "(imdb_dpo/planning/cards.py holds their datasheet figures; add yours there)")
    return found


def squeezed(kind: str) -> str:
    """A card's name as --gpu compares it: case, spaces, hyphens and underscores aside (RTX_4090 is rtx4090)."""
    return "".join(ch for ch in kind.lower() if ch.isalnum())


def smallest_fitting(needed: float) -> Card | None:
    """The card with the least memory whose usable memory holds `needed` bytes (None: no card here does)."""
    fitting = [c for c in CARDS.values() if c.usable_bytes >= needed]
    return min(fitting, key=lambda c: c.memory_mib) if fitting else None
