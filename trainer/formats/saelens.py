"""SAELens SAE folders: cfg.json + sae_weights.safetensors, read and written as sae_lens 6 does.

Our architectures map to SAELens' through each registry spec's `saelens_name` (relu is
SAELens' "standard"); an architecture without one cannot be written here. SAELens' own
architecture names key its file conventions below: "gated" stores b_enc as b_gate, "topk"
may rescale latents by decoder norm, older "jumprelu" files hold log_threshold.
Loading folds SAELens' input handling (apply_b_dec_to_input, a scalar activation scaler)
into our inference form exactly, so the result encodes raw inputs to SAELens' own latents.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from trainer.atomic import atomic_write_bytes, atomic_write_text
from trainer.formats.files import SAELENS_CFG, SAELENS_SCALER, SAELENS_WEIGHTS, SAEFormatError
from trainer.formats.native import LoadedSAE, SAEMetadata
from trainer.formats.tensors import (
    check_tensors,
    cpu_tensors,
    drop_unit_scaling_factor,
    expected_shapes,
    read_safetensors,
    require_inference_form,
    sae_from_tensors,
)
from trainer.saes import registry
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.version import jumpscope_version

SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as metadata.sae_lens_version: the first SAELens release that reads this cfg.json layout."""

SITE_HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "attn.hook_z"}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_mlp_out|attn\.hook_z)$")
# Keys SAELens keeps in `metadata` (sae_lens.loading.pretrained_sae_loaders.LLM_METADATA_KEYS).
SAELENS_METADATA_KEYS = frozenset(
    {
        "model_name",
        "hook_name",
        "model_class_name",
        "hook_head_index",
        "model_from_pretrained_kwargs",
        "prepend_bos",
        "exclude_special_tokens",
        "neuronpedia_id",
        "context_size",
        "seqpos_slice",
        "dataset_path",
        "sae_lens_version",
        "sae_lens_training_version",
        "hook_name_out",
        "hook_head_index_out",
        "hf_hook_name",
        "hf_hook_name_out",
    }
)
_LEGACY_RENAMES: dict[str, str] = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
_BOOKKEEPING = frozenset({"sae_lens_version", "sae_lens_training_version", "jumpscope_version"})
_OUR_METADATA = frozenset({"normalization_scale", "tokens_trained", "site", "layer"})


def saelens_architectures() -> dict[str, str]:
    """SAELens architecture name -> ours, for every registered architecture that SAELens has."""
    return {spec.saelens_name: spec.name for spec in registry.specs() if spec.saelens_name is not None}


def hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook of one of our sites (jumprelu.md §4)."""
    if site not in SITE_HOOKS:
        raise SAEFormatError(f"unknown site {site!r} (allowed: {', '.join(SITE_HOOKS)})")
    return f"blocks.{layer}.{SITE_HOOKS[site]}"


def parse_hook_name(name: str) -> tuple[str, int] | None:
    """(site, layer) of a TransformerLens hook name, or None if it is not one of our sites."""
    match = _HOOK_RE.match(name)
    if match is None:
        return None
    site = next(s for s, hook in SITE_HOOKS.items() if hook == match.group(2))
    return site, int(match.group(1))


def save_saelens(folder: str | Path, sae: SAE, meta: SAEMetadata) -> Path:
    """Write cfg.json + sae_weights.safetensors that `sae_lens.SAE.load_from_disk` loads.

    Our inference form has no pre-encoder bias and no input normalisation, so the folder says
    apply_b_dec_to_input=false and normalize_activations="none".
    """
    require_inference_form(sae, "saelens")
    spec = sae.cfg.spec
    if spec.saelens_name is None:
        raise SAEFormatError(
            f"SAELens has no {spec.name!r} architecture (it has {', '.join(saelens_architectures())}): "
            "use the native format"
        )
    folder = Path(folder)
    sl_arch = spec.saelens_name
    tensors = cpu_tensors(sae)
    if sl_arch == "gated":
        tensors["b_gate"] = tensors.pop("b_enc")
    metadata: dict[str, Any] = {k: v for k, v in meta.extra.items() if k not in _OUR_METADATA | _BOOKKEEPING}
    if meta.site is not None and meta.layer is not None:
        metadata["hook_name"] = hook_name(meta.site, meta.layer)
    else:  # no TransformerLens hook to name: keep what we know under our own keys
        metadata.update({k: v for k, v in (("site", meta.site), ("layer", meta.layer)) if v is not None})
    metadata.update(
        model_name=meta.model,
        prepend_bos=meta.prepend_bos,
        context_size=meta.context_size,
        dataset_path=meta.dataset,
        sae_lens_version=SAELENS_FORMAT_VERSION,
        sae_lens_training_version=None,
        normalization_scale=meta.normalization_scale,
        tokens_trained=meta.tokens_trained,
        jumpscope_version=jumpscope_version(),
    )
    cfg: dict[str, Any] = {  # key order as sae_lens' own SAEConfig.to_dict
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if meta.site == "attn" else "none",
        "metadata": metadata,
    }
    if spec.knob == "k":
        cfg["k"] = sae.cfg.k
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["architecture"] = sl_arch
    text = json.dumps(cfg, indent=2, default=str) + "\n"  # serialise before writing anything
    atomic_write_bytes(folder / SAELENS_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(folder / SAELENS_CFG, text)
    return folder


def read_saelens_cfg(folder: Path) -> dict[str, Any]:
    """cfg.json of a SAELens folder, v6 (nested metadata) or older (flat, hook_point)."""
    if not folder.is_dir():
        raise SAEFormatError(f"{folder} is not a folder")
    cfg_path = folder / SAELENS_CFG
    if not cfg_path.is_file():
        raise SAEFormatError(
            f"{folder}: no {SAELENS_CFG} (a SAELens SAE folder holds {SAELENS_CFG} and {SAELENS_WEIGHTS})"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{cfg_path}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise SAEFormatError(f"{cfg_path}: missing field '{key}'")
    return {_LEGACY_RENAMES.get(str(k), str(k)): v for k, v in cfg.items()}


def _saelens_arch(cfg: dict[str, Any], where: str) -> tuple[str, str]:
    """(SAELens' architecture name, ours) for a SAELens cfg (pre-6 configs default to standard / topk)."""
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    sl_arch = cfg.get("architecture")
    if sl_arch is None:
        sl_arch = "topk" if activation == "topk" else "standard"
    ours = saelens_architectures()
    if sl_arch not in ours:
        raise SAEFormatError(f"{where}: unsupported SAELens architecture {sl_arch!r} (supported: {', '.join(ours)})")
    if sl_arch == "standard" and activation not in (None, "relu"):
        raise SAEFormatError(f"{where}: unsupported activation_fn {activation!r} for a standard SAE (only relu)")
    return sl_arch, ours[sl_arch]


def _saelens_input_scale(folder: Path, cfg: dict[str, Any], where: str) -> float:
    """s such that SAELens encodes s * x; 1 unless a training checkpoint's scaler can be folded."""
    norm = cfg.get("normalize_activations", "none")
    if norm is None or norm is False or norm == "none":
        return 1.0
    if norm is True:  # pre-6 boolean
        norm = "expected_average_only_in"
    if norm == "expected_average_only_in":
        scaler = _read_scaler(folder / SAELENS_SCALER)
        if scaler is not None:
            return scaler
        raise SAEFormatError(
            f"{where}: normalize_activations is 'expected_average_only_in' but the folder has no "
            f"{SAELENS_SCALER} with a scaling_factor, so the input scale cannot be folded in"
        )
    raise SAEFormatError(
        f"{where}: normalize_activations is {norm!r}; only 'none' (or a foldable "
        "'expected_average_only_in') can be loaded, this one depends on each input"
    )


def _read_scaler(path: Path) -> float | None:
    """scaling_factor of a SAELens activation_scaler.json, if it is a plain scalar (no whitening)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    factor = data.get("scaling_factor")
    if data.get("has_whitening") or not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0:
        raise SAEFormatError(f"{path}: expected a positive scalar scaling_factor and no whitening, got {data}")
    return float(factor)


def _fold_saelens(
    tensors: dict[str, Tensor], sl_arch: str, *, apply_b_dec: bool, scale: float, rescale_by_dec_norm: bool
) -> dict[str, Tensor]:
    """SAELens encoding -> ours (pre = x @ W_enc + b_enc), exactly, computed in float64.

    SAELens: pre = (s*x - b_dec*[apply]) @ W_enc + b_enc, then (topk) pre *= ||W_dec[i]||,
    x_hat = (f / ||W_dec[i]||*[rescale] @ W_dec + b_dec) / s. Latents f stay SAELens' own.
    """
    t = {k: v.double() for k, v in tensors.items()}
    norms = t["W_dec"].norm(dim=1) if rescale_by_dec_norm else torch.ones_like(t["b_enc"])  # (d_sae,)
    shift = t["b_dec"] @ t["W_enc"] if apply_b_dec else torch.zeros_like(t["b_enc"])  # (d_sae,)
    if sl_arch == "gated":  # the magnitude path reads the same shifted input
        t["b_mag"] = t["b_mag"] - shift * t["r_mag"].exp()
    t["b_enc"] = (t["b_enc"] - shift) * norms
    t["W_enc"] = t["W_enc"] * (scale * norms)  # (d_in, d_sae)
    t["W_dec"] = t["W_dec"] / (scale * norms[:, None])  # (d_sae, d_in)
    t["b_dec"] = t["b_dec"] / scale
    return {k: v.float() for k, v in t.items()}


def load_saelens(folder: str | Path, *, device: str | torch.device = "cpu") -> LoadedSAE:
    """Load a SAELens folder (jumprelu, standard = relu, topk, gated) in our inference form.

    apply_b_dec_to_input is folded into b_enc (b_enc' = b_enc - b_dec @ W_enc), so the result
    encodes raw inputs to the same latents as SAELens.
    """
    folder = Path(folder)
    cfg = read_saelens_cfg(folder)
    where = str(folder / SAELENS_CFG)
    sl_arch, arch = _saelens_arch(cfg, where)
    scale = _saelens_input_scale(folder, cfg, where)
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        kwargs_k = (cfg.get("activation_fn_kwargs") or {}).get("k")
        k = int(cfg.get("k") or kwargs_k or 0) if registry.get(arch).knob == "k" else 32
        sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k)
    except (TypeError, ValueError) as err:
        raise SAEFormatError(f"{where}: invalid d_in / d_sae / k ({err})") from err
    weights = folder / SAELENS_WEIGHTS
    tensors = read_safetensors(weights)
    if sl_arch == "gated" and "b_gate" in tensors:
        tensors["b_enc"] = tensors.pop("b_gate")
    if sl_arch == "jumprelu" and "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()  # older SAELens checkpoints
    drop_unit_scaling_factor(tensors, str(weights))
    unexpected = sorted(set(tensors) - set(expected_shapes(sae_cfg)))
    if unexpected:
        raise SAEFormatError(f"{weights}: unexpected tensor(s) {', '.join(unexpected)} for a {arch} SAE")
    checked = check_tensors(tensors, sae_cfg, str(weights))
    folded = _fold_saelens(
        checked,
        sl_arch,
        apply_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        scale=scale,
        rescale_by_dec_norm=sl_arch == "topk" and bool(cfg.get("rescale_acts_by_decoder_norm", False)),
    )
    sae = sae_from_tensors(folded, sae_cfg, str(weights)).to(device)
    return LoadedSAE(sae, _saelens_meta(cfg, scale))


def _saelens_meta(cfg: dict[str, Any], scale: float) -> SAEMetadata:
    """Our metadata from a SAELens cfg: nested `metadata` over flat (pre-6) top-level keys."""
    md = {k: v for k, v in cfg.items() if k in SAELENS_METADATA_KEYS}
    nested = cfg.get("metadata")
    if isinstance(nested, dict):
        md.update({_LEGACY_RENAMES.get(str(k), str(k)): v for k, v in nested.items()})
    site, layer = md.pop("site", None), md.pop("layer", None)
    hook = md.get("hook_name")
    parsed = parse_hook_name(hook) if isinstance(hook, str) and md.get("hook_head_index") is None else None
    if parsed is not None:
        site, layer = parsed
        md.pop("hook_name")
    meta = SAEMetadata(
        model=md.pop("model_name", None),
        layer=None if layer is None else int(layer),
        site=site,
        dataset=md.pop("dataset_path", None),
        context_size=md.pop("context_size", None),
        prepend_bos=bool(md.pop("prepend_bos", True)),
        normalization_scale=float(md.pop("normalization_scale", 1.0)) / scale,
        tokens_trained=int(md.pop("tokens_trained", 0)),
    )
    meta.extra = {k: v for k, v in md.items() if k not in _BOOKKEEPING and v is not None}
    return meta


__all__ = [
    "SAELENS_FORMAT_VERSION",
    "SITE_HOOKS",
    "hook_name",
    "load_saelens",
    "parse_hook_name",
    "read_saelens_cfg",
    "saelens_architectures",
    "save_saelens",
]
