"""The encoders (app.encoding.local and .remote) and the worker API (app.encoding.worker_api) on the tiny Gemma 2."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from app.encoding.encoder import make_encoder
from app.encoding.local import LocalEncoder
from app.encoding.remote import RemoteEncoder
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget, TextEncoding
from trainer.formats.native import SAEMetadata, save_native
from trainer.formats.tensors import sae_from_tensors
from trainer.lm.models import LoadedModel, load_model
from trainer.lm.sites import harvest
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig

D_IN, D_SAE, LAYER = 64, 40, 1

SHORT = "Sparse is better than dense."
LONG = [
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features in language models.",
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. "
    "Flat is better than nested. Readability counts. Errors should never pass silently.",
]
TEXTS = [
    "Hi",
    SHORT,
    "Readability counts.",
    *LONG,
    "A feature fires on some tokens and not on others.",
    "numbers 0123456789, and more words: the, of, and, to, in.",
    '<script>alert("x")</script> "quoted" & <b>bold</b>',
]


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir))


def make_sae(tiny: LoadedModel, seed: int) -> SAE:
    """A random JumpReLU SAE whose thresholds make about a third of the features fire on TEXTS."""
    gen = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5
    tensors = {
        "W_enc": W_enc,
        "W_dec": torch.randn(D_SAE, D_IN, generator=gen),
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.1,
        "b_dec": torch.randn(D_IN, generator=gen) * 0.1,
        "threshold": torch.zeros(D_SAE),
    }
    sae = sae_from_tensors(tensors, SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="jumprelu"), "test")
    ids = tiny.tokenizer(" ".join(TEXTS), return_tensors="pt")["input_ids"]  # (1, T)
    x = harvest(tiny.model, ids, None, LAYER, "resid")[0]  # (T, d_in)
    with torch.no_grad():
        pre = sae.pre_acts(x)  # (T, d_sae)
    tensors["threshold"] = pre.quantile(0.65, dim=0).clamp_min(0.01)  # (d_sae,)
    return sae_from_tensors(tensors, SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="jumprelu"), "test")


@pytest.fixture(scope="module")
def sae_dirs(tiny: LoadedModel, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two native SAE folders for layer 1 resid of the tiny model."""
    root = tmp_path_factory.mktemp("encoder-saes")
    meta = SAEMetadata(model=str(tiny_model_dir), layer=LAYER, site="resid")
    return [save_native(root / f"sae{seed}", make_sae(tiny, seed), meta) for seed in (1, 2)]


@pytest.fixture(scope="module")
def target(sae_dirs: list[Path], tiny_model_dir: Path) -> SAETarget:
    return SAETarget(name="tiny-l1", path=str(sae_dirs[0]), model=str(tiny_model_dir), layer=LAYER, site="resid")


@pytest.fixture(scope="module")
def encoder() -> Any:
    enc = LocalEncoder(device="cpu", min_fill=0.0)  # any lengths share a pass: padding is exercised
    yield enc
    enc.close()


def direct(tiny: LoadedModel, sae_dir: Path, text: str, prepend_bos: bool = True) -> tuple[list[int], torch.Tensor]:
    """Token ids and (T, d_sae) features computed the trainer's way, one text, no padding."""
    from trainer.formats.native import load_native

    sae = load_native(sae_dir).sae
    ids = tiny.tokenizer(text, add_special_tokens=prepend_bos)["input_ids"]
    x = harvest(tiny.model, torch.tensor([ids]), None, LAYER, "resid")[0]  # (T, d_in)
    with torch.no_grad():
        return ids, sae.encode(x)  # (T, d_sae)


def densify(enc: TextEncoding) -> torch.Tensor:
    """(T, d_sae) from the sparse pairs."""
    out = torch.zeros(len(enc.token_ids), D_SAE)
    for t, row in enumerate(enc.activations):
        for i, v in row:
            out[t, i] = v
    return out


def assert_same(a: TextEncoding, b: TextEncoding) -> None:
    """Same tokens and (to float tolerance) the same features."""
    assert a.tokens == b.tokens
    assert a.token_ids == b.token_ids
    assert a.special == b.special
    assert_close(densify(a), densify(b), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# numbers


def test_same_numbers_as_the_trainer(encoder: LocalEncoder, target: SAETarget, tiny: LoadedModel) -> None:
    ids, f = direct(tiny, Path(target.path), LONG[0])
    [enc] = encoder.encode_sync(target, [LONG[0]], features=list(range(D_SAE)))
    assert enc.token_ids == ids
    assert_close(densify(enc), f, rtol=1e-6, atol=1e-6)
    assert enc.dense is not None
    assert_close(torch.tensor([enc.dense[i] for i in range(D_SAE)]).T, f, rtol=1e-6, atol=1e-6)
    active = (f != 0).float().mean().item()
    assert 0.1 < active < 0.7  # the SAE is neither dead nor dense: the checks below mean something


def test_padding_does_not_change_results(encoder: LocalEncoder, target: SAETarget, tiny: LoadedModel) -> None:
    """A short text batched with longer ones (right padding) gives the numbers it gives alone."""
    before = encoder.batches_run
    results = encoder.encode_sync(target, [SHORT, *LONG])
    assert encoder.batches_run == before + 1  # one forward pass for all three
    for text, enc in zip([SHORT, *LONG], results, strict=True):
        ids, f = direct(tiny, Path(target.path), text)
        assert enc.token_ids == ids
        assert_close(densify(enc), f, rtol=1e-5, atol=1e-5)


def test_sparse_output_is_highest_first_and_top_k_cuts(
    encoder: LocalEncoder, target: SAETarget, tiny: LoadedModel
) -> None:
    [full] = encoder.encode_sync(target, [LONG[1]])
    [cut] = encoder.encode_sync(target, [LONG[1]], top_k=3)
    _, f = direct(tiny, Path(target.path), LONG[1])
    for t, row in enumerate(full.activations):
        values = [v for _, v in row]
        assert values == sorted(values, reverse=True)
        assert all(v > 0 for v in values)
        assert sorted(i for i, _ in row) == torch.nonzero(f[t]).flatten().tolist()  # exactly the active ones
        assert cut.activations[t] == row[:3]
    assert any(len(row) > 3 for row in full.activations)
    assert cut.dense is None and full.dense is None


def test_dense_features(encoder: LocalEncoder, target: SAETarget, tiny: LoadedModel) -> None:
    features = [5, 0, 39, 5]
    [enc] = encoder.encode_sync(target, [SHORT], features=features, top_k=1)
    _, f = direct(tiny, Path(target.path), SHORT)
    assert enc.dense is not None and sorted(enc.dense) == [0, 5, 39]
    for i in features:
        assert_close(torch.tensor(enc.dense[i]), f[:, i], rtol=1e-6, atol=1e-6)
    [empty] = encoder.encode_sync(target, [SHORT], features=[])
    assert empty.dense == {}


def test_tokens_and_special_flags(encoder: LocalEncoder, target: SAETarget, tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    [enc] = encoder.encode_sync(target, [SHORT])
    assert enc.token_ids == tok(SHORT)["input_ids"]
    assert enc.token_ids[0] == tok.bos_token_id and enc.token_ids.count(tok.bos_token_id) == 1  # BOS once
    assert enc.tokens == [tok.decode([i]) for i in enc.token_ids]
    assert "".join(enc.tokens[1:]) == SHORT
    assert enc.special == [True] + [False] * (len(enc.token_ids) - 1)
    assert len(enc.activations) == len(enc.token_ids)
    # A literal "<bos>" in user text is text, as in training (special-token strings are split).
    [lit] = encoder.encode_sync(target, ["a <bos> b"])
    assert lit.special.count(True) == 1 and "".join(lit.tokens[1:]) == "a <bos> b"


def test_include_bos_false_drops_the_first_position(encoder: LocalEncoder, target: SAETarget) -> None:
    [full] = encoder.encode_sync(target, [SHORT], features=[1, 2])
    [nobos] = encoder.encode_sync(target, [SHORT], features=[1, 2], include_bos=False)
    assert nobos.tokens == full.tokens[1:]
    assert nobos.token_ids == full.token_ids[1:]
    assert nobos.special == full.special[1:] and not any(nobos.special)
    assert nobos.activations == full.activations[1:]
    assert nobos.dense == {i: v[1:] for i, v in (full.dense or {}).items()}


def test_sae_trained_without_bos(encoder: LocalEncoder, target: SAETarget, tiny: LoadedModel) -> None:
    no_bos = SAETarget(**{**target.__dict__, "prepend_bos": False})
    [enc] = encoder.encode_sync(no_bos, [SHORT])
    ids, f = direct(tiny, Path(target.path), SHORT, prepend_bos=False)
    assert enc.token_ids == ids and tiny.tokenizer.bos_token_id not in ids
    assert not any(enc.special)
    assert_close(densify(enc), f, rtol=1e-6, atol=1e-6)
    [same] = encoder.encode_sync(no_bos, [SHORT], include_bos=False)  # nothing to drop
    assert same.token_ids == ids


# ---------------------------------------------------------------------------------------------
# batching


def test_concurrent_encodes_are_batched(target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu", window_ms=50)
    try:
        alone = [enc.encode_sync(target, [text], top_k=5, features=[3]) for text in TEXTS]
        before_batches, before_texts = enc.batches_run, enc.texts_run

        async def many() -> list[list[TextEncoding]]:
            return await asyncio.gather(*(enc.encode(target, [text], top_k=5, features=[3]) for text in TEXTS))

        together = asyncio.run(many())
        assert enc.texts_run - before_texts == len(TEXTS)
        assert enc.batches_run - before_batches < len(TEXTS)
        for [mine], [ref] in zip(together, alone, strict=True):
            assert_same(mine, ref)
            assert mine.dense is not None and ref.dense is not None
            assert_close(torch.tensor(mine.dense[3]), torch.tensor(ref.dense[3]), rtol=1e-5, atol=1e-5)
    finally:
        enc.close()


def test_batches_respect_max_batch_texts(target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu", window_ms=3000, max_batch_texts=3, min_fill=0.0)
    try:
        alone = [enc.encode_sync(target, [t])[0] for t in TEXTS[:6]]  # also loads: the timing is about batching
        before = enc.batches_run

        async def many() -> list[list[TextEncoding]]:
            return await asyncio.gather(*(enc.encode(target, [t]) for t in TEXTS[:6]))

        start = time.perf_counter()
        results = asyncio.run(many())
        assert time.perf_counter() - start < 2.0  # a full batch starts at once, without waiting out the window
        assert enc.batches_run - before == 2  # two passes of three texts
        for [mine], ref in zip(results, alone, strict=True):
            assert_same(mine, ref)
    finally:
        enc.close()


def test_batching_off_runs_each_request_alone(target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu", window_ms=50, batching=False)
    try:

        async def many() -> list[list[TextEncoding]]:
            return await asyncio.gather(*(enc.encode(target, [text]) for text in TEXTS))

        results = asyncio.run(many())
        assert enc.batches_run == len(TEXTS)
        assert [r[0].token_ids for r in results] == [enc.encode_sync(target, [t])[0].token_ids for t in TEXTS]
    finally:
        enc.close()


def test_bad_request_does_not_fail_its_batch(target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu", window_ms=50)
    try:

        async def mixed() -> list[Any]:
            return list(
                await asyncio.gather(
                    enc.encode(target, [SHORT]), enc.encode(target, [SHORT], top_k=0), return_exceptions=True
                )
            )

        good, bad = asyncio.run(mixed())
        assert isinstance(good, list) and good[0].token_ids[0] == 2
        assert isinstance(bad, EncodeError)
    finally:
        enc.close()


def test_forward_passes_are_split_by_token_budget(encoder: LocalEncoder, target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu", max_batch_tokens=40)
    try:
        texts = [SHORT, LONG[1], SHORT]  # the long one (over 20 tokens) runs alone, the two short ones together
        results = enc.encode_sync(target, texts)
        assert (enc.batches_run, enc.texts_run) == (2, 3)
        for text, r in zip(texts, results, strict=True):
            assert_same(r, encoder.encode_sync(target, [text])[0])
    finally:
        enc.close()


def test_min_fill_keeps_short_texts_out_of_long_passes(encoder: LocalEncoder, target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu")  # min_fill 0.5: "Hi" (2 tokens) does not pad to LONG[1]'s length
    try:
        results = enc.encode_sync(target, ["Hi", LONG[1], LONG[0]])
        assert (enc.batches_run, enc.texts_run) == (2, 3)
        assert [r.token_ids for r in results] == [r.token_ids for r in encoder.encode_sync(target, ["Hi", *LONG[::-1]])]
    finally:
        enc.close()


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        ([], {}, "no text given"),
        ([""], {}, "the text is empty"),
        (["ok", ""], {}, "text 1 is empty"),
        (["word " * 40], {}, "over the limit of 30 tokens per text"),
        (["x"] * 5, {}, "too many texts: 5 given, the limit is 4"),
        (["ok"], {"top_k": 0}, "top_k must be at least 1, got 0"),
        (["ok"], {"top_k": D_SAE + 1}, f"top_k must be between 1 and {D_SAE}"),
        (["ok"], {"features": [0, D_SAE]}, f"feature index {D_SAE} is out of range: this SAE has {D_SAE} features"),
        (["ok"], {"features": [-1]}, f"(0 to {D_SAE - 1})"),
        (["ok"], {"features": ["3"]}, "features must be a list of integer feature indices"),
        (["ok"], {"top_k": 2.5}, "top_k must be an integer, got 2.5"),
    ],
)
def test_bad_input_is_an_encode_error(
    target: SAETarget, texts: list[str], kwargs: dict[str, Any], message: str
) -> None:
    enc = LocalEncoder(device="cpu", max_tokens=30, max_batch_texts=4)
    try:
        with pytest.raises(EncodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            enc.encode_sync(target, texts, **kwargs)
        with pytest.raises(EncodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            asyncio.run(enc.encode(target, texts, **kwargs))
    finally:
        enc.close()


def test_token_limit_names_the_count(target: SAETarget, tiny: LoadedModel) -> None:
    enc = LocalEncoder(device="cpu", max_tokens=10)
    try:
        n = len(tiny.tokenizer(LONG[0])["input_ids"])
        with pytest.raises(EncodeError, match=f"the text has {n} tokens \\(BOS included\\), over the limit of 10"):
            enc.encode_sync(target, [LONG[0]])
        assert enc.encode_sync(target, ["Hi"])[0].token_ids  # under the limit: fine
    finally:
        enc.close()


def test_unloadable_sae_or_model_is_unavailable(target: SAETarget, tmp_path: Path) -> None:
    """The folder comes from the database, not the user: a missing one is a 503 (EncoderUnavailable), not a 422."""
    enc = LocalEncoder(device="cpu")
    try:
        missing = SAETarget(**{**target.__dict__, "name": "gone", "path": str(tmp_path / "nowhere")})
        with pytest.raises(EncoderUnavailable, match=r"cannot load SAE 'gone': <path> is not a folder") as caught:
            enc.encode_sync(missing, ["hello"])
        assert str(tmp_path) not in str(caught.value)  # error texts reach callers: no host paths
        with pytest.raises(EncoderUnavailable, match="cannot load SAE 'gone'"):
            asyncio.run(enc.encode(missing, ["hello"]))
        bad_model = SAETarget(**{**target.__dict__, "model": str(tmp_path / "no-model")})
        with pytest.raises(EncoderUnavailable, match="cannot load model <path>") as caught:
            enc.encode_sync(bad_model, ["hello"])
        assert str(tmp_path) not in str(caught.value)
        bad_layer = SAETarget(**{**target.__dict__, "layer": 7})
        with pytest.raises(EncoderUnavailable, match="layer 7 is out of range"):
            enc.encode_sync(bad_layer, ["hello"])
        bad_site = SAETarget(**{**target.__dict__, "site": "attn"})  # attn is 128 wide, the SAE reads 64
        with pytest.raises(EncoderUnavailable, match="reads 64-wide activations, the attn site is 128 wide"):
            enc.encode_sync(bad_site, ["hello"])
        assert enc.loaded() == [] and enc.loaded_models() == []  # failures are not cached, nothing leaks
    finally:
        enc.close()


# ---------------------------------------------------------------------------------------------
# loading and the LRU


def test_lru_evicts_and_shares_models(target: SAETarget, sae_dirs: list[Path], tmp_path: Path) -> None:
    other = SAETarget(**{**target.__dict__, "name": "other", "path": str(sae_dirs[1])})
    enc = LocalEncoder(device="cpu", max_loaded=1)
    try:
        a = enc.encode_sync(target, [SHORT])[0]
        b = enc.encode_sync(other, [SHORT])[0]
        assert densify(a).ne(densify(b)).any()  # two different SAEs
        assert enc.loaded() == [(other.path, other.model)]  # the first one was evicted
        assert enc.model_loads == 1 and enc.sae_loads == 2  # the model was shared, not reloaded
        enc.encode_sync(target, [SHORT])  # evicted: loaded again
        assert enc.sae_loads == 3 and enc.loaded() == [(target.path, target.model)]
        # The same model under another name is another model; the first one goes when unused.
        link = tmp_path / "tiny-link"
        link.symlink_to(target.model)
        third = SAETarget(**{**target.__dict__, "name": "third", "model": str(link)})
        enc.encode_sync(third, [SHORT])
        assert enc.model_loads == 2 and enc.loaded_models() == [str(link)]
    finally:
        enc.close()

    enc2 = LocalEncoder(device="cpu", max_loaded=2)
    try:
        enc2.encode_sync(target, [SHORT])
        enc2.encode_sync(other, [SHORT])
        enc2.encode_sync(target, [SHORT])
        assert enc2.sae_loads == 2 and len(enc2.loaded()) == 2
        assert enc2.loaded()[-1] == (target.path, target.model)  # most recently used last
    finally:
        enc2.close()


def test_concurrent_first_requests_load_once(target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu")
    try:
        # Threads (encode_sync) and coroutines (encode) racing for the first load.
        errors: list[BaseException] = []

        def run() -> None:
            try:
                enc.encode_sync(target, [SHORT])
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=run) for _ in range(3)]

        async def both() -> None:
            await asyncio.gather(enc.encode(target, [SHORT]), enc.encode(target, [LONG[0]]))

        for th in threads:
            th.start()
        asyncio.run(both())
        for th in threads:
            th.join()
        assert not errors
        assert enc.sae_loads == 1 and enc.model_loads == 1
        assert enc.texts_run == 5
    finally:
        enc.close()


def test_health_and_make_encoder() -> None:
    local = make_encoder(None, device="cpu", max_loaded=3)
    assert isinstance(local, LocalEncoder) and local.max_loaded == 3
    assert asyncio.run(local.health()) == "ok"
    local.close()
    remote = make_encoder("http://127.0.0.1:1/")
    assert isinstance(remote, RemoteEncoder) and remote.base_url == "http://127.0.0.1:1"


# ---------------------------------------------------------------------------------------------
# the worker API and RemoteEncoder


def remote_for(encoder: LocalEncoder, *known: SAETarget) -> RemoteEncoder:
    """A RemoteEncoder talking to a worker app whose store holds `known` (their folders are its data folder)."""
    import httpx

    from app.encoding.worker_api import create_worker_app

    targets = {t.name: t for t in known}
    app = create_worker_app(encoder, targets.get, data_dir=Path(known[0].path).parent)
    return RemoteEncoder("http://worker", transport=httpx.ASGITransport(app=app))


def test_remote_gives_identical_results(encoder: LocalEncoder, target: SAETarget) -> None:
    remote = remote_for(encoder, target)

    async def run() -> tuple[list[TextEncoding], list[TextEncoding], str]:
        got = await remote.encode(target, TEXTS[:4], top_k=4, features=[0, 7], include_bos=False)
        again = await remote.encode(target, [SHORT])
        health = await remote.health()
        await remote.aclose()
        return got, again, health

    got, again, health = asyncio.run(run())
    assert got == encoder.encode_sync(target, TEXTS[:4], top_k=4, features=[0, 7], include_bos=False)
    assert again == encoder.encode_sync(target, [SHORT])
    assert health == "ok"


def test_remote_maps_errors(encoder: LocalEncoder, target: SAETarget, tmp_path: Path) -> None:
    missing = SAETarget(**{**target.__dict__, "name": "gone", "path": str(Path(target.path).parent / "nowhere")})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "gemma2", "hidden_size": "wide"')  # truncated JSON
    broken_model = SAETarget(**{**target.__dict__, "name": "other", "model": str(broken)})
    unknown = SAETarget(**{**target.__dict__, "name": "unknown"})
    remote = remote_for(encoder, target, missing, broken_model)

    async def run() -> None:
        with pytest.raises(EncodeError, match="^top_k: Input should be greater than or equal to 1$"):
            await remote.encode(target, [SHORT], top_k=0)
        with pytest.raises(EncodeError, match=f"^feature index {D_SAE} is out of range"):
            await remote.encode(target, [SHORT], features=[D_SAE])
        with pytest.raises(EncodeError, match="^texts.0: String should have at least 1 character$"):
            await remote.encode(target, [""])
        with pytest.raises(EncodeError, match="texts"):  # the worker's own request validation, also a 422
            await remote.encode(target, [None])  # type: ignore[list-item]
        with pytest.raises(EncoderUnavailable, match=r"worker at http://worker answered 503.*cannot load SAE 'gone'"):
            await remote.encode(missing, [SHORT])
        with pytest.raises(EncoderUnavailable, match=r"answered 503.*cannot load model <path>"):  # no host path
            await remote.encode(broken_model, [SHORT])
        with pytest.raises(EncoderUnavailable, match=r"worker at http://worker has no SAE named 'unknown'"):
            await remote.encode(unknown, [SHORT])

    asyncio.run(run())


def test_remote_without_a_worker_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = RemoteEncoder(f"http://127.0.0.1:{port}", timeout=5)
    target = SAETarget(name="x", path="/nowhere", model="tiny-gemma2", layer=1, site="resid")
    with pytest.raises(EncoderUnavailable, match=f"encoder worker at http://127.0.0.1:{port} is unreachable"):
        asyncio.run(remote.encode(target, ["hello"]))
    assert asyncio.run(remote.health()) == "unavailable"


def test_concurrent_http_requests_share_forward_passes(target: SAETarget) -> None:
    enc = LocalEncoder(device="cpu", window_ms=50, min_fill=0.0)
    remote = remote_for(enc, target)
    try:
        enc.encode_sync(target, [SHORT])  # load
        before = enc.batches_run

        async def many() -> list[list[TextEncoding]]:
            results = await asyncio.gather(*(remote.encode(target, [t]) for t in TEXTS))
            await remote.aclose()
            return list(results)

        results = asyncio.run(many())
        assert enc.batches_run - before < len(TEXTS)
        for [mine], text in zip(results, TEXTS, strict=True):
            assert_same(mine, enc.encode_sync(target, [text])[0])  # batched: equal to float tolerance
    finally:
        enc.close()


def test_closed_encoder_is_unavailable(target: SAETarget) -> None:
    for batching in (True, False):
        enc = LocalEncoder(device="cpu", batching=batching)
        enc.close()
        with pytest.raises(EncoderUnavailable, match="shut down"):
            asyncio.run(enc.encode(target, [SHORT]))
