"""SAE files: native folder, Gemma Scope params.npz and SAELens folder (all inference form).

Every loader checks names, shapes, dtypes and finiteness and raises `SAEFormatError`
naming exactly what is wrong. Writers replace files atomically (temp file + rename), so a
crash mid-write never leaves a half-written SAE behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from trainer.saes import SAE, build_sae
from trainer.training.config import ARCHITECTURES, SAEConfig

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


def atomic_write_bytes(path: Path, write: Callable[[Path], object]) -> None:
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
    cfg.update({k: v for k, v in meta.extra.items() if k not in cfg})  # extras never override the core
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


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file; SAEFormatError if it is missing or unreadable."""
    if not path.is_file():
        raise SAEFormatError(f"{path.parent}: no {path.name}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise SAEFormatError(f"{path}: not a readable safetensors file ({err})") from err


def load_native(folder: str | Path, device: str | torch.device = "cpu") -> LoadedSAE:
    """Load a native SAE folder, checking every tensor against cfg.json."""
    folder = Path(folder)
    cfg = read_native_cfg(folder)
    weights = folder / NATIVE_WEIGHTS
    tensors = read_safetensors(weights)
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


# -- format dispatch ---------------------------------------------------------------------
SAEFormat = Literal["native", "gemmascope", "saelens"]
FORMATS: tuple[str, ...] = ("native", "gemmascope", "saelens")


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
        return load_native(path, device)
    if fmt == "gemmascope":
        return load_gemmascope(path, meta=meta, device=device)
    if fmt == "saelens":
        return load_saelens(path, device=device)
    raise SAEFormatError(f"unknown SAE format {format!r} (allowed: auto, {', '.join(FORMATS)})")


def save_sae(path: str | Path, sae: SAE, meta: SAEMetadata, format: SAEFormat) -> Path:
    """Write an inference-form SAE in the given format; returns what was written."""
    if format == "native":
        return save_native(path, sae, meta)
    if format == "gemmascope":
        return save_gemmascope(path, sae)
    if format == "saelens":
        return save_saelens(path, sae, meta)
    raise SAEFormatError(f"unknown SAE format {format!r} (allowed: {', '.join(FORMATS)})")


def _require_inference_form(sae: SAE, fmt: str) -> None:
    if sae.cfg.use_pre_enc_bias:
        raise SAEFormatError(f"save_{fmt} takes the inference form: call sae.fold(scale) first")


def _cpu_tensors(sae: SAE) -> dict[str, Tensor]:
    return {name: t.detach().float().cpu().contiguous() for name, t in sae.inference_tensors().items()}


# -- Gemma Scope params.npz --------------------------------------------------------------
GEMMASCOPE_FILE = "params.npz"
GEMMASCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _gemmascope_file(path: Path) -> Path:
    return path if path.suffix == ".npz" else path / GEMMASCOPE_FILE


def save_gemmascope(path: str | Path, sae: SAE) -> Path:
    """Write a JumpReLU SAE as a Gemma Scope params.npz (a folder, or a path ending in .npz).

    Gemma Scope files carry no metadata: keep it elsewhere (e.g. a native folder).
    """
    if sae.cfg.architecture != "jumprelu":
        raise SAEFormatError(
            f"Gemma Scope params.npz holds JumpReLU SAEs only; this SAE is {sae.cfg.architecture!r} "
            "(use the native or saelens format)"
        )
    _require_inference_form(sae, "gemmascope")
    target = _gemmascope_file(Path(path))
    tensors = _cpu_tensors(sae)
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
    _drop_unit_scaling_factor(tensors, str(target))
    unexpected = sorted(set(tensors) - set(GEMMASCOPE_KEYS))
    if unexpected:
        raise SAEFormatError(
            f"{target}: unexpected array(s) {', '.join(unexpected)} (a Gemma Scope file holds exactly "
            f"{', '.join(GEMMASCOPE_KEYS)})"
        )
    d_in, d_sae = _dims_from_w_enc(tensors, str(target))
    sae = sae_from_tensors(tensors, SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu"), str(target))
    return LoadedSAE(sae.to(device), meta if meta is not None else SAEMetadata())


def _dims_from_w_enc(tensors: dict[str, Tensor], where: str) -> tuple[int, int]:
    """(d_in, d_sae) from W_enc [d_in, d_sae]; the other shapes are checked against these."""
    if "W_enc" not in tensors:
        raise SAEFormatError(f"{where}: missing tensor(s) W_enc (found: {', '.join(sorted(tensors)) or 'none'})")
    shape = tuple(tensors["W_enc"].shape)
    if len(shape) != 2 or 0 in shape:
        raise SAEFormatError(f"{where}: W_enc has shape {shape}, expected (d_in, d_sae)")
    return int(shape[0]), int(shape[1])


def _drop_unit_scaling_factor(tensors: dict[str, Tensor], where: str) -> None:
    """Remove an all-ones `scaling_factor`; any other value changes the SAE and is refused."""
    factor = tensors.pop("scaling_factor", None)
    if factor is not None and not bool(torch.all(factor == 1)):
        raise SAEFormatError(
            f"{where}: scaling_factor is not all ones (min {float(factor.min()):g}, max {float(factor.max()):g}); "
            "a fine-tuning scaling factor is not supported"
        )


# -- SAELens folder ----------------------------------------------------------------------
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"
SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as metadata.sae_lens_version: the first SAELens release that reads this cfg.json layout."""

TO_SAELENS_ARCH = {"jumprelu": "jumprelu", "relu": "standard", "topk": "topk", "gated": "gated"}
FROM_SAELENS_ARCH = {v: k for k, v in TO_SAELENS_ARCH.items()}
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
    _require_inference_form(sae, "saelens")
    folder = Path(folder)
    arch = sae.cfg.architecture
    tensors = _cpu_tensors(sae)
    if arch == "gated":
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
    if arch == "topk":
        cfg["k"] = sae.cfg.k
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["architecture"] = TO_SAELENS_ARCH[arch]
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


def _saelens_arch(cfg: dict[str, Any], where: str) -> str:
    """Our architecture name for a SAELens cfg (pre-6 configs default to standard / topk)."""
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    arch = cfg.get("architecture")
    if arch is None:
        arch = "topk" if activation == "topk" else "standard"
    if arch not in FROM_SAELENS_ARCH:
        raise SAEFormatError(
            f"{where}: unsupported SAELens architecture {arch!r} (supported: {', '.join(FROM_SAELENS_ARCH)})"
        )
    if arch == "standard" and activation not in (None, "relu"):
        raise SAEFormatError(f"{where}: unsupported activation_fn {activation!r} for a standard SAE (only relu)")
    return FROM_SAELENS_ARCH[arch]


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
    tensors: dict[str, Tensor], arch: str, *, apply_b_dec: bool, scale: float, rescale_by_dec_norm: bool
) -> dict[str, Tensor]:
    """SAELens encoding -> ours (pre = x @ W_enc + b_enc), exactly, computed in float64.

    SAELens: pre = (s*x - b_dec*[apply]) @ W_enc + b_enc, then (topk) pre *= ||W_dec[i]||,
    x_hat = (f / ||W_dec[i]||*[rescale] @ W_dec + b_dec) / s. Latents f stay SAELens' own.
    """
    t = {k: v.double() for k, v in tensors.items()}
    norms = t["W_dec"].norm(dim=1) if rescale_by_dec_norm else torch.ones_like(t["b_enc"])  # (d_sae,)
    shift = t["b_dec"] @ t["W_enc"] if apply_b_dec else torch.zeros_like(t["b_enc"])  # (d_sae,)
    if arch == "gated":
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
    arch = _saelens_arch(cfg, where)
    scale = _saelens_input_scale(folder, cfg, where)
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        kwargs_k = (cfg.get("activation_fn_kwargs") or {}).get("k")
        k = int(cfg.get("k") or kwargs_k or 0) if arch == "topk" else 32
        sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise SAEFormatError(f"{where}: invalid d_in / d_sae / k ({err})") from err
    weights = folder / SAELENS_WEIGHTS
    tensors = read_safetensors(weights)
    if arch == "gated" and "b_gate" in tensors:
        tensors["b_enc"] = tensors.pop("b_gate")
    if arch == "jumprelu" and "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()  # older SAELens checkpoints
    _drop_unit_scaling_factor(tensors, str(weights))
    unexpected = sorted(set(tensors) - set(expected_shapes(sae_cfg)))
    if unexpected:
        raise SAEFormatError(f"{weights}: unexpected tensor(s) {', '.join(unexpected)} for a {arch} SAE")
    checked = check_tensors(tensors, sae_cfg, str(weights))
    folded = _fold_saelens(
        checked,
        arch,
        apply_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        scale=scale,
        rescale_by_dec_norm=arch == "topk" and bool(cfg.get("rescale_acts_by_decoder_norm", False)),
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
