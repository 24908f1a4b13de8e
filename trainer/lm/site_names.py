"""The sites an SAE can read (interface.md), named without importing torch (the CLI and the API list them)."""

from __future__ import annotations

from typing import Literal, get_args

Site = Literal["resid", "mlp", "attn"]
"""resid: a decoder layer's output; mlp: its MLP output (after the post-feedforward norm); attn: the
per-head attention outputs concatenated (the input of o_proj). trainer.lm.sites hooks them."""
SITES: tuple[str, ...] = get_args(Site)
