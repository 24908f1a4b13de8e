"""The study pages end to end in headless Chromium (Debian's /usr/bin/chromium driven by playwright-python) against
real uvicorn (`jumpscope serve`) on a real store, with ratings posted to that server's rating API:
the plot and the tables render, the CSV download works, and a finished study queue links to its results."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.database import session_scope
from app.core.tables import Feature, SAERow
from app.web.forms import RATER_COOKIE, cookie_value
from tests.app.conftest import BROWSER_TIMEOUT_MS, jumpscope_serve, require_chromium
from tests.app.studies.conftest import FIG6, STUDY, Store, post_ratings

require_chromium()  # skips this module without playwright or Chromium

TIMEOUT_MS = BROWSER_TIMEOUT_MS


@pytest.fixture(scope="module")
def server(study_store: Store) -> Iterator[str]:
    """Base URL of `jumpscope serve` over the study store, with the study FIG6 rated through its rating API."""
    url, _, folder = study_store
    with jumpscope_serve(url, folder) as served, httpx.Client(base_url=served.base, timeout=30) as http:
        post_ratings(http.post, STUDY, FIG6)
        yield served.base


@pytest.fixture(scope="module")
def indexed_server(shared_index: Any) -> Iterator[str]:
    """Base URL of `jumpscope serve` over the shared indexed store (a rating queue needs an indexed SAE)."""
    url, _, _, folder = shared_index
    with jumpscope_serve(url, folder) as served:
        yield served.base


@pytest.mark.slow
def test_study_page_shows_the_plot_and_the_table(server: str, page: Any, tmp_path: Path) -> None:
    page.goto(f"{server}/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Studies").click()
    page.get_by_role("link", name=STUDY).click()
    assert page.title().startswith(f"Study {STUDY}")
    charts = page.locator("figure svg[role=img]")
    assert charts.count() == 2
    assert "Answers per architecture" in (charts.first.get_attribute("aria-label") or "")
    bars = charts.first.locator("g > rect")
    assert bars.count() == 6  # yes, maybe, no for jumprelu and topk
    heights = [bars.nth(i).bounding_box()["height"] for i in range(6)]
    assert heights[0] > heights[1] > 0 and heights[3] == 0 and heights[5] > heights[4] > 0  # 4/6 > 1/6; 0/3 < 1/3 < 2/3
    assert charts.nth(1).locator("g > rect").count() == 9  # per SAE
    rows = page.locator("table[data-groups=architecture] tbody tr")
    assert rows.count() == 2
    jumprelu = rows.nth(0).inner_text()
    assert "jumprelu" in jumprelu and "4 · 67% (30%–90%)" in jumprelu
    assert "0.545" in page.locator("#alpha").inner_text()
    assert page.locator("#verdicts tbody tr").count() == 6
    with page.expect_download() as info:
        page.get_by_role("link", name="ratings.csv").click()
    saved = tmp_path / "ratings.csv"
    info.value.save_as(saved)
    rows_back = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert len(rows_back) == len(FIG6) and {r["study"] for r in rows_back} == {STUDY}


@pytest.mark.slow
def test_a_finished_study_queue_links_to_its_results(
    indexed_server: str, context: Any, page: Any, shared_index: Any
) -> None:
    server = indexed_server
    with session_scope(shared_index[1]) as session:
        run = session.scalar(select(SAERow.index_run_id).where(SAERow.name == "tiny"))
        live = list(session.scalars(select(Feature.index).where(Feature.run_id == run, Feature.fire_count > 0)))
    study = "queue done"
    post_ratings(lambda path, json: httpx.post(server + path, json=json, timeout=30), study,
                 [("tiny", index, "hana", "yes", "") for index in live])  # fmt: skip
    context.add_cookies([{"name": RATER_COOKIE, "value": cookie_value("hana"), "url": server}])
    page.goto(f"{server}/rate?saes=tiny&study=queue+done&blind=1")
    assert page.get_by_role("heading", name=f"All {len(live)} features rated").is_visible()
    page.get_by_role("link", name=f"Results of study “{study}”").click()
    assert page.url == f"{server}/studies/queue%20done"
    assert page.locator("figure svg[role=img]").count() == 2
    assert page.locator("table[data-groups=sae] tbody tr").count() == 1
