"""Gemma Scope's params.npz: W_enc, W_dec, b_enc, b_dec and threshold of a JumpReLU SAE.

The format of the Gemma Scope releases (Lieberum et al. 2024): one .npz, already in
inference form, with no metadata. Only an architecture whose registry spec says
`gemmascope=True` can be written as one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainer.atomic import atomic_write_bytes
from trainer.formats.files import GEMMASCOPE_FILE, SAEFormatError
from trainer.formats.native import LoadedSAE, SAEMetadata
from trainer.formats.tensors import cpu_tensors, drop_unit_scaling_factor, require_inference_form, sae_from_tensors
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig

GEMMASCOPE_ARCH = "jumprelu"
"""The architecture a params.npz holds: Gemma Scope released JumpReLU SAEs only."""
GEMMASCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
"""The arrays of a params.npz, exactly."""


def _gemmascope_file(path: Path) -> Path:
    return path if path.suffix == ".npz" else path / GEMMASCOPE_FILE


def save_gemmascope(path: str | Path, sae: SAE) -> Path:
    """Write a JumpReLU SAE as a Gemma Scope params.npz (a folder, or a path ending in .npz).

    Gemma Scope files carry no metadata: keep it elsewhere (e.g. a native folder).
    """
    if not sae.cfg.spec.gemmascope:
        raise SAEFormatError(
            f"Gemma Scope params.npz holds JumpReLU SAEs only; this SAE is {sae.cfg.architecture!r} "
            "(use the native or saelens format)"
        )
    require_inference_form(sae, "gemmascope")
    target = _gemmascope_file(Path(path))
    tensors = cpu_tensors(sae)
    arrays = {name: tensors[name].numpy().astype(np.float32) for name in GEMMASCOPE_KEYS}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would append .npz to a name
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    atomic_write_bytes(target, write)
    return target


def load_gemmascope(
    path: str | Path, *, meta: SAEMetadata | None = None, device: str | torch.device = "cpu"
) -> LoadedSAE:
    """Load a Gemma Scope params.npz (the file, or a folder holding it) as a JumpReLU SAE.

    Accepts lowercase w_enc / w_dec and drops an all-ones `scaling_factor` (as SAELens does).
    """
    target = _gemmascope_file(Path(path))
    if not target.is_file():
        raise SAEFormatError(f"{Path(path)}: no {GEMMASCOPE_FILE} (a Gemma Scope SAE is one params.npz file)")
    try:
        with np.load(target, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except Exception as err:  # zipfile, pickle and format errors all mean the same thing here
        raise SAEFormatError(f"{target}: not a readable .npz file ({err})") from err
    tensors: dict[str, Tensor] = {}
    for key, array in arrays.items():
        name = "W_" + key[2:] if key.startswith("w_") else key
        if name in tensors:
            raise SAEFormatError(f"{target}: both {name} and {key} present")
        try:
            tensors[name] = torch.from_numpy(array.copy())
        except TypeError as err:
            raise SAEFormatError(f"{target}: {key} has unsupported dtype {array.dtype}") from err
    drop_unit_scaling_factor(tensors, str(target))
    unexpected = sorted(set(tensors) - set(GEMMASCOPE_KEYS))
    if unexpected:
        raise SAEFormatError(
            f"{target}: unexpected array(s) {', '.join(unexpected)} (a Gemma Scope file holds exactly "
            f"{', '.join(GEMMASCOPE_KEYS)})"
        )
    d_in, d_sae = _dims_from_w_enc(tensors, str(target))
    sae = sae_from_tensors(tensors, SAEConfig(d_in=d_in, d_sae=d_sae, architecture=GEMMASCOPE_ARCH), str(target))
    return LoadedSAE(sae.to(device), meta if meta is not None else SAEMetadata())


def _dims_from_w_enc(tensors: dict[str, Tensor], where: str) -> tuple[int, int]:
    """(d_in, d_sae) from W_enc [d_in, d_sae]; the other shapes are checked against these."""
    if "W_enc" not in tensors:
        raise SAEFormatError(f"{where}: missing tensor(s) W_enc (found: {', '.join(sorted(tensors)) or 'none'})")
    shape = tuple(tensors["W_enc"].shape)
    if len(shape) != 2 or 0 in shape:
        raise SAEFormatError(f"{where}: W_enc has shape {shape}, expected (d_in, d_sae)")
    return int(shape[0]), int(shape[1])


__all__ = ["GEMMASCOPE_ARCH", "GEMMASCOPE_KEYS", "load_gemmascope", "save_gemmascope"]
