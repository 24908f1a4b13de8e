"""Which torch device to run on: the one rule shared by training, the LM, analysis and the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
"""A device preference: auto = CUDA when present, else CPU (the CLI's --device choices)."""


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is a clear error.

    local_rank picks the GPU of a torchrun process (modulo the GPUs present).
    """
    import torch

    if preference not in get_args(Device):
        raise ValueError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
