"""The HTML pages through FastAPI's test client, on SQLite and Postgres: every page, its empty,
missing and error states, the no-JS rating form with its CSRF checks, the rating queue and
blinded studies, and HTML escaping of model and user text."""

from __future__ import annotations

import csv
import html as html_lib
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, func, select, update

from app.auth.tokens import add_token
from app.catalog.saes import import_sae
from app.catalog.vocab import pack, unpack
from app.core.database import session_scope
from app.core.tables import Example, Feature, Job, Model, Rating, SAERow
from tests.app.conftest import D_SAE
from tests.app.test_api import make_client

EVIL = "<script>alert(1)</script>\"'&"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def app_client(shared_index: Any) -> Any:
    """One app per backend for the module (tests use their own features and raters)."""
    url, _, _, folder = shared_index
    with make_client(url, folder) as c:
        yield c


@pytest.fixture
def client(app_client: TestClient) -> TestClient:
    """The module's client as a fresh browser: no cookies."""
    app_client.cookies.clear()
    return app_client


@pytest.fixture
def engine(shared_index: Any) -> Engine:
    return shared_index[1]  # type: ignore[no-any-return]


def html_of(reply: Any, status: int = 200) -> str:
    assert reply.status_code == status, reply.text[:2000]
    assert reply.headers["content-type"].startswith("text/html")
    return str(reply.text)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def live_features(engine: Engine) -> list[int]:
    with session_scope(engine) as session:
        run = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        return list(
            session.scalars(
                select(Feature.index).where(Feature.run_id == run, Feature.fire_count > 0).order_by(Feature.index)
            )
        )


def busiest_feature(engine: Engine) -> int:
    with session_scope(engine) as session:
        run = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        return int(
            session.scalar(select(Feature.index).where(Feature.run_id == run).order_by(Feature.fire_count.desc()))
        )


def set_rater(client: TestClient, name: str) -> None:
    """Choose who rates, through the identity form (as a browser would)."""
    page = html_of(client.get("/rate?saes=tiny"))
    reply = client.post("/identity", data={"csrf": csrf_of(page), "rater": name, "next": "/rate?saes=tiny"},
                        follow_redirects=False)  # fmt: skip
    assert reply.status_code == 303, reply.text


# --- the SAE list ---------------------------------------------------------------------------------------------------


def test_home_lists_saes_with_metrics_and_progress(client: TestClient) -> None:
    reply = client.get("/")
    page = html_of(reply)
    assert '<a href="/saes/tiny">tiny</a>' in page
    for column in ["Model", "Layer", "Site", "Width", "L0", "FVU", "Δ LM loss", "Indexed tokens", "Rated"]:
        assert column in page
    assert re.search(rf"\d+ / {D_SAE}", page)
    assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert "jumpscope_csrf" in reply.cookies


def test_home_shows_metrics_from_the_sae_row(shared_index: Any, tmp_path: Path) -> None:
    url, engine, _, folder = shared_index
    with session_scope(engine) as session:
        sae = session.scalar(select(SAERow).where(SAERow.name == "tiny"))
        assert sae is not None
        old, sae.metrics = sae.metrics, {"l0": 12.3456, "fvu": 0.0789, "delta_lm_loss": 0.0321}
    try:
        with make_client(url, folder) as c:
            page = html_of(c.get("/"))
        assert "12.3" in page and "0.0789" in page and "0.0321" in page
    finally:
        with session_scope(engine) as session:
            session.execute(update(SAERow).where(SAERow.name == "tiny").values(metrics=old))


def test_home_without_saes(store: Engine, db_url: str, tmp_path: Path) -> None:
    with make_client(db_url, tmp_path) as client:
        page = html_of(client.get("/"))
        assert "No SAEs are registered yet" in page and "jumpscope demo" in page
        setup = html_of(client.get("/rate"))
        assert "No indexed SAEs yet" in setup
        assert "No jobs yet" in html_of(client.get("/jobs"))


# --- the feature table ----------------------------------------------------------------------------------------------


def feature_links(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td class="num"><a href="/saes/tiny/features/(\d+)">', page)]


def test_sae_page_table_histogram_and_paging(client: TestClient) -> None:
    page = html_of(client.get("/saes/tiny"))
    assert '<svg class="chart"' in page and "dead (never fired)" in page and "dense (&gt;1%)" in page
    assert feature_links(page) == list(range(D_SAE))  # 40 features fit on one page of 50
    assert "/api/v1/saes/tiny/ratings.csv" in page and 'href="/saes/tiny/rate"' in page
    first = html_of(client.get("/saes/tiny", params={"limit": 25}))
    assert feature_links(first) == list(range(25))
    assert 'rel="next" href="/saes/tiny?limit=25&amp;offset=25"' in first and 'rel="prev"' not in first
    second = html_of(client.get("/saes/tiny", params={"limit": 25, "offset": 25}))
    assert feature_links(second) == list(range(25, D_SAE)) and 'rel="prev"' in second and 'rel="next"' not in second


def test_sae_page_sorts_and_filters_like_the_api(client: TestClient) -> None:
    api = client.get("/api/v1/saes/tiny/features", params={"sort": "frequency", "order": "desc", "limit": 500})
    items = api.json()["items"]
    page = html_of(client.get("/saes/tiny", params={"sort": "frequency", "order": "desc", "limit": 100}))
    assert feature_links(page) == [f["index"] for f in items]
    assert 'aria-sort="descending"' in page
    # a second click on the sorted column flips the order
    assert 'href="/saes/tiny?sort=frequency&amp;order=asc&amp;limit=100"' in page
    mid = items[len(items) // 2]["frequency"]
    filtered = html_of(client.get("/saes/tiny", params={"min_frequency": repr(mid), "limit": 100}))
    assert sorted(feature_links(filtered)) == sorted(f["index"] for f in items if f["frequency"] >= mid)
    word = max(next(f for f in items if f["top_text"].strip())["top_text"].split(), key=len)
    searched = html_of(client.get("/saes/tiny", params={"q": word}))
    api_hits = client.get("/api/v1/saes/tiny/features", params={"q": word, "limit": 500}).json()
    assert feature_links(searched) == [f["index"] for f in api_hits["items"]]
    # what a plain GET form sends: empty fields are "no filter", nonsense is reported and ignored
    empty = html_of(client.get("/saes/tiny", params={"q": "", "min_frequency": "", "max_frequency": "", "label": "",
                                                     "sort": "index", "order": "asc", "limit": "50"}))  # fmt: skip
    assert feature_links(empty) == list(range(D_SAE))
    odd = html_of(client.get("/saes/tiny", params={"min_frequency": "abc", "max_frequency": "7", "sort": "x",
                                                   "limit": "9999", "offset": "-3", "label": "perhaps"}))  # fmt: skip
    assert "ignored &#39;abc&#39;" in odd and "ignored &#39;7&#39;" in odd and feature_links(odd) == list(range(D_SAE))
    percent = html_of(client.get("/saes/tiny", params={"max_frequency": "0%"}))
    dead = [f["index"] for f in items if f["frequency"] == 0]
    assert feature_links(percent) == sorted(dead)
    assert "0 features match" in html_of(client.get("/saes/tiny", params={"q": "zzqqxx-not-there"}))


def test_sae_page_filters_by_rating_label(client: TestClient) -> None:
    client.post("/api/v1/saes/tiny/features/21/ratings", json={"rater": "lab", "label": "maybe"})
    page = html_of(client.get("/saes/tiny", params={"label": "maybe"}))
    assert 21 in feature_links(page)
    assert 21 not in feature_links(html_of(client.get("/saes/tiny", params={"label": "unrated", "limit": 100})))


# --- the feature dashboard ------------------------------------------------------------------------------------------


def test_feature_page_dashboard(client: TestClient, engine: Engine) -> None:
    index = busiest_feature(engine)
    detail = client.get(f"/api/v1/saes/tiny/features/{index}").json()
    page = html_of(client.get(f"/saes/tiny/features/{index}"))
    assert f"Feature {index}" in page
    coloured = re.findall(r'<span class="t[^"]*" style="background:#[0-9a-f]{6}" title="[^"]+">', page)
    assert len(coloured) >= len(detail["top_examples"])
    assert page.count('class="t max') >= len(detail["top_examples"]) + sum(len(b["examples"]) for b in detail["bands"])
    assert 'id="examples" class="ctx short"' in page and 'class="t far' in page  # short view by default
    assert 'id="examples" class="ctx"' in html_of(client.get(f"/saes/tiny/features/{index}?context=full"))
    for band in detail["bands"]:
        assert f"Interval {format(band['min'], '.3g') if band['min'] else '0'} – " in page
    assert "Activation histogram" in page and '<rect class="bar act"' in page
    assert "Promoted output tokens" in page and "Suppressed output tokens" in page
    for similar in detail["similar"][:3]:
        assert f'href="/saes/tiny/features/{similar["index"]}"' in page
    assert 'id="try-form"' in page and 'data-api="/api/v1/saes/tiny/encode"' in page
    assert 'action="/saes/tiny/features/' in page and 'name="csrf"' in page and 'maxlength="2000"' in page
    if index > 0:
        assert f'rel="prev" href="/saes/tiny/features/{index - 1}"' in page
    if index + 1 < D_SAE:
        assert f'rel="next" href="/saes/tiny/features/{index + 1}"' in page
    assert 'rel="prev"' not in html_of(client.get("/saes/tiny/features/0"))
    assert 'rel="next"' not in html_of(client.get(f"/saes/tiny/features/{D_SAE - 1}"))


def test_feature_page_max_token_value_in_title(client: TestClient, engine: Engine) -> None:
    index = busiest_feature(engine)
    top = client.get(f"/api/v1/saes/tiny/features/{index}").json()["top_examples"][0]
    page = html_of(client.get(f"/saes/tiny/features/{index}"))
    value = format(top["values"][top["max_position"]], ".3g")
    assert re.search(rf'<span class="t max[^"]*" style="background:#[0-9a-f]{{6}}" title="{re.escape(value)}">', page)


def test_try_your_own_text_without_javascript(client: TestClient, engine: Engine) -> None:
    index = busiest_feature(engine)
    page = html_of(client.get(f"/saes/tiny/features/{index}", params={"text": "the quick brown fox jumps"}))
    result = page.split('id="try-result"', 1)[1].split("</p>", 1)[0]
    assert result.count('<span class="t') >= 5 and "&lt;bos&gt;" in result
    assert "the quick brown fox jumps</textarea>" in page


def test_missing_pages_are_html_404s(client: TestClient) -> None:
    for path in ["/saes/nope", "/saes/NOPE", "/saes/nope/features/1", f"/saes/tiny/features/{D_SAE}",
                 "/saes/tiny/features/-1", "/saes/tiny/features/abc", f"/saes/tiny/features/{10**15}",
                 "/jobs/999999", "/jobs/abc", f"/jobs/{2**40}", "/saes/nope/rate", "/rate?saes=tiny,nope"]:  # fmt: skip
        page = html_of(client.get(path), 404)
        assert "<h1>" in page and "jumpscope" in page, path
    assert "no SAE named &#39;nope&#39;" in html_of(client.get("/saes/nope"), 404)
    assert "there is no feature 40" in html_of(client.get(f"/saes/tiny/features/{D_SAE}"), 404)
    browser = client.get("/no/such/page", headers={"accept": "text/html,*/*"})
    assert "There is no page at /no/such/page" in html_of(browser, 404)
    api = client.get("/api/v1/nope", headers={"accept": "text/html"})
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}
    assert client.get("/api/v1/saes/tiny/encode").status_code == 405  # the API's own errors are untouched


def test_unindexed_sae_pages_say_how_to_index(registered: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    with make_client(db_url, tmp_path) as client:
        home = html_of(client.get("/"))
        assert "not indexed" in home
        sae = html_of(client.get("/saes/tiny"))
        assert "jumpscope index tiny" in sae and "<svg" not in sae
        feature = html_of(client.get("/saes/tiny/features/3"), 404)
        assert "jumpscope index tiny" in feature
        client.cookies.set("jumpscope_rater", "ann")
        assert "jumpscope index tiny" in html_of(client.get("/saes/tiny/rate"), 404)
        assert "No indexed SAEs yet" in html_of(client.get("/rate"))


# --- the no-JS rating form ------------------------------------------------------------------------------------------


def test_rating_form_round_trip_with_csrf(client: TestClient, engine: Engine) -> None:
    page = html_of(client.get("/saes/tiny/features/5"))
    token = csrf_of(page)
    assert client.cookies.get("jumpscope_csrf") == token
    url = "/saes/tiny/features/5/rate"
    form = {"csrf": token, "rater": "formy", "label": "maybe", "note": "fires on 'fox' & friends", "shown": "{}"}
    assert "Form expired" in html_of(client.post(url, data={**form, "csrf": ""}), 403)
    assert "Form expired" in html_of(client.post(url, data={**form, "csrf": "x" * 43}), 403)
    foreign = client.post(url, data=form, headers={"origin": "https://evil.example"})
    assert "Cross-site request refused" in html_of(foreign, 403)
    assert "Cross-site" in html_of(client.post(url, data=form, headers={"referer": "https://evil.example/x"}), 403)
    assert "Cross-site" in html_of(client.post(url, data=form, headers={"origin": "null"}), 403)
    with session_scope(engine) as session:
        assert session.scalars(select(Rating).where(Rating.rater == "formy")).all() == []
    stored = client.post(url, data=form, headers={"origin": "http://testserver"}, follow_redirects=False)
    assert stored.status_code == 303 and stored.headers["location"] == "/saes/tiny/features/5#rating"
    assert client.cookies.get("jumpscope_rater") == "formy"
    with session_scope(engine) as session:
        [rating] = session.scalars(select(Rating).where(Rating.rater == "formy")).all()
        assert (rating.feature_index, rating.label, rating.note, rating.study_id) == (5, "maybe", form["note"], "")
        assert rating.time_spent_ms is None
    after = html_of(client.get("/saes/tiny/features/5"))
    assert "fires on &#39;fox&#39; &amp; friends" in after and 'value="formy"' in after
    edited = client.post(url, data={**form, "label": "yes", "next": "/saes/tiny?x=1"}, follow_redirects=False)
    assert edited.status_code == 303 and edited.headers["location"] == "/saes/tiny?x=1"
    for bad_next in ["//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:alert(1)"]:
        reply = client.post(url, data={**form, "next": bad_next}, follow_redirects=False)
        assert reply.headers["location"] == "/saes/tiny/features/5#rating", bad_next
    with session_scope(engine) as session:
        [rating] = session.scalars(select(Rating).where(Rating.rater == "formy")).all()
        assert rating.label == "maybe"  # edited in place: one rating per (study, rater, feature)


def test_rating_form_errors(client: TestClient, engine: Engine) -> None:
    token = csrf_of(html_of(client.get("/saes/tiny/features/6")))
    url = "/saes/tiny/features/6/rate"
    base = {"csrf": token, "rater": "erring", "label": "yes"}
    assert "limited to 2000" in html_of(client.post(url, data={**base, "note": "x" * 2001}), 422)
    assert "label" in html_of(client.post(url, data={**base, "label": "perhaps"}), 422)
    assert "label" in html_of(client.post(url, data={"csrf": token, "rater": "erring"}), 422)
    assert "rater" in html_of(client.post(url, data={**base, "rater": "x" * 101}), 422)
    html_of(client.post(f"/saes/tiny/features/{D_SAE}/rate", data=base), 404)
    html_of(client.post("/saes/nope/features/1/rate", data=base), 404)
    html_of(client.post("/saes/tiny/features/abc/rate", data=base), 404)
    rendered = str(int(time.time() * 1000) - 1500)
    ok = client.post(url, data={**base, "note": "y" * 2000, "shown": "not json", "presentation_order": "-1",
                                "rendered_at": rendered}, follow_redirects=False)  # fmt: skip
    assert ok.status_code == 303
    with session_scope(engine) as session:
        [rating] = session.scalars(select(Rating).where(Rating.rater == "erring")).all()
        assert len(rating.note) == 2000 and rating.shown == {} and rating.presentation_order is None
        assert rating.time_spent_ms is not None and 1000 <= rating.time_spent_ms < 60_000


def test_json_api_writes_need_a_json_content_type(client: TestClient, engine: Engine) -> None:
    """What a cross-site form or no-cors fetch can send is not parsed: only application/json is."""
    url = "/api/v1/saes/tiny/features/7/ratings"
    body = '{"rater": "csrf-victim", "label": "yes"}'
    for headers in [{"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
                    {"content-type": "multipart/form-data; boundary=x"}, {}]:  # fmt: skip
        assert client.post(url, content=body, headers=headers).status_code == 422, headers
    with session_scope(engine) as session:
        assert session.scalars(select(Rating).where(Rating.rater == "csrf-victim")).all() == []


def test_identity_form(client: TestClient) -> None:
    page = html_of(client.get("/rate?saes=tiny"))
    assert "Who is rating?" in page  # no name yet: ask before showing anything
    token = csrf_of(page)
    assert "Form expired" in html_of(client.post("/identity", data={"rater": "x", "next": "/"}), 403)
    assert "Name needed" in html_of(client.post("/identity", data={"csrf": token, "rater": " "}), 422)
    refused = client.post("/identity", data={"csrf": token, "rater": "Zoë O'Neil"})  # names are plain ASCII
    assert "ASCII letters, digits" in html_of(refused, 422)
    reply = client.post("/identity", data={"csrf": token, "rater": "zoe.o-neil_2", "next": "//evil"},
                        follow_redirects=False)  # fmt: skip
    assert reply.status_code == 303 and reply.headers["location"] == "/rate"
    assert "Rating as zoe.o-neil_2" in html_of(client.get("/rate?saes=tiny"))
    forget = client.post("/identity", data={"csrf": token, "forget": "1", "next": "/rate?saes=tiny"},
                         follow_redirects=False)  # fmt: skip
    assert forget.status_code == 303 and "jumpscope_rater" not in client.cookies


# --- the rating queue -----------------------------------------------------------------------------------------------


def test_queue_goes_through_live_features_unrated_first(client: TestClient, engine: Engine) -> None:
    live = live_features(engine)
    set_rater(client, "queuer")
    with session_scope(engine) as session:  # rated before: the queue starts after it
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == "tiny"))
        session.add(Rating(sae_id=sae_id, feature_index=live[0], rater="queuer", label="no"))
    page = html_of(client.get("/saes/tiny/rate"))
    assert f"1 of {len(live)} rated" in page
    assert f"tiny · feature {live[1]}</a>" in page and "item 2 of" in page
    assert 'data-next="/saes/tiny/rate?after=1"' in page and 'id="skip" href="/saes/tiny/rate?after=1"' in page
    assert 'value="queuer"' in page and f'action="/saes/tiny/features/{live[1]}/rate"' in page
    skipped = html_of(client.get("/saes/tiny/rate?after=1"))
    assert f"tiny · feature {live[2]}</a>" in skipped
    reply = client.post(f"/saes/tiny/features/{live[1]}/rate",
                        data={"csrf": csrf_of(page), "label": "yes", "presentation_order": "1",
                              "next": "/saes/tiny/rate?after=1"}, follow_redirects=False)  # fmt: skip
    assert reply.status_code == 303 and reply.headers["location"] == "/saes/tiny/rate?after=1"
    following = html_of(client.get(reply.headers["location"]))
    assert f"2 of {len(live)} rated" in following and f"tiny · feature {live[2]}</a>" in following
    with session_scope(engine) as session:
        rating = session.scalar(select(Rating).where(Rating.rater == "queuer", Rating.feature_index == live[1]))
        assert rating is not None and rating.label == "yes" and rating.presentation_order == 1
    assert "/api/v1/saes/tiny/ratings.csv" in following


def test_queue_is_done_when_everything_is_rated(client: TestClient, engine: Engine) -> None:
    set_rater(client, "finisher")
    with session_scope(engine) as session:
        sae_id = session.scalar(select(SAERow.id).where(SAERow.name == "tiny"))
        for index in live_features(engine):
            session.add(Rating(sae_id=sae_id, feature_index=index, rater="finisher", label="maybe"))
    page = html_of(client.get("/saes/tiny/rate"))
    assert f"All {len(live_features(engine))} features rated" in page and "ratings.csv" in page


def test_study_setup_page(client: TestClient) -> None:
    page = html_of(client.get("/rate"))
    assert 'name="saes" value="tiny"' in page and 'name="study"' in page and 'name="blind"' in page
    refused = html_of(client.get("/rate?saes=tiny&blind=1"), 422)
    assert "needs a study name" in refused
    many = ",".join(f"s{i}" for i in range(25))
    assert "at most 20" in html_of(client.get(f"/rate?saes={many}"), 422)


@pytest.fixture
def two_saes(indexed: tuple[Engine, Any], db_url: str, tmp_path: Path) -> Any:
    """'tiny' indexed plus 'tiny-b' (the same weights, sharing tiny's index) in a store of its own."""
    engine, _ = indexed
    with session_scope(engine) as session:
        tiny = session.scalar(select(SAERow).where(SAERow.name == "tiny"))
        assert tiny is not None
        import_sae(session, Path(tiny.path), data_dir=tmp_path / "data-b", name="tiny-b")
        session.flush()
        session.execute(update(SAERow).where(SAERow.name == "tiny-b").values(index_run_id=tiny.index_run_id))
    with make_client(db_url, tmp_path) as client:
        yield engine, client


def visible(page: str) -> str:
    """The page's text as shown (no tags, no attribute values)."""
    return re.sub(r"<[^>]*>", " ", page)


def test_blinded_study_over_two_saes(two_saes: Any) -> None:
    engine, client = two_saes
    set_rater(client, "blinda")
    url = "/rate?saes=tiny,tiny-b&study=s1&blind=1"
    page = html_of(client.get(url))
    with session_scope(engine) as session:
        run = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        live = session.scalar(select(func.count()).where(Feature.run_id == run, Feature.fire_count > 0))
    n = 2 * live
    assert f"0 of {n} rated" in page and f"Item 1 of {n}" in page
    text = visible(page)
    assert "tiny" not in text and "Similar features" not in text and not re.search(r"(?i)feature \d", text)
    assert "<title>Study s1 · jumpscope</title>" in page
    assert _item(page) == _item(html_of(client.get(url)))  # a reload keeps the order
    rate_form = page.split('id="rate-form"', 1)[1].split("</form>", 1)[0]
    form = {k: html_lib.unescape(v) for k, v in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                                                            rate_form)}  # fmt: skip
    action = re.search(r'action="([^"]+)"', rate_form)
    assert action is not None and form["blinded"] == "1" and form["study_id"] == "s1"
    assert form["presentation_order"] == "0" and form["next"] == "/rate?saes=tiny,tiny-b&study=s1&blind=1&after=0"
    reply = client.post(action.group(1), data={**form, "label": "no"}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == form["next"]
    following = html_of(client.get(reply.headers["location"]))
    assert f"1 of {n} rated" in following and f"Item 2 of {n}" in following
    with session_scope(engine) as session:
        [rating] = session.scalars(select(Rating).where(Rating.rater == "blinda")).all()
        assert rating.study_id == "s1" and rating.blinded and rating.presentation_order == 0
        assert rating.shown["position"] == 0 and rating.shown["queue_size"] == n and rating.shown["context"] == "short"
        assert rating.shown["context_radius"] == 8 and rating.shown["view"] == "queue"
        ids = rating.shown["top_example_ids"] + rating.shown["band_example_ids"]
        assert ids and rating.shown["examples"] == len(ids)
        stored = set(session.scalars(select(Example.feature_index).where(Example.id.in_(ids))))
        assert stored == {rating.feature_index}
    # the order is shuffled per rater, across both SAEs, deterministically
    orders = {}
    for rater in ["r1", "r2", "r3"]:
        set_rater(client, rater)
        firsts = [_item(html_of(client.get(f"{url}&after={pos}"))) for pos in range(4)]
        again = [_item(html_of(client.get(f"{url}&after={pos}"))) for pos in range(4)]
        assert firsts == again
        orders[rater] = firsts
    assert len({tuple(o) for o in orders.values()}) > 1
    unblinded = html_of(client.get("/rate?saes=tiny,tiny-b&study=s2"))
    assert re.search(r"tiny(-b)? · feature \d+</a>", unblinded)


def _item(page: str) -> str:
    match = re.search(r'action="(/saes/[^"]+/rate)"', page)
    assert match
    return match.group(1)


# --- tokens configured ----------------------------------------------------------------------------------------------


def test_rating_with_tokens_configured(indexed: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    engine, _ = indexed
    with session_scope(engine) as session:
        token = add_token(session, "carol")
    with make_client(db_url, tmp_path) as client:
        page = html_of(client.get("/saes/tiny/features/2"))
        assert 'name="token" type="password"' in page and 'data-tokens="1"' in page and 'name="rater"' not in page
        csrf = csrf_of(page)
        form = {"csrf": csrf, "label": "yes", "rater": "mallory"}
        assert "token" in html_of(client.post("/saes/tiny/features/2/rate", data=form), 401)
        assert "unknown token" in html_of(client.post("/saes/tiny/features/2/rate", data={**form, "token": "nope"}),
                                          401)  # fmt: skip
        ok = client.post("/saes/tiny/features/2/rate", data={**form, "token": token}, follow_redirects=False)
        assert ok.status_code == 303 and client.cookies.get("jumpscope_token") == token
        assert "Rating as <strong>carol</strong>" in html_of(client.get("/saes/tiny/features/3"))
        again = client.post("/saes/tiny/features/3/rate", data={"csrf": csrf, "label": "no"}, follow_redirects=False)
        assert again.status_code == 303  # the remembered token
        with session_scope(engine) as session:
            rows = session.execute(select(Rating.feature_index, Rating.rater)).all()
            assert sorted(rows) == [(2, "carol"), (3, "carol")]
        client.cookies.delete("jumpscope_token")
        queue = html_of(client.get("/saes/tiny/rate"))
        assert "Who is rating?" in queue and 'name="token"' in queue
        bad = client.post("/identity", data={"csrf": csrf, "token": "nope"})
        assert "Unknown token" in html_of(bad, 401)
        good = client.post("/identity", data={"csrf": csrf, "token": token, "next": "/saes/tiny/rate"},
                           follow_redirects=False)  # fmt: skip
        assert good.status_code == 303
        assert "Rating as <strong>carol</strong>" in html_of(client.get("/saes/tiny/rate"))


# --- escaping, dead features ----------------------------------------------------------------------------------------


def test_model_and_user_text_is_escaped_everywhere(indexed: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    engine, _ = indexed
    with session_scope(engine) as session:
        model = session.scalar(select(Model))
        assert model is not None and model.vocab
        size = len(unpack(model.vocab))
        model.vocab = pack([f"{EVIL}{i}" for i in range(size)])
        session.execute(update(Feature).values(search_text=f"{EVIL} … {EVIL}"))
        sae_id = session.scalar(select(SAERow.id))
        session.add(Rating(sae_id=sae_id, feature_index=1, rater=EVIL, label="yes", note=EVIL, study_id=EVIL))
    with make_client(db_url, tmp_path) as client:
        pages = [
            client.get("/saes/tiny/features/1"),
            client.get("/saes/tiny/features/1", params={"text": EVIL}),
            client.get("/saes/tiny"),
            client.get("/saes/tiny", params={"q": EVIL}),
            client.get("/saes/tiny", params={"q": '"><script>alert(1)</script>', "min_frequency": EVIL}),
            client.get("/rate", params={"saes": "tiny", "study": EVIL}),
            client.get("/saes/tiny/features/1", params={"context": EVIL}),
            client.get(f"/saes/{EVIL}"),
            client.get("/no/" + EVIL, headers={"accept": "text/html"}),
        ]
        client.cookies.set("jumpscope_rater", "%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        pages.append(client.get("/rate", params={"saes": "tiny", "study": EVIL}))
        pages.append(client.get("/saes/tiny/features/1"))
        for reply in pages:
            page = reply.text
            assert "<script>alert" not in page, reply.url
            assert '"><script' not in page
        feature = pages[0].text
        assert ESCAPED in feature and "&#34;&#39;&amp;" in feature  # tokens, output tokens, the note, the rater
        assert feature.count(ESCAPED) > 20
        assert ESCAPED in pages[2].text and ESCAPED in pages[3].text
        assert ESCAPED in pages[-2].text  # the study name in the queue and the rater name from the cookie


def test_dead_feature_page_and_queue(indexed: tuple[Engine, Any], db_url: str, tmp_path: Path) -> None:
    engine, _ = indexed
    with session_scope(engine) as session:
        run = session.scalar(select(SAERow.index_run_id))
        session.execute(delete(Example).where(Example.run_id == run, Example.feature_index == 0))
        session.execute(update(Feature).where(Feature.run_id == run, Feature.index == 0).values(
            fire_count=0, frequency=0.0, max_activation=0.0, mean_activation=0.0,
            histogram={"max": 0.0, "bins": 10, "counts": []}))  # fmt: skip
        live = session.scalar(select(func.count()).where(Feature.run_id == run, Feature.fire_count > 0))
    with make_client(db_url, tmp_path) as client:
        page = html_of(client.get("/saes/tiny/features/0"))
        assert "it is dead" in page and "No examples." in page and "No activations recorded." in page
        table = html_of(client.get("/saes/tiny", params={"max_frequency": "0"}))
        assert feature_links(table)[:1] == [0] and '<span class="badge dead">dead</span>' in table
        client.cookies.set("jumpscope_rater", "deadpan")
        queue = html_of(client.get("/saes/tiny/rate"))
        assert f"0 of {live} rated" in queue and "tiny · feature 0</a>" not in queue


# --- jobs -----------------------------------------------------------------------------------------------------------


def test_job_pages(client: TestClient, engine: Engine) -> None:
    curve = [{"step": s, "loss": 1.0 / (s + 1), "l0": 50.0 - s, "fvu": 0.5 - s / 100} for s in range(0, 50, 5)]
    with session_scope(engine) as session:
        running = Job(kind="train", params={"name": "<b>x</b>"}, status="running", progress=0.4, metrics=curve,
                      result={}, message="step 45 of 100")  # fmt: skip
        failed = Job(kind="index", params={"sae": "tiny"}, status="failed", progress=0.1, metrics=[], result={},
                     error="Traceback: <script>alert(1)</script> out of memory")  # fmt: skip
        done = Job(kind="train", params={"name": "tiny"}, status="succeeded", progress=1.0, metrics=curve,
                   result={"sae": "tiny"})  # fmt: skip
        session.add_all([running, failed, done])
        session.flush()
        ids = running.id, failed.id, done.id
    page = html_of(client.get(f"/jobs/{ids[0]}"))
    assert '<meta http-equiv="refresh"' in page and "step 45 of 100" in page and "40%" in page
    assert page.count('<polyline class="curve"') == 3 and "&lt;b&gt;x&lt;/b&gt;" in page
    for label in ["loss", "L0", "FVU"]:
        assert f"{label} against training step" in page
    failure = html_of(client.get(f"/jobs/{ids[1]}"))
    assert "out of memory" in failure and "&lt;script&gt;" in failure and "<script>alert" not in failure
    assert 'http-equiv="refresh"' not in failure and "Failed" in failure
    finished = html_of(client.get(f"/jobs/{ids[2]}"))
    assert 'http-equiv="refresh"' not in finished and '<a href="/saes/tiny">tiny</a>' in finished
    listing = html_of(client.get("/jobs"))
    for job_id in ids:
        assert f'<a href="/jobs/{job_id}">{job_id}</a>' in listing


def test_job_without_metrics_yet(client: TestClient, engine: Engine) -> None:
    with session_scope(engine) as session:
        job = Job(kind="train", params={"name": "later"}, status="queued", progress=0.0, metrics=[], result={})
        session.add(job)
        session.flush()
        job_id = job.id
    page = html_of(client.get(f"/jobs/{job_id}"))
    assert "no data yet" in page and "waits for a worker" in page and 'http-equiv="refresh"' in page


# --- static files and speed -----------------------------------------------------------------------------------------


def test_static_files_are_local(client: TestClient) -> None:
    page = html_of(client.get("/"))
    for name in ["style.css", "app.js"]:
        match = re.search(rf'"(/static/{re.escape(name)}\?v=\w+)"', page)
        assert match, name
        assert client.get(match.group(1)).status_code == 200
    assert "http://" not in re.sub(r'href="http://testserver', "", page.split("<body", 1)[0])
    assert "cdn" not in page.lower()
    js = client.get("/static/app.js").text
    assert "innerHTML" not in js and "textContent" in js


def test_feature_template_renders_fast() -> None:
    """A large dashboard (20 top examples, 10 bands of 5, 64-token windows) renders well under 20 ms."""
    from app.features.dashboard import FeatureView
    from app.features.schemas import BandOut, ExampleOut, FeatureDetail, Histogram, OutputToken
    from app.ratings.rater import Identity
    from app.ratings.schemas import RatingSummary
    from app.web.rendering import templates

    def example(peak: float) -> ExampleOut:
        values = [peak * ((i * 7919) % 64) / 63 for i in range(64)]
        tokens = [f" tok{i}<&>" for i in range(64)]
        top = max(range(64), key=lambda i: values[i])
        return ExampleOut(tokens=tokens, token_ids=list(range(64)), values=values, max_value=values[top],
                          max_position=top, document=None)  # fmt: skip

    detail = FeatureDetail(
        sae="big", index=7, dead=False, frequency=0.003, fire_count=3000, max_activation=10.0, mean_activation=2.0,
        histogram=Histogram(max=10.0, bins=50, counts=[i % 17 for i in range(50)]),
        top_positive_tokens=[OutputToken(token_id=i, token=f"t{i}", value=1.0) for i in range(10)],
        top_negative_tokens=[OutputToken(token_id=i, token=f"t{i}", value=-1.0) for i in range(10)],
        similar=[], top_examples=[example(10.0) for _ in range(20)],
        bands=[BandOut(band=b, min=b, max=b + 1, examples=[example(b + 1.0) for _ in range(5)]) for b in range(10)],
        ratings=RatingSummary(),
    )  # fmt: skip

    class FakeSAE:
        name, d_sae = "big", 16384

    class FakeRequest(dict[str, Any]):
        class url:
            path, query = "/saes/big/features/7", ""

        query_params: Any = type("Q", (), {"multi_items": staticmethod(lambda: [])})()

    view = FeatureView(sae=FakeSAE(), detail=detail, top_ids=list(range(20)), band_ids=list(range(50)), ratings=[])  # type: ignore[arg-type]
    template = templates.get_template("feature.html")
    ctx = {"request": FakeRequest(), "csrf": "x", "version": "0", "view": view, "f": detail, "sae": FakeSAE(),
           "who": Identity(tokens=False, rater=None), "context": "short", "text": "", "tried": None,
           "shown": view.shown("short"), "next_url": None, "blind": False, "rendered_at": 0, "position": None,
           "study": "", "prev_index": 6, "next_index": 8}  # fmt: skip
    template.render(ctx)
    best = min(_timed(lambda: template.render(ctx)) for _ in range(5))
    assert template.render(ctx).count('class="t') >= 70 * 64
    assert best < 0.02, f"feature page template took {best * 1000:.1f} ms"


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_ratings_csv_link_matches_the_api(client: TestClient) -> None:
    client.post("/api/v1/saes/tiny/features/22/ratings", json={"rater": "csvy", "label": "no"})
    page = html_of(client.get("/saes/tiny"))
    link = re.search(r'href="(/api/v1/saes/tiny/ratings\.csv)"', page)
    assert link
    rows = list(csv.DictReader(io.StringIO(client.get(link.group(1)).text)))
    assert ("csvy", "no", "22") in {(r["rater"], r["label"], r["feature_index"]) for r in rows}
