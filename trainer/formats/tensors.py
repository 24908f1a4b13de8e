"""The tensors of an inference-form SAE: which ones, checking them, and building the SAE.

Shared by every format: the names and shapes come from the architecture's registry spec
(W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,), and its extra
tensors, each (d_sae,)); every check raises `SAEFormatError` naming exactly what is wrong.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from trainer.formats.files import SAEFormatError
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.saes.registry import build_sae


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an inference-form SAE of this config stores, with its shape."""
    d_in, d_sae = cfg.d_in, cfg.d_sae
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
    }
    for name in cfg.spec.extra_tensors:
        shapes[name] = (d_sae,)
    return shapes


def check_shapes(found: dict[str, tuple[int, ...]], cfg: SAEConfig, where: str, note: str = "") -> None:
    """Every tensor the architecture needs is there with its shape (`found`: name -> shape); `note` is
    added to a shape error (e.g. which file the sizes came from)."""
    shapes = expected_shapes(cfg)
    missing = [name for name in shapes if name not in found]
    if missing:
        raise SAEFormatError(
            f"{where}: missing tensor(s) {', '.join(missing)} for a {cfg.architecture} SAE "
            f"(found: {', '.join(sorted(found)) or 'none'})"
        )
    for name, shape in shapes.items():
        if found[name] != shape:
            raise SAEFormatError(
                f"{where}: {name} has shape {found[name]}, expected {shape} (d_in={cfg.d_in}, d_sae={cfg.d_sae}){note}"
            )


def check_tensors(tensors: dict[str, Tensor], cfg: SAEConfig, where: str) -> dict[str, Tensor]:
    """Names, shapes, float dtypes and finiteness; returns float32 copies."""
    check_shapes({name: tuple(t.shape) for name, t in tensors.items()}, cfg, where)
    out: dict[str, Tensor] = {}
    for name in expected_shapes(cfg):
        tensor = tensors[name]
        if not tensor.is_floating_point():
            raise SAEFormatError(f"{where}: {name} has dtype {tensor.dtype}, expected a float dtype")
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise SAEFormatError(f"{where}: {name} contains {bad} NaN or infinite value(s)")
        out[name] = tensor.float()
    for name in cfg.spec.nonnegative_tensors:
        if bool((out[name] < 0).any()):
            raise SAEFormatError(f"{where}: {name} has negative values; a {cfg.architecture} SAE's {name} is >= 0")
    return out


def sae_from_tensors(tensors: dict[str, Tensor], cfg: SAEConfig, where: str) -> SAE:
    """An inference-form SAE (no pre-encoder bias) holding the given checked tensors."""
    # Thresholds are loaded as raw theta: a zero threshold is legal in released files.
    inference_cfg = SAEConfig(**{**asdict(cfg), "use_pre_enc_bias": False, "threshold_param": "raw"})
    sae = build_sae(inference_cfg)
    sae.load_inference_tensors(check_tensors(tensors, inference_cfg, where))
    return sae


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file; SAEFormatError if it is missing or unreadable."""
    if not path.is_file():
        raise SAEFormatError(f"{path.parent}: no {path.name}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise SAEFormatError(f"{path}: not a readable safetensors file ({err})") from err


def require_inference_form(sae: SAE, fmt: str) -> None:
    """Writers take the inference form only (normalisation and pre-encoder bias folded in)."""
    if sae.cfg.use_pre_enc_bias:
        raise SAEFormatError(f"save_{fmt} takes the inference form: call sae.fold(scale) first")


def cpu_tensors(sae: SAE) -> dict[str, Tensor]:
    """The SAE's inference tensors as contiguous float32 CPU tensors, ready to write."""
    return {name: t.detach().float().cpu().contiguous() for name, t in sae.inference_tensors().items()}


def drop_unit_scaling_factor(tensors: dict[str, Tensor], where: str) -> None:
    """Remove an all-ones `scaling_factor`; any other value changes the SAE and is refused."""
    factor = tensors.pop("scaling_factor", None)
    if factor is not None and not bool(torch.all(factor == 1)):
        raise SAEFormatError(
            f"{where}: scaling_factor is not all ones (min {float(factor.min()):g}, max {float(factor.max()):g}); "
            "a fine-tuning scaling factor is not supported"
        )


__all__ = [
    "SAEFormatError",
    "check_tensors",
    "cpu_tensors",
    "drop_unit_scaling_factor",
    "expected_shapes",
    "read_safetensors",
    "require_inference_form",
    "sae_from_tensors",
]
