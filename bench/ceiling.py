"""The physical ceiling of training tokens per joule on a GPU: the board's peak dense bf16
FLOP/s per watt of its board power, over 6 x parameters FLOPs per trained token (forward
and backward). Spec-sheet figures, matched on NVML's whole device name; a board not in the
table has no ceiling (None), never a guess."""

from __future__ import annotations

import re

# (pattern on NVML's name, peak dense bf16 tensor FLOP/s, board power W). Boards whose
# variants differ in power (H200 NVL, H100 NVL, A100 PCIe, GH200) are left out: no ceiling.
PEAK_BF16: tuple[tuple[str, float, float], ...] = (
    (r"^NVIDIA H200$", 989e12, 700.0),  # SXM (the NVL board is 600 W)
    (r"^NVIDIA H100 PCIe$", 756e12, 350.0),
    (r"^NVIDIA H100 80GB HBM3$", 989e12, 700.0),  # SXM
    (r"^NVIDIA A100-SXM4-(40|80)GB$", 312e12, 400.0),
    (r"^NVIDIA L40S$", 362e12, 350.0),
    (r"^NVIDIA L4$", 121e12, 72.0),
)


def peak_flops_per_joule(device_name: str) -> float | None:
    for pattern, flops, watts in PEAK_BF16:
        if re.search(pattern, device_name.strip()):
            return flops / watts
    return None


def ceiling_tokens_per_joule(device_name: str, n_params: int) -> float | None:
    per_joule = peak_flops_per_joule(device_name)
    if per_joule is None or n_params <= 0:
        return None
    return per_joule / (6.0 * n_params)


def share_of_ceiling(device_name: str, n_params: int, tokens: int, joules: float) -> dict:
    """A trial's training tokens per joule and its share of the ceiling (measured joules)."""
    ceiling = ceiling_tokens_per_joule(device_name, n_params)
    rate = tokens / joules if joules > 0 else None
    return {
        "device": device_name,
        "n_params": n_params,
        "tokens_per_joule": rate,
        "ceiling_tokens_per_joule": ceiling,
        "share_of_ceiling": rate / ceiling if rate and ceiling else None,
    }
