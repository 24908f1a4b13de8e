"""The native SAE folder: cfg.json (architecture, shapes, metadata) + sae.safetensors (float32).

What `jumpscope train` writes and the store keeps. The tensors are the inference form
(normalisation scale C and pre-encoder bias folded in); cfg.json records the architecture,
d_in, d_sae, k (architectures whose knob is k), the `SAEMetadata` fields and any extras.

`load_native` trusts neither file: the sizes in cfg.json must be whole numbers within
`SAEConfig`'s limits, and the safetensors header (read without loading a tensor) must hold every
tensor at the shape cfg.json implies, before any tensor is read or any module is built. A cfg.json
that asks for more than its weight file holds is an `SAEFormatError`, never an allocation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.atomic import atomic_write_bytes, atomic_write_text
from trainer.formats.files import NATIVE_CFG, NATIVE_WEIGHTS, SAEFormatError
from trainer.formats.tensors import check_shapes, cpu_tensors, read_safetensors, sae_from_tensors
from trainer.saes import registry
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.version import jumpscope_version


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
    """An SAE in inference form and its metadata (what every format's loader returns)."""

    sae: SAE
    meta: SAEMetadata


def save_native(folder: str | Path, sae: SAE, meta: SAEMetadata) -> Path:
    """Write an inference-form SAE as cfg.json + sae.safetensors (float32)."""
    if sae.cfg.use_pre_enc_bias:
        raise ValueError("save_native takes the inference form: call sae.fold(scale) first")
    folder = Path(folder)
    tensors = cpu_tensors(sae)
    atomic_write_bytes(folder / NATIVE_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    cfg = {
        "architecture": sae.cfg.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        **{k: v for k, v in asdict(meta).items() if k != "extra"},
        "jumpscope_version": jumpscope_version(),
    }
    if sae.cfg.spec.knob == "k":
        cfg["k"] = sae.cfg.k
    cfg.update({k: v for k, v in meta.extra.items() if k not in cfg})  # extras never override the core
    atomic_write_text(folder / NATIVE_CFG, json.dumps(cfg, indent=2, default=str) + "\n")
    return folder


def read_native_cfg(folder: Path) -> dict[str, Any]:
    """cfg.json of a native folder, with its required fields and a registered architecture checked."""
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
    if cfg["architecture"] not in registry.names():
        raise SAEFormatError(
            f"{cfg_path}: unknown architecture {cfg['architecture']!r} (allowed: {', '.join(registry.names())})"
        )
    return dict(cfg)


def _size(cfg: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    """A size field of cfg.json: a JSON integer (not a float, string or boolean)."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SAEFormatError(f"{where}: {key} must be a whole number, got {value!r}")
    return value


def native_config(cfg: dict[str, Any], where: str = NATIVE_CFG) -> SAEConfig:
    """The SAEConfig a cfg.json describes, its sizes checked (SAEFormatError naming `where`), allocating nothing."""
    d_in, d_sae, k = _size(cfg, "d_in", where), _size(cfg, "d_sae", where), _size(cfg, "k", where, 32)
    try:
        return SAEConfig(d_in=d_in, d_sae=d_sae, architecture=cfg["architecture"], k=k)
    except ValueError as err:
        raise SAEFormatError(f"{where}: {err}") from None


def check_weights_header(weights: Path, sae_cfg: SAEConfig) -> None:
    """The safetensors header of `weights` holds every tensor `sae_cfg` needs, at its shape.

    Reads the header only (no tensor data; safetensors checks that the header's shapes and dtypes add up to
    the file's length), so a config that disagrees with its file is refused before anything is allocated,
    and reading the file afterwards allocates no more than the file holds."""
    if not weights.is_file():
        raise SAEFormatError(f"{weights.parent}: no {weights.name}")
    try:
        shapes: dict[str, tuple[int, ...]] = {}
        with safe_open(str(weights), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118  (a safe_open handle is not a dict)
                shapes[name] = tuple(f.get_slice(name).get_shape())
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise SAEFormatError(f"{weights}: not a readable safetensors file ({err})") from err
    check_shapes(shapes, sae_cfg, str(weights), f": the config ({NATIVE_CFG}) and the weights disagree")


def load_native(folder: str | Path, device: str | torch.device = "cpu") -> LoadedSAE:
    """Load a native SAE folder: cfg.json's sizes and the weight file's header are checked first, then every tensor."""
    folder = Path(folder)
    cfg = read_native_cfg(folder)
    weights = folder / NATIVE_WEIGHTS
    sae_cfg = native_config(cfg, str(folder / NATIVE_CFG))
    check_weights_header(weights, sae_cfg)
    tensors = read_safetensors(weights)
    sae = sae_from_tensors(tensors, sae_cfg, str(weights)).to(device)
    known = {f.name for f in fields(SAEMetadata)} - {"extra"}
    skip = known | {"architecture", "d_in", "d_sae", "dtype", "jumpscope_version", "k"}
    meta = SAEMetadata(
        **{k: cfg[k] for k in known if k in cfg},
        extra={k: v for k, v in cfg.items() if k not in skip},
    )
    return LoadedSAE(sae, meta)


__all__ = [
    "LoadedSAE",
    "SAEMetadata",
    "check_weights_header",
    "load_native",
    "native_config",
    "read_native_cfg",
    "save_native",
]
