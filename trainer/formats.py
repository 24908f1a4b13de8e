"""SAE files: the native folder (cfg.json + sae.safetensors, inference form).

Every loader checks names, shapes, dtypes and finiteness and raises `SAEFormatError`
naming exactly what is wrong. Writers replace files atomically (temp file + rename), so a
crash mid-write never leaves a half-written SAE behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from trainer.config import ARCHITECTURES, SAEConfig
from trainer.sae import SAE, build_sae

NATIVE_CFG = "cfg.json"
NATIVE_WEIGHTS = "sae.safetensors"


def jumpscope_version() -> str:
    try:
        return version("jumpscope")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


class SAEFormatError(ValueError):
    """An SAE file or folder that cannot be loaded, with the reason."""


@dataclass
class SAEMetadata:
    """Where an SAE's activations came from and how they were scaled (cfg.json fields)."""

    model: str | None = None
    """Hugging Face id or local folder of the model the activations come from."""
    layer: int | None = None
    """Zero-indexed decoder layer."""
    site: str | None = None
    """resid, mlp or attn (interface.md)."""
    dataset: str | None = None
    """Where the training tokens came from."""
    context_size: int | None = None
    """Tokens per packed sequence."""
    prepend_bos: bool = True
    """Whether sequences start with BOS (BOS itself is never trained on)."""
    normalization_scale: float = 1.0
    """C: training divided raw activations by C; already folded into the saved tensors."""
    tokens_trained: int = 0
    """Tokens the SAE was trained on."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (training config, eval metrics)."""


class LoadedSAE(NamedTuple):
    """An SAE in inference form and its metadata."""

    sae: SAE
    meta: SAEMetadata


def atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: tmp.write_text(text))


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an inference-form SAE of this config stores, with its shape."""
    d_in, d_sae = cfg.d_in, cfg.d_sae
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
    }
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if cfg.architecture == "gated":
        shapes["r_mag"] = (d_sae,)
        shapes["b_mag"] = (d_sae,)
    return shapes


def check_tensors(tensors: dict[str, Tensor], cfg: SAEConfig, where: str) -> dict[str, Tensor]:
    """Names, shapes, float dtypes and finiteness; returns float32 copies."""
    shapes = expected_shapes(cfg)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise SAEFormatError(
            f"{where}: missing tensor(s) {', '.join(missing)} for a {cfg.architecture} SAE "
            f"(found: {', '.join(sorted(tensors)) or 'none'})"
        )
    out: dict[str, Tensor] = {}
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise SAEFormatError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae})"
            )
        if not tensor.is_floating_point():
            raise SAEFormatError(f"{where}: {name} has dtype {tensor.dtype}, expected a float dtype")
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise SAEFormatError(f"{where}: {name} contains {bad} NaN or infinite value(s)")
        out[name] = tensor.float()
    if cfg.architecture == "jumprelu" and bool((out["threshold"] < 0).any()):
        raise SAEFormatError(f"{where}: threshold has negative values; JumpReLU thresholds are >= 0")
    return out


def sae_from_tensors(tensors: dict[str, Tensor], cfg: SAEConfig, where: str) -> SAE:
    """An inference-form SAE (no pre-encoder bias) holding the given checked tensors."""
    # Thresholds are loaded as raw theta: a zero threshold is legal in released files.
    inference_cfg = SAEConfig(**{**asdict(cfg), "use_pre_enc_bias": False, "threshold_param": "raw"})
    sae = build_sae(inference_cfg)
    sae.load_inference_tensors(check_tensors(tensors, inference_cfg, where))
    return sae


def save_native(folder: str | Path, sae: SAE, meta: SAEMetadata) -> Path:
    """Write an inference-form SAE as cfg.json + sae.safetensors (float32)."""
    if sae.cfg.use_pre_enc_bias:
        raise ValueError("save_native takes the inference form: call sae.fold(scale) first")
    folder = Path(folder)
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in sae.inference_tensors().items()}
    atomic_write_bytes(folder / NATIVE_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    cfg = {
        "architecture": sae.cfg.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        **{k: v for k, v in asdict(meta).items() if k != "extra"},
        "jumpscope_version": jumpscope_version(),
    }
    if sae.cfg.architecture == "topk":
        cfg["k"] = sae.cfg.k
    cfg.update(meta.extra)
    atomic_write_text(folder / NATIVE_CFG, json.dumps(cfg, indent=2, default=str) + "\n")
    return folder


def read_native_cfg(folder: Path) -> dict[str, Any]:
    cfg_path = folder / NATIVE_CFG
    if not folder.is_dir():
        raise SAEFormatError(f"{folder} is not a folder")
    if not cfg_path.exists():
        raise SAEFormatError(f"{folder}: no {NATIVE_CFG} (a native SAE folder holds {NATIVE_CFG} and {NATIVE_WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise SAEFormatError(f"{cfg_path}: not valid JSON ({err})") from err
    for key in ("architecture", "d_in", "d_sae"):
        if key not in cfg:
            raise SAEFormatError(f"{cfg_path}: missing field '{key}'")
    if cfg["architecture"] not in ARCHITECTURES:
        raise SAEFormatError(
            f"{cfg_path}: unknown architecture {cfg['architecture']!r} (allowed: {', '.join(ARCHITECTURES)})"
        )
    return dict(cfg)


def load_native(folder: str | Path, device: str | torch.device = "cpu") -> LoadedSAE:
    """Load a native SAE folder, checking every tensor against cfg.json."""
    folder = Path(folder)
    cfg = read_native_cfg(folder)
    weights = folder / NATIVE_WEIGHTS
    if not weights.exists():
        raise SAEFormatError(f"{folder}: no {NATIVE_WEIGHTS}")
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise SAEFormatError(f"{weights}: not a readable safetensors file ({err})") from err
    sae_cfg = SAEConfig(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        architecture=cfg["architecture"],
        k=int(cfg.get("k", 32)),
    )
    sae = sae_from_tensors(tensors, sae_cfg, str(weights)).to(device)
    known = {f.name for f in fields(SAEMetadata)} - {"extra"}
    skip = known | {"architecture", "d_in", "d_sae", "dtype", "jumpscope_version", "k"}
    meta = SAEMetadata(
        **{k: cfg[k] for k in known if k in cfg},
        extra={k: v for k, v in cfg.items() if k not in skip},
    )
    return LoadedSAE(sae, meta)
