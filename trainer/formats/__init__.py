"""SAE files: native folder, Gemma Scope params.npz and SAELens folder (all inference form).

This package's front door: the format names, detecting which one a path holds, and loading
or saving any of them. Each format is its own module (native.py, gemmascope.py, saelens.py);
tensors.py holds the checks they share and files.py the file names and `SAEFormatError`.

Every loader checks names, shapes, dtypes and finiteness and raises `SAEFormatError`
naming exactly what is wrong. Writers replace files atomically (temp file + rename), so a
crash mid-write never leaves a half-written SAE behind.

Importing this module does not import torch (the CLI reads FORMATS): the format modules are
imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from trainer.formats.files import (
    GEMMASCOPE_FILE,
    NATIVE_CFG,
    NATIVE_WEIGHTS,
    SAELENS_CFG,
    SAELENS_WEIGHTS,
    SAEFormatError,
)

if TYPE_CHECKING:
    import torch

    from trainer.formats.native import LoadedSAE, SAEMetadata
    from trainer.saes.base import SAE

SAEFormat = Literal["native", "gemmascope", "saelens"]
FORMATS: tuple[str, ...] = get_args(SAEFormat)
"""The SAE file formats jumpscope reads and writes (the CLI's and the store's choices)."""
FormatOrAuto = Literal[SAEFormat, "auto"]
"""What a reader accepts: a format, or auto to detect it from the file names."""


def detect_format(path: str | Path) -> SAEFormat:
    """Which of the three formats `path` holds, from its file names (and cfg.json if ambiguous)."""
    path = Path(path)
    looked_for = (
        f"a .npz file or a folder with {GEMMASCOPE_FILE} (gemmascope), {NATIVE_CFG} + {NATIVE_WEIGHTS} (native) "
        f"or {SAELENS_CFG} + {SAELENS_WEIGHTS} (saelens)"
    )
    if not path.exists():
        raise SAEFormatError(f"{path} does not exist (looked for {looked_for})")
    if path.is_file():
        if path.suffix == ".npz":
            return "gemmascope"
        raise SAEFormatError(f"{path} is a file but not a .npz file (looked for {looked_for})")
    if (path / GEMMASCOPE_FILE).is_file():
        return "gemmascope"
    has_native = (path / NATIVE_WEIGHTS).is_file()
    has_saelens = (path / SAELENS_WEIGHTS).is_file()
    if has_native != has_saelens:
        return "native" if has_native else "saelens"
    cfg_path = path / NATIVE_CFG  # both formats name it cfg.json
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            cfg = None
        if isinstance(cfg, dict):
            if "jumpscope_version" in cfg:
                return "native"
            if "metadata" in cfg or "hook_name" in cfg or "hook_point" in cfg:
                return "saelens"
    raise SAEFormatError(f"{path}: no known SAE format (looked for {looked_for})")


def load_sae(
    path: str | Path,
    format: SAEFormat | Literal["auto"] = "auto",
    *,
    meta: SAEMetadata | None = None,
    device: str | torch.device = "cpu",
) -> LoadedSAE:
    """Load an SAE in any supported format; `meta` is only used by gemmascope (which has none)."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "native":
        from trainer.formats.native import load_native

        return load_native(path, device)
    if fmt == "gemmascope":
        from trainer.formats.gemmascope import load_gemmascope

        return load_gemmascope(path, meta=meta, device=device)
    if fmt == "saelens":
        from trainer.formats.saelens import load_saelens

        return load_saelens(path, device=device)
    raise SAEFormatError(f"unknown SAE format {format!r} (allowed: auto, {', '.join(FORMATS)})")


def save_sae(path: str | Path, sae: SAE, meta: SAEMetadata, format: SAEFormat) -> Path:
    """Write an inference-form SAE in the given format; returns what was written."""
    if format == "native":
        from trainer.formats.native import save_native

        return save_native(path, sae, meta)
    if format == "gemmascope":
        from trainer.formats.gemmascope import save_gemmascope

        return save_gemmascope(path, sae)
    if format == "saelens":
        from trainer.formats.saelens import save_saelens

        return save_saelens(path, sae, meta)
    raise SAEFormatError(f"unknown SAE format {format!r} (allowed: {', '.join(FORMATS)})")


__all__ = ["FORMATS", "SAEFormat", "detect_format", "load_sae", "save_sae"]
