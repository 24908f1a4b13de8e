"""One text, several SAEs of one model, one forward pass: LocalEncoder.encode_multi, the worker's
/v1/encode/multi through RemoteEncoder, and POST /api/v1/encode/multi on the real app."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.catalog.saes import import_sae
from app.core.database import session_scope
from app.encoding.local import LocalEncoder
from app.encoding.remote import RemoteEncoder
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget
from app.encoding.worker_api import create_worker_app
from tests.app.conftest import random_jumprelu
from tests.app.test_api import make_client
from trainer.formats.native import SAEMetadata, save_native

TEXT = "the quick brown fox jumps over the lazy dog, and sparse features fire"

# (name, layer, site, d_in) on the tiny Gemma 2 (3 layers, d_model 64, attn 128)
SITES = [("m-l0-resid", 0, "resid", 64), ("m-l1-attn", 1, "attn", 128), ("m-l1-resid", 1, "resid", 64),
         ("m-l0-mlp", 0, "mlp", 64)]  # fmt: skip


@pytest.fixture(scope="module")
def sae_root(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Native SAE folders for SITES (and one trained without BOS), all in one data folder."""
    root = tmp_path_factory.mktemp("multi-saes")
    for seed, (name, layer, site, d_in) in enumerate(SITES):
        meta = SAEMetadata(model=str(tiny_model_dir), layer=layer, site=site)
        save_native(root / name, random_jumprelu(d_in, seed=seed), meta)
    save_native(root / "m-nobos", random_jumprelu(64, seed=9),
                SAEMetadata(model=str(tiny_model_dir), layer=1, site="resid", prepend_bos=False))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def targets(sae_root: Path, tiny_model_dir: Path) -> dict[str, SAETarget]:
    out = {name: SAETarget(name=name, path=str(sae_root / name), model=str(tiny_model_dir), layer=layer, site=site)
           for name, layer, site, _ in SITES}  # fmt: skip
    out["m-nobos"] = SAETarget(name="m-nobos", path=str(sae_root / "m-nobos"), model=str(tiny_model_dir), layer=1,
                               site="resid", prepend_bos=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def encoder() -> Iterator[LocalEncoder]:
    enc = LocalEncoder(device="cpu", max_loaded=8)
    yield enc
    enc.close()


@contextmanager
def layer_calls() -> Iterator[list[str]]:
    """Every forward call of a causal LM or one of its decoder layers (by layer index), process-wide, while open."""
    calls: list[str] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        kind = type(module).__name__
        if kind.endswith("DecoderLayer"):
            calls.append(f"layer{module.self_attn.layer_idx}")  # type: ignore[union-attr]
        elif kind.endswith("ForCausalLM"):
            calls.append("model")

    def pre(module: torch.nn.Module, args: Any) -> None:
        if type(module).__name__.endswith("ForCausalLM"):
            calls.append("model-start")

    handles = [torch.nn.modules.module.register_module_forward_hook(hook),
               torch.nn.modules.module.register_module_forward_pre_hook(pre)]  # fmt: skip
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def test_several_saes_share_one_forward_pass_stopped_after_the_deepest_layer(
    encoder: LocalEncoder, targets: dict[str, SAETarget]
) -> None:
    chosen = [targets[name] for name, *_ in SITES]
    for t in chosen:  # load everything first, so that only the encode itself is counted
        encoder.encode_sync(t, ["load"])
    before = encoder.batches_run
    with layer_calls() as calls:
        got = asyncio.run(encoder.encode_multi(chosen, TEXT, top_k=5))
    # the model starts once, layers 0 and 1 run once, layer 2 and the head never (the deepest site: layer 1 output)
    assert calls == ["model-start", "layer0", "layer1"], calls
    assert encoder.batches_run == before + 1
    assert [len(e.tokens) for e in got] == [len(got[0].tokens)] * len(chosen)
    for t, enc in zip(chosen, got, strict=True):  # each SAE sees exactly what it sees when encoded alone
        assert enc == encoder.encode_sync(t, [TEXT], top_k=5)[0], t.name
    inside = [targets["m-l0-resid"], targets["m-l1-attn"]]
    with layer_calls() as calls:
        asyncio.run(encoder.encode_multi(inside, TEXT))
    assert calls == ["model-start", "layer0"], calls  # stopped inside layer 1, at its o_proj input


def test_bad_requests_are_encode_errors(encoder: LocalEncoder, targets: dict[str, SAETarget], tmp_path: Path) -> None:
    a, b = targets["m-l0-resid"], targets["m-l1-resid"]
    other_model = SAETarget(name="elsewhere", path=a.path, model=str(tmp_path), layer=0, site="resid")
    cases: list[tuple[list[SAETarget], str, dict[str, Any], str]] = [
        ([], TEXT, {}, "no SAE given"),
        ([a, a], TEXT, {}, "SAE 'm-l0-resid' is named twice"),
        ([a, other_model], TEXT, {}, "read different models .*compare SAEs of one model"),
        ([a, targets["m-nobos"]], TEXT, {}, "differ in whether a BOS token starts the text"),
        ([a, b], "", {}, "the text is empty"),
        ([a, b], TEXT, {"top_k": 0}, "top_k must be at least 1"),
        ([a, b], TEXT, {"top_k": 41}, r"top_k must be between 1 and 40 \(the narrowest SAE's width\)"),
        ([a, b], "word " * 2000, {}, "over the limit of 1024 tokens per text"),
    ]
    for chosen, text, options, message in cases:
        with pytest.raises(EncodeError, match=message):
            asyncio.run(encoder.encode_multi(chosen, text, **options))


def test_the_reply_cap_holds_for_all_saes_together(targets: dict[str, SAETarget]) -> None:
    a, b = targets["m-l0-resid"], targets["m-l1-resid"]
    enc = LocalEncoder(device="cpu", max_loaded=2, max_values=10_000)
    try:
        alone = [enc.encode_sync(t, [TEXT])[0] for t in (a, b)]
        values = [sum(len(row) for row in e.activations) for e in alone]
        assert all(v > 0 for v in values)
        enc.max_values = max(values) + 1  # each alone fits, both together do not
        with pytest.raises(EncodeError, match="more than .* values"):
            asyncio.run(enc.encode_multi([a, b], TEXT))
    finally:
        enc.close()


def test_more_saes_than_the_encoder_keeps_loaded_still_share_one_pass(targets: dict[str, SAETarget]) -> None:
    chosen = [targets[name] for name, *_ in SITES]
    enc = LocalEncoder(device="cpu", max_loaded=1)
    try:
        got = asyncio.run(enc.encode_multi(chosen, TEXT, top_k=3))
        assert enc.batches_run == 1 and len(got) == len(chosen)
        assert got[2] == enc.encode_sync(chosen[2], [TEXT], top_k=3)[0]
    finally:
        enc.close()


def test_through_the_worker_the_same_results_and_errors(
    encoder: LocalEncoder, targets: dict[str, SAETarget], sae_root: Path
) -> None:
    app = create_worker_app(encoder, targets.get, data_dir=sae_root)
    remote = RemoteEncoder("http://worker", transport=httpx.ASGITransport(app=app))
    chosen = [targets["m-l0-resid"], targets["m-l1-attn"]]
    unknown = SAETarget(**{**chosen[0].__dict__, "name": "unknown"})

    async def run() -> Any:
        got = await remote.encode_multi(chosen, TEXT, top_k=4, include_bos=False)
        with pytest.raises(EncodeError, match="differ in whether a BOS token"):
            await remote.encode_multi([chosen[0], targets["m-nobos"]], TEXT)
        with pytest.raises(EncodeError, match="saes: List should have at most 8 items"):
            await remote.encode_multi([chosen[0]] * 9, TEXT)
        with pytest.raises(EncoderUnavailable, match="worker at http://worker has one of the SAEs 'm-l0-resid', "):
            await remote.encode_multi([chosen[0], unknown], TEXT)
        await remote.aclose()
        return got

    got = asyncio.run(run())
    assert got == asyncio.run(encoder.encode_multi(chosen, TEXT, top_k=4, include_bos=False))
    assert got[0].tokens[0] != "<bos>"


# --- the REST API on the real app and store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(shared_index: Any, sae_root: Path) -> Iterator[TestClient]:
    """The app over the shared store, which also holds the SAEs of SITES (imported into its data folder)."""
    url, engine, _, folder = shared_index
    with session_scope(engine) as session:
        for name, *_ in SITES:
            import_sae(session, sae_root / name, data_dir=folder / "data", name=name)
    with make_client(url, folder) as c:
        yield c


def test_rest_api_encodes_one_text_with_several_saes(client: TestClient) -> None:
    names = ["tiny", "m-l0-resid", "m-l1-attn"]
    reply = client.post("/api/v1/encode/multi", json={"saes": names, "text": TEXT, "top_k": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["tokens"][0] == "<bos>" and len(body["tokens"]) == len(body["token_ids"]) == len(body["special"])
    assert [r["sae"] for r in body["results"]] == names
    for r in body["results"]:
        assert len(r["activations"]) == len(body["tokens"])
        assert all(len(row) <= 3 for row in r["activations"])
    # the same numbers as the single-SAE endpoint
    single = client.post("/api/v1/saes/m-l1-attn/encode", json={"text": TEXT, "top_k": 3}).json()
    assert single["activations"] == body["results"][2]["activations"]
    assert any(row for row in body["results"][0]["activations"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"saes": ["tiny", "nope"], "text": TEXT}, 404, "no SAE named 'nope'"),
        ({"saes": [], "text": TEXT}, 422, "saes"),
        ({"saes": ["tiny"] * 9, "text": TEXT}, 422, "at most 8"),
        ({"saes": ["tiny", "tiny"], "text": TEXT}, 422, "named twice"),
        ({"saes": ["tiny", "m-l0-resid"], "text": ""}, 422, "text"),
        ({"saes": ["tiny", "m-l0-resid"], "text": "word " * 200}, 422, "over the limit of 64 tokens"),
        ({"saes": ["tiny"], "text": TEXT, "top_k": 0}, 422, "top_k"),
        ({"saes": ["tiny"], "text": TEXT, "extra": 1}, 422, "extra"),
        ({"saes": "tiny", "text": TEXT}, 422, "saes"),
    ],
)
def test_rest_api_bad_input_is_a_clear_4xx(client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    reply = client.post("/api/v1/encode/multi", json=body)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]
