"""The pages of automated explanations against the real app on the real store (SQLite, and Postgres when
TEST_DATABASE_URL is set), seeded through app.interp.store's save functions (test_explanations_api.seed): the
feature dashboard's explanation and scores, the feature table's explanation column (search, sort by score), the
per-SAE distributions with the random baseline overlaid as SVG, a sweep's scores per architecture on /compare,
and in headless Chromium the feature table sorting by a score."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.web.forms import RATER_COOKIE, cookie_value
from tests.app.conftest import jumpscope_serve
from tests.app.interp.test_explanations_api import WORD, Seeded, seed
from tests.app.test_api import make_client

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def seeded(shared_index: Any, tiny_model_dir: Path) -> tuple[Any, Seeded]:
    """The module's shared store (tiny indexed) with the API tests' explanations, baseline and sweep."""
    _, engine, _, folder = shared_index
    return shared_index, seed(engine, folder, tiny_model_dir)


@pytest.fixture(scope="module")
def client(seeded: tuple[Any, Seeded]) -> Iterator[TestClient]:
    (url, _, _, folder), _ = seeded
    with make_client(url, folder) as c:
        yield c


@pytest.fixture(scope="module")
def s(seeded: tuple[Any, Seeded]) -> Seeded:
    return seeded[1]


def page(client: TestClient, path: str, expect: int = 200, **params: Any) -> str:
    reply = client.get(path, params=params, headers={"accept": "text/html"})
    assert reply.status_code == expect, reply.text[:2000]
    return reply.text


def svgs(text: str) -> list[ET.Element]:
    """Every inline <svg> of a page, parsed (so each is well-formed XML)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", text, flags=re.S)]


def section(text: str, ident: str) -> str:
    found = re.search(rf'<section id="{ident}".*?</section>', text, flags=re.S)
    assert found is not None, ident
    return found.group(0)


def table_features(text: str) -> list[int]:
    """The feature indices of the SAE page's feature table, in row order."""
    body = re.search(r'<table class="data features">.*?<tbody>(.*?)</tbody>', text, flags=re.S)
    assert body is not None
    return [
        int(i) for i in re.findall(r'<tr[^>]*>\s*<td class="num"><a href="/saes/tiny/features/(\d+)"', body.group(1))
    ]


# --- the feature dashboard -------------------------------------------------------------------------------------------


def test_the_feature_page_shows_the_explanation_and_its_scores(client: TestClient, s: Seeded) -> None:
    text = section(page(client, f"/saes/tiny/features/{s.a}"), "explanation")
    newest = text.split('<details class="more-explanations">')[0]
    assert '<blockquote class="expl-text">&lt;b&gt;zebracorn&lt;/b&gt; &amp; friends</blockquote>' in newest
    assert "<strong>llm-b</strong> · prompt p1" in newest
    n = len(s.shown_a)
    assert f"explained from {n} examples ({n} of them on this page)" in newest
    sim = re.search(r'<tr data-score="simulation">(.*?)</tr>', newest, flags=re.S)
    assert sim is not None and ">0.50<" in sim.group(1)
    assert f"42 tokens: {len(s.scored_a)} held-out examples and 2 non-activating windows; 1 unreadable answer" in (
        " ".join(sim.group(1).split()))  # fmt: skip
    det = re.search(r'<tr data-score="detection">(.*?)</tr>', newest, flags=re.S)
    assert det is not None and 'title="not computed">—' in det.group(1) and "endpoint down" in det.group(1)
    assert "1 earlier or other explanation" in text and f"the animal {WORD}" in text and ">0.80<" in text


def test_a_failed_attempt_and_no_explanation_on_the_feature_page(client: TestClient, s: Seeded) -> None:
    failed = section(page(client, f"/saes/tiny/features/{s.c}"), "explanation")
    assert "No automated explanation yet (see the attempts below)" in failed
    assert "1 attempt without an explanation" in failed and f"garbled {WORD} answer" in failed
    assert "no explanation in the answer" in failed
    none = section(page(client, f"/saes/tiny/features/{s.e}"), "explanation")
    assert f"jumpscope explain tiny --features {s.e}" in none and "attempt" not in none


def test_the_rating_queue_does_not_show_explanations(client: TestClient) -> None:
    cookie = f"{RATER_COOKIE}={cookie_value('queue-rater')}"
    reply = client.get("/saes/tiny/rate", headers={"accept": "text/html", "cookie": cookie})
    assert reply.status_code == 200 and "Top activations" in reply.text  # a feature's dashboard is on screen
    assert 'id="explanation"' not in reply.text and "Automated explanation" not in reply.text  # raters judge examples


# --- the feature table -----------------------------------------------------------------------------------------------


def test_the_feature_table_has_an_explanation_column_sortable_by_score(client: TestClient, s: Seeded) -> None:
    text = page(client, "/saes/tiny", limit=200)
    assert '<th scope="col">Explanation</th>' in text
    assert "&lt;b&gt;zebracorn&lt;/b&gt; &amp; friends" in text and "lazy dog" in text
    for key in ("simulation", "detection", "fuzzing"):  # descending first, the page size kept
        assert f'href="/saes/tiny?sort={key}&amp;limit=200" title="Sort by the' in text
    ranked = table_features(page(client, "/saes/tiny", sort="simulation", limit=200))
    assert ranked[:2] == [s.a, s.b] and len(ranked) == 40  # the unscored after them, all still listed
    assert table_features(page(client, "/saes/tiny", sort="simulation", order="asc"))[:2] == [s.b, s.a]
    assert table_features(page(client, "/saes/tiny", sort="detection"))[0] == s.b  # a's latest has none
    assert table_features(page(client, "/saes/tiny", q=WORD.upper())) == [s.a]  # only explanations hold it


# --- the distributions page ------------------------------------------------------------------------------------------


def test_the_explanations_page_overlays_the_random_baseline(client: TestClient, s: Seeded) -> None:
    text = page(client, "/saes/tiny/explanations")
    charts = svgs(text)
    assert len(charts) == 3
    labels = [c.get("aria-label") or "" for c in charts]
    for kind, label in zip(("simulation", "detection", "fuzzing"), labels, strict=True):
        assert label.startswith(f"Histogram of {kind} scores of tiny and its random baseline"), label
    assert "tiny: 2 features, mean 0.350, median 0.350; tiny-random: 2 features, mean -0.050" in labels[0]
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in charts[0].iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    tips = sorted(r.find(f"{ns}title").text or "" for r in bars)  # type: ignore[union-attr]
    assert tips == ["tiny-random: 1 of 2 features (50%) score -0.2 to -0.1",
                    "tiny-random: 1 of 2 features (50%) score 0 to 0.1",
                    "tiny: 1 of 2 features (50%) score 0.2 to 0.3",
                    "tiny: 1 of 2 features (50%) score 0.5 to 0.6"]  # fmt: skip
    words = " ".join(text.split())
    assert "3 features explained (4 explanations stored; 1 unreadable answer, 0 without an answer)" in words
    assert re.search(r"<td>tiny-random \(random\)</td><td class=\"num\">2</td><td class=\"num\">-0.050</td>", text)
    listing = page(client, "/saes/tiny/explanations", sort="simulation")
    rows = re.findall(r'<a href="/saes/tiny/features/(\d+)#explanation">', listing)
    assert [int(r) for r in rows] == [s.a, s.a, s.b, s.d]
    assert "&lt;b&gt;zebracorn&lt;/b&gt; &amp; friends" in listing


def test_the_explanations_page_lists_failed_attempts_and_reads_params_leniently(client: TestClient, s: Seeded) -> None:
    failed = page(client, "/saes/tiny/explanations", status="failed")
    assert f'href="/saes/tiny/features/{s.c}#explanation"' in failed and "no explanation in the answer" in failed
    assert "1 match;" in failed
    lenient = page(client, "/saes/tiny/explanations", sort="vibes", order="up", limit="7", offset="-3", q="a\x00")
    assert "4 matches; showing 1–4." in lenient  # NUL dropped: q=a matches every explanation; defaults otherwise


def test_the_explanations_page_without_baseline_or_explanations(client: TestClient) -> None:
    lone = page(client, "/saes/lone/explanations")
    assert "No random baseline yet" in lone and "jumpscope explain lone --sample 50" in lone
    assert "simulation scores of lone: no scores yet." in lone and not svgs(lone)
    base = page(client, "/saes/tiny-random/explanations")
    assert 'is the randomly initialised baseline of <a href="/saes/tiny/explanations">tiny</a>' in base
    assert "No such SAE" in page(client, "/saes/nope/explanations", expect=404)


# --- a sweep ---------------------------------------------------------------------------------------------------------


def test_the_compare_page_shows_scores_per_architecture(client: TestClient) -> None:
    text = page(client, "/compare/sw")
    assert "Automated interpretability" in text
    charts = [c for c in svgs(text) if "score per architecture" in (c.get("aria-label") or "")]
    assert len(charts) == 3
    label = charts[0].get("aria-label") or ""
    assert "jumprelu: 2 features, mean 0.350" in label  # the features with a simulation score
    assert "random baseline: 2 features, mean -0.050" in label
    assert "topk" not in label  # its SAE has no explanations
    assert '<a href="/saes/tiny/explanations">tiny</a>' in text
    assert "No such sweep" in page(client, "/compare/nope", expect=404)


# --- in a browser ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_feature_table_sorts_by_a_score_in_chromium(seeded: tuple[Any, Seeded]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    (url, _, _, folder), s = seeded
    with jumpscope_serve(url, folder) as served, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            tab = browser.new_page()
            tab.set_default_timeout(60_000)
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.goto(f"{served.base}/saes/tiny?limit=100")
            tab.click('th a[data-sort="simulation"]')
            tab.wait_for_url(re.compile(r"sort=simulation"))
            first = tab.locator("table.features tbody tr td:first-child").all_inner_texts()
            scores = tab.locator('table.features tbody td[data-score="simulation"]').all_inner_texts()
            assert [int(x) for x in first[:2]] == [s.a, s.b]
            assert scores[:2] == ["0.50", "0.20"] and set(scores[2:]) == {"—"}
            assert tab.get_attribute('th:has(a[data-sort="simulation"])', "aria-sort") == "descending"
            tab.click('th a[data-sort="simulation"]')  # again: ascending, the unscored still last
            tab.wait_for_url(re.compile(r"order=asc"))
            again = tab.locator("table.features tbody tr td:first-child").all_inner_texts()
            assert [int(x) for x in again[:2]] == [s.b, s.a]
            assert not errors, errors
        finally:
            browser.close()
