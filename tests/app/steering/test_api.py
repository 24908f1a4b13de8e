"""POST /api/v1/saes/{sae}/steer and .../features/{index}/ablate through the real app, in-process encoder.

On SQLite and Postgres, the 'tiny' SAE of the shared store (a random JumpReLU on the tiny Gemma 2's
layer 1 residual stream): the documented properties end to end, every bad input a 422 (or 404 for an
unknown SAE or feature) with a message, and encode's token rule, rate limit and gate.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.auth.tokens import add_token, remove_tokens
from app.core.database import session_scope
from app.core.settings import Settings
from app.server import create_app
from tests.app.conftest import D_SAE
from tests.app.steering.conftest import PROMPT, STEER, ablate_url, lens_feature, plain_greedy, prompt_ids
from trainer.lm.models import LoadedModel
from trainer.lm.sites import harvest


def client_for(shared_index: Any, tmp_path: Path, **settings: Any) -> TestClient:
    url, _, _, folder = shared_index
    base: dict[str, Any] = dict(database_url=url, data_dir=folder / "data", runs_dir=tmp_path / "runs",
                                device="cpu", encode_max_tokens=64, encode_window_ms=1.0)  # fmt: skip
    return TestClient(create_app(Settings(**{**base, **settings})), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(shared_index: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with client_for(shared_index, tmp_path_factory.mktemp("steer")) as c:
        yield c


def silent_features(client: TestClient, text: str) -> list[int]:
    """Features that fire nowhere on `text` after BOS (through the encode API)."""
    reply = client.post("/api/v1/saes/tiny/encode", json={"text": text, "include_bos": False})
    assert reply.status_code == 200, reply.text
    fired = {a["index"] for row in reply.json()["activations"] for a in row}
    return [i for i in range(D_SAE) if i not in fired]


def test_the_endpoints_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/api/v1/saes/{sae}/steer"]
    assert "post" in paths["/api/v1/saes/{sae}/features/{index}/ablate"]


def test_no_interventions_is_the_models_own_generation(client: TestClient, tiny_lm: LoadedModel) -> None:
    reply = client.post(STEER, json={"prompt": PROMPT, "interventions": [], "max_new_tokens": 20})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["steered"] == body["baseline"] and body["seed"] is None and body["sae"] == "tiny"
    base = body["baseline"]
    assert base["token_ids"] == plain_greedy(tiny_lm, PROMPT, 20)
    assert len(base["tokens"]) == len(base["logprobs"]) == len(base["token_ids"])
    assert all(lp <= 0 for lp in base["logprobs"]) and base["finish_reason"] in ("stop", "length")
    assert base["text"] == tiny_lm.tokenizer.decode(base["token_ids"], skip_special_tokens=True)
    assert body["prompt_tokens"][0] == "<bos>" and body["steered_from"] == 1
    assert len(body["prompt_tokens"]) == len(prompt_ids(tiny_lm))


def test_a_clamp_to_the_current_value_steers_nothing(client: TestClient) -> None:
    silent = silent_features(client, PROMPT)
    assert silent, "some feature of the tiny SAE should be silent on the prompt"
    # on the prompt (every position but BOS) the feature is 0: clamping it there to 0 changes nothing
    body = {"prompt": PROMPT, "interventions": [{"feature": silent[0], "clamp": 0.0}], "max_new_tokens": 1}
    reply = client.post(STEER, json=body).json()
    assert reply["steered"]["token_ids"] == reply["baseline"]["token_ids"]
    assert reply["steered"]["logprobs"] == pytest.approx(reply["baseline"]["logprobs"], abs=1e-6)
    moved = client.post(STEER, json={**body, "interventions": [{"feature": silent[0], "clamp": 200.0}]}).json()
    assert moved["steered"]["logprobs"] != pytest.approx(moved["baseline"]["logprobs"], abs=1e-3)


def test_a_large_strength_brings_the_logit_lens_token(
    client: TestClient, tiny_lm: LoadedModel, shared_index: Any
) -> None:
    feature, token = lens_feature(tiny_lm, shared_index[2])
    body = {"prompt": PROMPT, "interventions": [{"feature": feature, "strength": 100.0}], "max_new_tokens": 1,
            "positions": "from_prompt_end"}  # fmt: skip
    reply = client.post(STEER, json=body).json()
    assert reply["steered"]["token_ids"] == [token] and reply["baseline"]["token_ids"] != [token]
    assert reply["steered_from"] == len(reply["prompt_tokens"]) - 1


def test_sampling_repeats_with_its_seed(client: TestClient) -> None:
    body = {"prompt": PROMPT, "interventions": [{"feature": 3, "strength": 20.0}], "max_new_tokens": 8,
            "temperature": 1.0, "seed": 11}  # fmt: skip
    first, again = client.post(STEER, json=body).json(), client.post(STEER, json=body).json()
    assert first == again and first["seed"] == 11
    drawn = client.post(STEER, json={**body, "seed": None}).json()
    assert drawn["seed"] is not None
    assert client.post(STEER, json={**body, "seed": drawn["seed"]}).json() == drawn


def test_ablating_a_silent_feature_changes_nothing(client: TestClient) -> None:
    silent = silent_features(client, PROMPT)
    reply = client.post(ablate_url(silent[0]), json={"text": PROMPT})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["feature"] == silent[0] and body["ablated_from"] == 1
    deltas = [p["next_delta"] for p in body["positions"]]
    assert deltas[:-1] == [0.0] * (len(deltas) - 1) and deltas[-1] is None
    assert all(not p["promoted"] and not p["suppressed"] for p in body["positions"])
    assert body["promoted"] == [] and body["suppressed"] == []


def test_ablating_a_firing_feature(client: TestClient, tiny_lm: LoadedModel, shared_index: Any) -> None:
    sae = shared_index[2]
    ids = prompt_ids(tiny_lm)
    with torch.no_grad():
        f = sae.encode(harvest(tiny_lm.model, torch.tensor([ids]), None, 1, "resid")[0])  # (T, d_sae)
    feature = int((f[1:] > 0).sum(0).argmax())
    reply = client.post(ablate_url(feature), json={"text": PROMPT, "top_tokens": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    positions = body["positions"]
    assert [p["token_id"] for p in positions] == ids
    assert [p["activation"] for p in positions] == pytest.approx((f[:, feature] + 0.0).tolist(), abs=1e-5)
    assert any(p["next_delta"] for p in positions[:-1])
    assert 0 < len(body["promoted"]) <= 3 and all(s["delta"] < 0 for s in body["promoted"])
    assert all(s["delta"] > 0 for s in body["suppressed"])
    first = next(t for t in range(1, len(ids)) if f[t, feature] > 0)
    assert all(p["next_delta"] == 0.0 for p in positions[:first])  # causal: nothing before it first fires
    assert all(p["next_logprob"] <= 0 for p in positions[:-1])


BAD_STEER: list[tuple[dict[str, Any], str]] = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": "a\x00b"}, "prompt"),
    ({"prompt": "word " * 100}, "over the limit of 64 tokens"),
    ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "hi", "max_new_tokens": 129}, "max_new_tokens"),
    ({"prompt": "hi", "max_new_tokens": 2.5}, "max_new_tokens"),
    ({"prompt": "hi", "temperature": -0.1}, "temperature"),
    ({"prompt": "hi", "temperature": 5.1}, "temperature"),
    ({"prompt": "hi", "temperature": True}, "temperature"),
    ({"prompt": "hi", "seed": -1}, "seed"),
    ({"prompt": "hi", "seed": 2**32}, "seed"),
    ({"prompt": "hi", "seed": "7"}, "seed"),
    ({"prompt": "hi", "positions": "some"}, "positions"),
    ({"prompt": "hi", "interventions": [{"feature": 0}]}, "exactly one of strength"),
    ({"prompt": "hi", "interventions": [{"feature": 0, "strength": 1.0, "clamp": 1.0}]}, "exactly one of strength"),
    ({"prompt": "hi", "interventions": [{"feature": -1, "strength": 1.0}]}, "feature"),
    ({"prompt": "hi", "interventions": [{"feature": D_SAE, "strength": 1.0}]}, f"has {D_SAE} features"),
    ({"prompt": "hi", "interventions": [{"feature": 0, "strength": 1e6}]}, "strength"),
    ({"prompt": "hi", "interventions": [{"feature": 0, "clamp": -1e6}]}, "clamp"),
    ({"prompt": "hi", "interventions": [{"feature": 0, "strength": "big"}]}, "strength"),
    ({"prompt": "hi", "interventions": [{"feature": 0, "strength": 1.0, "layer": 3}]}, "layer"),
    ({"prompt": "hi", "interventions": [{"feature": 0, "strength": 1.0}] * 17}, "interventions"),
    ({"prompt": "hi", "interventions": {"feature": 0}}, "interventions"),
    ({"prompt": "hi", "model": "gpt2"}, "model"),
]


@pytest.mark.parametrize(("body", "says"), BAD_STEER, ids=[f"steer-{i}" for i in range(len(BAD_STEER))])
def test_bad_steer_input_is_422_with_a_message(client: TestClient, body: dict[str, Any], says: str) -> None:
    reply = client.post(STEER, json=body)
    assert reply.status_code == 422, reply.text
    assert says in reply.json()["detail"]


def test_bad_bodies_that_are_not_json_objects(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    for raw, says in [(b'{"prompt": "hi", "interventions": [{"feature": 0, "strength": NaN}]}', "strength"),
                      (b'{"prompt": "hi", "temperature": Infinity}', "temperature"),
                      (b"[1, 2]", "object"), (b"{", "JSON")]:  # fmt: skip
        reply = client.post(STEER, content=raw, headers=headers)
        assert reply.status_code == 422 and says in reply.json()["detail"], (raw, reply.text)
    reply = client.post(ablate_url(0), content=b'{"text": 5}', headers=headers)
    assert reply.status_code == 422 and "text" in reply.json()["detail"]


def test_prompt_and_continuation_must_fit_the_context(shared_index: Any, tmp_path: Path) -> None:
    with client_for(shared_index, tmp_path, encode_max_tokens=1024) as client:  # the tiny model's context: 256
        reply = client.post(STEER, json={"prompt": "word " * 80, "max_new_tokens": 128})
        assert reply.status_code == 422 and "context of 256 tokens" in reply.json()["detail"]
        reply = client.post(STEER, json={"prompt": "word " * 300, "max_new_tokens": 1})
        assert reply.status_code == 422 and "over the limit of 256 tokens" in reply.json()["detail"]


def test_bad_ablate_input(client: TestClient) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "text"), ({"text": ""}, "text"), ({"text": "word " * 100}, "over the limit of 64"),
        ({"text": "hi", "top_tokens": 0}, "top_tokens"), ({"text": "x" * 20_001}, "text"),
        ({"text": "hi", "top_tokens": 51}, "top_tokens"), ({"text": "hi", "feature": 3}, "feature"),
    ]  # fmt: skip
    for body, says in bad:
        reply = client.post(ablate_url(0), json=body)
        assert reply.status_code == 422 and says in reply.json()["detail"], (body, reply.text)
    for index in (D_SAE, -1, 10**12):
        reply = client.post(ablate_url(index), json={"text": "hi"})
        assert reply.status_code == 404 and f"no feature {index}" in reply.json()["detail"]
    assert client.post(ablate_url("abc"), json={"text": "hi"}).status_code == 422


def test_unknown_saes_are_404(client: TestClient) -> None:
    for name in ("nope", "NOPE", "x" * 300):
        steer = client.post(f"/api/v1/saes/{name}/steer", json={"prompt": "hi"})
        ablate = client.post(f"/api/v1/saes/{name}/features/0/ablate", json={"text": "hi"})
        assert steer.status_code == ablate.status_code == 404 and "no SAE named" in steer.json()["detail"]


# --- encode's limits apply --------------------------------------------------------------------------------------------


@pytest.fixture
def token(shared_index: Any) -> Iterator[str]:
    engine = shared_index[1]
    with session_scope(engine) as session:
        made = add_token(session, "steerer")
    yield made
    with session_scope(engine) as session:
        remove_tokens(session, "steerer")


def test_the_token_rule_of_encode_applies(shared_index: Any, tmp_path: Path, token: str) -> None:
    with client_for(shared_index, tmp_path, encode_requires_token=True) as client:
        for url, body in ((STEER, {"prompt": "hi", "max_new_tokens": 1}), (ablate_url(0), {"text": "hi"})):
            missing = client.post(url, json=body)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            good = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
            assert good.status_code == 200, good.text


def test_the_rate_limit_is_counted_with_encode(shared_index: Any, tmp_path: Path) -> None:
    with client_for(shared_index, tmp_path, encode_rate_limit="2/minute") as client:
        assert client.post("/api/v1/saes/tiny/encode", json={"text": "hi"}).status_code == 200
        assert client.post(STEER, json={"prompt": "hi", "max_new_tokens": 1}).status_code == 200
        over = client.post(ablate_url(0), json={"text": "hi"})
        assert over.status_code == 429 and "(2/minute)" in over.json()["detail"]


def test_a_full_gate_answers_429(shared_index: Any, tmp_path: Path) -> None:
    with client_for(shared_index, tmp_path, encode_max_concurrent=1, encode_max_waiting=0) as client:
        replies: list[httpx.Response] = []

        def post() -> None:
            body = {"prompt": PROMPT, "max_new_tokens": 128, "interventions": [{"feature": 1, "strength": 2.0}]}
            replies.append(client.post(STEER, json=body))

        threads = [threading.Thread(target=post) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = sorted(r.status_code for r in replies)
    assert set(statuses) <= {200, 429} and statuses[0] == 200 and statuses[-1] == 429, statuses
    assert "busy" in next(r for r in replies if r.status_code == 429).json()["detail"]
