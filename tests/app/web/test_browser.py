"""End to end in headless Chromium (Debian's /usr/bin/chromium driven by playwright-python) against
real uvicorn (`jumpscope serve`) on the shared indexed store: highlighted examples, "try your own
text" through the encode API, keyboard rating from the queue, and the no-JS rating form.

Set JUMPSCOPE_SCREENSHOT=PATH to save a screenshot of a feature page there (for the README);
JUMPSCOPE_SCREENSHOT_URL=URL takes it of that page instead (e.g. a running demo).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.database import session_scope
from app.core.tables import Feature, Rating, SAERow
from tests.app.conftest import BROWSER_TIMEOUT_MS, jumpscope_serve, require_chromium

require_chromium()  # skips this module without playwright or Chromium

TIMEOUT_MS = BROWSER_TIMEOUT_MS


@pytest.fixture(scope="module")
def server(shared_index: Any) -> Iterator[str]:
    """Base URL of `jumpscope serve` on a free loopback port, serving the shared store."""
    url, _, _, folder = shared_index
    with jumpscope_serve(url, folder) as served:
        yield served.base


def busiest_feature(shared_index: Any) -> int:
    with session_scope(shared_index[1]) as session:
        run = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        return int(
            session.scalar(select(Feature.index).where(Feature.run_id == run).order_by(Feature.fire_count.desc()))
        )


TRANSPARENT = ("rgba(0, 0, 0, 0)", "transparent")


def backgrounds(page: Any, selector: str) -> list[str]:
    return list(page.eval_on_selector_all(selector, "els => els.map(e => getComputedStyle(e).backgroundColor)"))


@pytest.mark.slow
def test_feature_page_highlights_tokens(server: str, page: Any, shared_index: Any) -> None:
    index = busiest_feature(shared_index)
    page.goto(f"{server}/saes/tiny/features/{index}")
    assert page.title().startswith(f"tiny · feature {index}")
    coloured = [c for c in backgrounds(page, "#examples .t") if c not in TRANSPARENT]
    assert len(coloured) >= 4, coloured
    assert page.locator("#examples .t.max").count() >= 1
    title = page.locator("#examples .t.max").first.get_attribute("title")
    assert title and float(title) > 0
    # the context switch works without a reload: far tokens appear, and the address remembers it
    hidden = page.locator("#examples .t.far").count()
    visible_before = page.locator("#examples .t:visible").count()
    page.get_by_role("link", name="Full context").click()
    assert page.locator("#examples .t:visible").count() == visible_before + hidden
    assert page.url.endswith("context=full")
    shot = os.environ.get("JUMPSCOPE_SCREENSHOT")
    if shot:
        page.get_by_role("link", name="Short (±8 tokens)").click()
        target = os.environ.get("JUMPSCOPE_SCREENSHOT_URL")
        if target:
            page.goto(target)
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.screenshot(path=shot, full_page=False)


@pytest.mark.slow
def test_try_your_own_text_highlights(server: str, page: Any, shared_index: Any) -> None:
    index = busiest_feature(shared_index)
    page.goto(f"{server}/saes/tiny/features/{index}")
    before = page.url
    page.get_by_label("Text to run through the model and this feature").fill(
        "the quick brown fox jumps over lazy dog sparse features fire on some tokens and not others"
    )
    page.get_by_role("button", name="Highlight").click()
    page.wait_for_selector("#try-result .t", timeout=TIMEOUT_MS)
    assert page.url == before  # JS called the encode API; no page load
    status = page.locator("#try-status").text_content() or ""
    assert "tokens; max" in status, status
    coloured = [c for c in backgrounds(page, "#try-result .t") if c not in TRANSPARENT]
    assert coloured, "no token of the custom text is highlighted"
    assert page.locator("#try-result .t.max").count() == 1
    assert page.locator("#try-result .t").first.text_content() == "<bos>"  # text, not markup


@pytest.mark.slow
def test_rate_three_features_with_the_keyboard(server: str, page: Any, shared_index: Any) -> None:
    engine = shared_index[1]
    page.goto(f"{server}/saes/tiny/rate")
    page.get_by_label("Your name").fill("keyboard-kim")
    with page.expect_navigation():
        page.get_by_role("button", name="Start rating").click()
    progress = page.locator("#progress").text_content() or ""
    assert progress.startswith("0 of ")
    total = int(progress.split()[2])
    seen = []
    for key in ["y", "m", "n"]:
        action = page.locator("#rate-form").get_attribute("action") or ""
        seen.append(int(action.split("/")[-2]))
        with page.expect_navigation():
            page.keyboard.press(key)
    assert page.locator("#progress").text_content() == f"3 of {total} rated"
    assert len(set(seen)) == 3
    with session_scope(engine) as session:
        rows = session.scalars(select(Rating).where(Rating.rater == "keyboard-kim").order_by(Rating.id)).all()
        assert [(r.feature_index, r.label) for r in rows] == list(zip(seen, ["yes", "maybe", "no"], strict=True))
        for rating in rows:
            assert rating.presentation_order is not None and rating.shown["view"] == "queue"
            assert rating.shown["context"] == "short" and rating.time_spent_ms is not None
            assert rating.shown["top_example_ids"] and rating.shown["position"] == rating.presentation_order
            assert not rating.blinded and rating.study_id == ""
    csv_link = page.get_by_role("link", name="tiny-ratings.csv").get_attribute("href")
    text = httpx.get(f"{server}{csv_link}", timeout=30).text
    mine = [(r["feature_index"], r["label"]) for r in csv.DictReader(io.StringIO(text)) if r["rater"] == "keyboard-kim"]
    assert sorted(mine) == sorted((str(i), label) for i, label in zip(seen, ["yes", "maybe", "no"], strict=True))


@pytest.mark.slow
def test_blinded_study_with_the_keyboard(server: str, page: Any, shared_index: Any) -> None:
    page.goto(f"{server}/rate")
    page.get_by_label("tiny").check()
    page.get_by_label("Study name").fill("browser-study")
    page.get_by_label("Blinded: hide SAE names").check()
    page.get_by_role("button", name="Start").click()
    page.get_by_label("Your name").fill("blind-bo")
    with page.expect_navigation():
        page.get_by_role("button", name="Start rating").click()
    assert "saes=tiny" in page.url and "blind=1" in page.url
    main = page.locator("main").inner_text()
    assert "tiny" not in main and "Item 1 of" in main
    page.get_by_label("Note").fill("fires on animals")
    page.keyboard.press("y")  # typing in the note is left alone
    assert page.get_by_label("Note").input_value() == "fires on animalsy"
    page.keyboard.press("Escape")
    page.keyboard.press("s")  # skip
    page.wait_for_url("**after=0**")
    with page.expect_navigation():
        page.keyboard.press("m")
    with session_scope(shared_index[1]) as session:
        [rating] = session.scalars(select(Rating).where(Rating.rater == "blind-bo")).all()
        assert rating.label == "maybe" and rating.blinded and rating.study_id == "browser-study"
        assert rating.presentation_order == 1 and rating.shown["position"] == 1


@pytest.mark.slow
def test_rating_from_the_feature_page_with_js(server: str, page: Any, shared_index: Any) -> None:
    page.goto(f"{server}/saes/tiny/features/9")
    page.get_by_label("Your name").fill("js-jo")
    page.get_by_label("Your name").press("Enter")  # Enter in a field must not submit a rating
    page.get_by_label("Note").fill("<b>not bold</b>")
    assert page.locator("#rate-status").text_content() == ""
    page.get_by_role("button", name="Yes").click()
    page.locator("#rate-status", has_text="Saved").wait_for()  # (no wait_for_function: the CSP forbids eval)
    assert page.locator("#rate-status").text_content() == "Saved: yes (as js-jo)."
    page.reload()
    assert page.get_by_label("Your name").input_value() == "js-jo"  # remembered in a cookie
    assert page.locator("ul.notes").inner_text().endswith("<b>not bold</b>")
    with session_scope(shared_index[1]) as session:
        assert session.scalars(select(Rating.label).where(Rating.rater == "js-jo")).all() == ["yes"]


@pytest.mark.slow
def test_rating_form_without_javascript(server: str, browser: Any, shared_index: Any) -> None:
    """The plain form POST (CSRF cookie + Origin from a real browser) stores the rating and redirects."""
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{server}/saes/tiny/features/13?context=full")
        assert page.locator("#examples").get_attribute("class") == "ctx"
        page.get_by_label("Your name").fill("nojs-ned")
        page.get_by_label("Note").fill("plain form")
        with page.expect_navigation():
            page.get_by_role("button", name="No").click()
        assert page.url.endswith("/saes/tiny/features/13#rating")
        assert "nojs-ned" in page.locator("ul.notes").inner_text()
    finally:
        context.close()
    with session_scope(shared_index[1]) as session:
        [rating] = session.scalars(select(Rating).where(Rating.rater == "nojs-ned")).all()
        assert (rating.feature_index, rating.label, rating.note) == (13, "no", "plain form")
        assert rating.time_spent_ms is not None
