"""What each SAE format's files are called, and the error every loader raises (torch-free).

Format detection and the CLI read these without importing torch; the loaders and writers
(native.py, gemmascope.py, saelens.py) import them from here.
"""

from __future__ import annotations

NATIVE_CFG = "cfg.json"
"""Native folder: architecture, shapes and metadata (JSON)."""
NATIVE_WEIGHTS = "sae.safetensors"
"""Native folder: the inference-form tensors (float32)."""
GEMMASCOPE_FILE = "params.npz"
"""Gemma Scope: one .npz of W_enc, W_dec, b_enc, b_dec, threshold (no metadata)."""
SAELENS_CFG = "cfg.json"
"""SAELens folder: its config (v6 with nested metadata, or older flat ones)."""
SAELENS_WEIGHTS = "sae_weights.safetensors"
"""SAELens folder: the tensors in SAELens' naming."""
SAELENS_SCALER = "activation_scaler.json"
"""SAELens training checkpoint: the input scaling factor, when it normalised activations."""


class SAEFormatError(ValueError):
    """An SAE file or folder that cannot be loaded, with the reason."""


__all__ = [
    "GEMMASCOPE_FILE",
    "NATIVE_CFG",
    "NATIVE_WEIGHTS",
    "SAELENS_CFG",
    "SAELENS_SCALER",
    "SAELENS_WEIGHTS",
    "SAEFormatError",
]
