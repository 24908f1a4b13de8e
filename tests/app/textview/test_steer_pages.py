"""The steering page (/saes/NAME/steer) and the dashboard's ablation, through the real app, store and
tiny Gemma 2, without JavaScript: both continuations as the steer API gives them, the link that
reproduces a run, "steer with this", feature search, and bad input as clear messages, never a 500."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import SENTENCE
from tests.app.test_api import make_client

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def client(text_store: Any) -> Iterator[TestClient]:
    url, _, _, folder = text_store
    with make_client(url, folder) as c:
        yield c


def get(client: TestClient, path: str, status: int = 200, **params: Any) -> str:
    reply = client.get(f"{path}?{urlencode(params, doseq=True)}" if params else path)
    notices = re.findall(r'class="notice[^"]*"[^>]*>(.*?)</', reply.text, flags=re.S)
    assert reply.status_code == status, (reply.status_code, notices)
    assert reply.headers["content-type"].startswith("text/html")
    return str(reply.text)


def continuation(page: str, which: str) -> list[str]:
    """The new tokens of one column ('baseline' or 'steered'), as text."""
    match = re.search(rf'<p class="ex continuation" id="{which}-text">(.*?)</p>', page, flags=re.S)
    assert match, f"no {which} continuation on the page"
    return [html_lib.unescape(t) for t in re.findall(r'<span class="t new"[^>]*>(.*?)</span>', match.group(1))]


def shown(tokens: list[str]) -> list[str]:
    """Tokens as the page shows them (app.web.tokens.display_token)."""
    return [(t.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u2192") or "\u2205") for t in tokens]


def busiest(client: TestClient) -> tuple[int, float]:
    """The feature of 'tiny' that fires most in the index, and its max activation."""
    items = client.get("/api/v1/saes/tiny/features", params={"sort": "frequency", "order": "desc", "limit": 1}).json()
    return int(items["items"][0]["index"]), float(items["items"][0]["max_activation"])


def test_both_continuations_are_the_apis_and_the_link_reproduces_the_run(client: TestClient) -> None:
    feature, _ = busiest(client)
    params = {"prompt": PROMPT, "f": feature, "kind": "add", "v": "300", "max_new_tokens": 6, "run": 1}
    page = get(client, "/saes/tiny/steer", **params)
    body = {"prompt": PROMPT, "interventions": [{"feature": feature, "strength": 300.0}], "max_new_tokens": 6}
    api = client.post("/api/v1/saes/tiny/steer", json=body).json()
    assert continuation(page, "baseline") == shown(api["baseline"]["tokens"])
    assert continuation(page, "steered") == shown(api["steered"]["tokens"])
    assert api["steered"]["tokens"] != api["baseline"]["tokens"], "a strength of 300 should change the tiny model"
    assert re.search(r"Generated \d+ and \d+ tokens\.", page)
    link = html_lib.unescape(re.search(r'<a id="run-link" href="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert "run=1" in link and f"f={feature}" in link
    again = get(client, link)
    assert continuation(again, "steered") == continuation(page, "steered")
    assert "POST /api/v1/saes/tiny/steer" in page  # the same run as an API call


def test_no_intervention_gives_the_models_own_continuation_twice(client: TestClient) -> None:
    page = get(client, "/saes/tiny/steer", prompt=PROMPT, max_new_tokens=5, run=1)
    assert continuation(page, "baseline") == continuation(page, "steered")
    assert len(continuation(page, "baseline")) >= 1


def test_a_sampled_run_is_reproduced_by_its_link(client: TestClient) -> None:
    feature, _ = busiest(client)
    page = get(client, "/saes/tiny/steer", prompt=PROMPT, f=feature, v="50", temperature="1.5", max_new_tokens=8, run=1)
    seed = re.search(r"\(seed (\d+)\)", page)
    assert seed, "a sampled run names its seed"
    link = html_lib.unescape(re.search(r'<a id="run-link" href="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert f"seed={seed.group(1)}" in link
    again = get(client, link)
    for which in ("baseline", "steered"):
        assert continuation(again, which) == continuation(page, which)


def test_steer_with_this_comes_from_the_dashboard_with_a_default_strength(client: TestClient) -> None:
    feature, top = busiest(client)
    dashboard = get(client, f"/saes/tiny/features/{feature}")
    assert f'href="/saes/tiny/steer?f={feature}"' in dashboard
    page = get(client, "/saes/tiny/steer", f=feature)
    assert f'name="f" value="{feature}"' in page
    assert f'name="v" value="{format(4 * top, ".3g")}"' in page
    assert 'id="steer-result"' not in page  # editing the form runs nothing


def test_search_adds_and_remove_drops_features(client: TestClient) -> None:
    page = get(client, "/saes/tiny/steer", prompt=PROMPT, fq="fox")
    added = [int(i) for i in re.findall(r'<button type="submit" name="add" value="(\d+)"', page)]
    assert added, "searching the top examples for 'fox' should find features of the tiny SAE"
    page = get(client, "/saes/tiny/steer", prompt=PROMPT, fq="fox", add=added[0])
    assert f'name="f" value="{added[0]}"' in page and f">{PROMPT}</textarea>" in page
    page = get(
        client, "/saes/tiny/steer", prompt=PROMPT, f=[added[0], 3], kind=["add", "clamp"], v=["1", "2"], remove=0
    )
    assert re.findall(r'name="f" value="(\d+)"', page) == ["3"]
    assert '<option value="clamp" selected>' in page
    assert "No feature of tiny matches" in get(client, "/saes/tiny/steer", fq="zzzqqq")


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"prompt": PROMPT, "f": "abc", "v": "1"}, 422, "the feature must be a feature index"),
        ({"prompt": PROMPT, "f": "1", "v": "strong"}, 422, "the strength must be a number"),
        ({"prompt": PROMPT, "f": "999", "v": "1"}, 422, "out of range"),
        ({"prompt": PROMPT, "f": "1", "v": "1e9"}, 422, "interventions.0.strength"),
        ({"prompt": PROMPT, "temperature": "hot"}, 422, "temperature"),
        ({"prompt": PROMPT, "max_new_tokens": "1000"}, 422, "max_new_tokens"),
        ({"prompt": "  "}, 422, "The prompt is empty"),
        ({"prompt": "word " * 300}, 422, "tokens"),
    ],
)
def test_bad_input_is_a_clear_message(client: TestClient, params: dict[str, Any], status: int, message: str) -> None:
    page = get(client, "/saes/tiny/steer", status, run=1, **params)
    assert message in html_lib.unescape(page)
    assert 'id="steer-form"' in page and 'id="steer-result"' not in page


def test_unknown_sae_is_a_404_page(client: TestClient) -> None:
    assert "no SAE named" in html_lib.unescape(get(client, "/saes/nope/steer", 404, prompt=PROMPT, run=1))


# --- the dashboard's ablation ----------------------------------------------------------------------------------------


def test_ablation_on_the_dashboard_is_the_apis_next_to_the_logit_lens(client: TestClient) -> None:
    feature, _ = busiest(client)
    page = get(client, f"/saes/tiny/features/{feature}", ablate=SENTENCE)
    api = client.post(f"/api/v1/saes/tiny/features/{feature}/ablate", json={"text": SENTENCE}).json()
    section = re.search(r'<section id="ablation".*?</section>\s*(?=<section id="rating"|$)', page, flags=re.S)
    assert section, "no ablation section"
    text = html_lib.unescape(section.group(0))
    active = [p for p in api["positions"] if p["activation"] > 0]
    assert f"fires on {len(active)} of {len(api['positions'])} tokens" in text
    pair = r'<td><code class="tok">([^<]*)</code></td><td class="num (?:pos|neg)">([+-][\d.]+)</td>\s*</tr>'
    measured = re.findall(pair, section.group(0))
    promoted = [(t["token"], f"{t['delta']:+.3f}") for t in api["promoted"]]
    assert [(html_lib.unescape(t), v) for t, v in measured][: len(promoted)] == [
        (shown([t])[0], v) for t, v in promoted
    ]
    assert "logit lens" in text and len(re.findall(r"<tr>", section.group(0))) > len(active)


def test_ablating_a_feature_that_never_fires_changes_nothing(client: TestClient) -> None:
    text = "lazy dog"
    encoded = client.post("/api/v1/saes/tiny/encode", json={"text": text, "features": list(range(40))}).json()
    silent = [d["index"] for d in encoded["features"] if not any(v > 0 for v in d["values"])]
    assert silent, "some feature of the tiny SAE should be silent on two words"
    page = html_lib.unescape(get(client, f"/saes/tiny/features/{silent[0]}", ablate=text))
    said = re.search(
        rf"#{silent[0]} does not fire on this text: zeroing it changes nothing \(largest change (\S+) nats\)", page
    )
    assert said and abs(float(said.group(1))) < 1e-4
    assert 'id="ablate-positions"' not in page


def test_ablation_errors_are_messages_on_the_dashboard(client: TestClient) -> None:
    page = html_lib.unescape(get(client, "/saes/tiny/features/1", ablate="word " * 300))
    assert "Could not ablate:" in page and "tokens" in page
