"""The text -> features and steering pages in headless Chromium (Debian's /usr/bin/chromium through
playwright) against real uvicorn (`jumpscope serve`): type a text, see its features, hover and focus
tokens, colour the text by a feature without a reload, click through to a dashboard, compare SAEs
side by side, the same page without JavaScript; ablate on a dashboard, steer from it and see two
continuations.

JUMPSCOPE_TEXT_SCREENSHOT=PATH saves a screenshot of the text page with a feature highlighted there,
JUMPSCOPE_STEER_SCREENSHOT=PATH one of the steering page with its two continuations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.app.conftest import BROWSER_TIMEOUT_MS, SENTENCE, jumpscope_serve, require_chromium

require_chromium()  # skips this module without playwright or Chromium

TIMEOUT_MS = BROWSER_TIMEOUT_MS
TRANSPARENT = ("rgba(0, 0, 0, 0)", "transparent")
LABEL = "Text to run through the model and the SAE"


@pytest.fixture(scope="module")
def server(text_store: Any) -> Iterator[str]:
    url, _, _, folder = text_store
    with jumpscope_serve(url, folder) as served:
        yield served.base


def coloured(page: Any) -> list[int]:
    colours = page.eval_on_selector_all("#text-tokens .t", "els => els.map(e => getComputedStyle(e).backgroundColor)")
    return [i for i, c in enumerate(colours) if c not in TRANSPARENT]


@pytest.mark.slow
def test_type_text_see_features_hover_focus_highlight_and_click_through(server: str, page: Any) -> None:
    page.goto(f"{server}/saes/tiny/text")
    page.get_by_label(LABEL).fill(SENTENCE)
    with page.expect_navigation():
        page.get_by_role("button", name="Show features").click()
    tokens = page.locator("#text-tokens .t")
    assert tokens.first.text_content() == "<bos>"  # text, not markup
    assert "tokens;" in (page.locator("#text-status").text_content() or "")
    assert page.locator("table.summary tbody tr").count() > 0
    assert coloured(page) == []

    # hovering a token lists its features in the panel
    tokens.nth(3).hover()
    panel = page.locator("#token-panel")
    assert (panel.locator("h2").text_content() or "").startswith("Token 3:")
    hovered = panel.locator("ol.feats li a").all_text_contents()
    assert hovered and all(t.startswith("#") for t in hovered)

    # focus moves with the arrow keys, and the panel follows
    tokens.nth(1).focus()
    assert (panel.locator("h2").text_content() or "").startswith("Token 1:")
    page.keyboard.press("ArrowRight")
    assert (panel.locator("h2").text_content() or "").startswith("Token 2:")
    assert tokens.nth(2).get_attribute("tabindex") == "0" and tokens.nth(1).get_attribute("tabindex") == "-1"

    # a summary feature colours the text without a reload (an unsent edit of the text survives)
    page.get_by_label(LABEL).fill("an edit that was not sent")
    first = page.locator("table.summary tbody tr").first
    feature = (first.locator("a").text_content() or "").lstrip("#")
    first.get_by_role("button").click()
    assert coloured(page), "no token is coloured by the chosen feature"
    assert page.locator("#text-tokens .t.max").count() == 1
    assert first.get_by_role("button").get_attribute("aria-pressed") == "true"
    assert f"hl=tiny%3A{feature}" in page.url
    assert page.get_by_label(LABEL).input_value() == "an edit that was not sent"
    assert f"feature #{feature} of tiny" in (page.locator("#tokens-legend").text_content() or "")
    shot = os.environ.get("JUMPSCOPE_TEXT_SCREENSHOT")  # a picture of the page, e.g. for the README
    if shot:
        tokens.nth(4).hover()
        page.screenshot(path=shot, full_page=True)
    shared = page.url  # the URL reproduces the view
    first.get_by_role("button").click()  # a second press clears the colours
    assert coloured(page) == [] and "hl=" not in page.url

    # a feature in the token panel links to its dashboard
    tokens.nth(3).hover()
    link = panel.locator("ol.feats li a").first
    index = (link.text_content() or "").lstrip("#")
    with page.expect_navigation():
        link.click()
    assert page.url.endswith(f"/saes/tiny/features/{index}")
    assert page.title().startswith(f"tiny · feature {index}")

    page.goto(shared)
    assert coloured(page) and page.locator("#text-tokens .t.max").count() == 1


@pytest.mark.slow
def test_saes_side_by_side(server: str, page: Any) -> None:
    page.goto(f"{server}/saes/tiny/text")
    page.get_by_label(LABEL).fill(SENTENCE)
    page.get_by_label("tiny-l0").check()
    page.get_by_label("tiny-attn").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Show features").click()
    assert "compare=tiny-l0" in page.url and "compare=tiny-attn" in page.url
    assert page.locator("#text-tokens .t").count() > 3
    assert page.locator("table.summary").count() == 3
    page.locator("#text-tokens .t").nth(4).hover()
    assert page.locator("#token-panel h3").all_text_contents() == ["tiny", "tiny-l0", "tiny-attn"]
    page.get_by_role("button", name="Highlight feature", exact=False).nth(0).click()
    assert coloured(page)


@pytest.mark.slow
def test_without_javascript_a_pressed_token_shows_its_features(server: str, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{server}/saes/tiny/text")
        page.get_by_label(LABEL).fill(SENTENCE)
        with page.expect_navigation():
            page.get_by_role("button", name="Show features").click()
        assert page.locator("table.summary tbody tr").count() > 0
        with page.expect_navigation():
            page.locator("#text-tokens .t").nth(5).click()
        assert "pos=5" in page.url
        assert (page.locator("#token-panel h2").text_content() or "").startswith("Token 5:")
        with page.expect_navigation():
            page.locator("table.summary tbody tr").first.get_by_role("button").click()
        assert "hl=tiny%3A" in page.url and coloured(page)
    finally:
        context.close()


@pytest.mark.slow
def test_steer_from_a_dashboard_and_see_two_continuations(server: str, page: Any) -> None:
    import httpx

    top = httpx.get(f"{server}/api/v1/saes/tiny/features", params={"sort": "frequency", "order": "desc", "limit": 1})
    feature = top.json()["items"][0]["index"]
    page.goto(f"{server}/saes/tiny/features/{feature}")
    # the dashboard's ablation, next to the logit lens
    page.get_by_label("Text to zero this feature on").fill(SENTENCE)
    with page.expect_navigation():
        page.get_by_role("button", name="Ablate").click()
    assert "fires on" in (page.locator("#ablate-status").text_content() or "")
    assert page.locator("#ablate-positions tbody tr").count() >= 1
    with page.expect_navigation():
        page.get_by_role("link", name="Steer with this feature").click()
    assert page.get_by_label("Feature of intervention 1").input_value() == str(feature)
    page.get_by_label("Prompt", exact=True).fill("the quick brown fox")
    page.get_by_label("Strength of intervention 1").fill("300")
    page.get_by_label("New tokens").fill("6")
    with page.expect_navigation():
        page.get_by_role("button", name="Steer", exact=True).click()
    baseline = page.locator("#baseline-text .t.new").all_text_contents()
    steered = page.locator("#steered-text .t.new").all_text_contents()
    assert baseline and steered and baseline != steered
    assert page.get_by_role("heading", name="Without interventions").is_visible()
    assert page.get_by_role("heading", name="Steered", exact=True).is_visible()
    shot = os.environ.get("JUMPSCOPE_STEER_SCREENSHOT")  # a picture of the steering page, e.g. for the README
    if shot:
        page.screenshot(path=shot, full_page=True)
    # the run's link reproduces it
    link = page.locator("#run-link").get_attribute("href")
    page.goto(f"{server}{link}")
    assert page.locator("#steered-text .t.new").all_text_contents() == steered
    # search for another feature and add it (Enter in the search field searches, it does not generate)
    page.get_by_label("Words in their top examples or explanations").fill("fox")
    with page.expect_navigation():
        page.get_by_label("Words in their top examples or explanations").press("Enter")
    assert page.locator("#steer-result").count() == 0
    with page.expect_navigation():
        page.get_by_role("button", name="Add feature").first.click()
    assert page.locator('input[name="f"]').count() == 2
