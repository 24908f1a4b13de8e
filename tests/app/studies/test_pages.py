"""The study pages through FastAPI's test client, on SQLite and Postgres: /studies, /studies/{study} with its plot,
tables, agreement and unblinded list, the 404 page, the link in the navigation (the rating queue's link to the
results: test_browser.py)."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from tests.app.studies.conftest import FIG6, HTML_NOTE, STUDY, Store, post_ratings
from tests.app.test_api import make_client

SVG_NS = {"s": "http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def client(study_store: Store) -> Iterator[TestClient]:
    url, _, folder = study_store
    with make_client(url, folder) as c:
        post_ratings(c.post, STUDY, FIG6)
        post_ratings(c.post, "solo", [("tiny", 7, "dora", "yes", "")], blinded=False)
        yield c


def charts(page: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", page, flags=re.S)]


def test_studies_page_lists_every_study(client: TestClient) -> None:
    page = client.get("/studies")
    assert page.status_code == 200
    assert f'href="/studies/{quote(STUDY)}"' in page.text and 'href="/studies/solo"' in page.text
    assert '<a href="/studies" aria-current="page">Studies</a>' in page.text
    assert 'href="/studies"' in client.get("/").text  # in the navigation of every page


def test_study_page_shows_the_plot_tables_agreement_and_list(client: TestClient) -> None:
    page = client.get(f"/studies/{quote(STUDY)}")
    assert page.status_code == 200, page.text
    by_arch, by_sae = charts(page.text)
    for chart, groups in [(by_arch, 2), (by_sae, 3)]:
        assert len(chart.findall(".//s:g/s:rect", SVG_NS)) == 3 * groups
    titles = [t.text for t in by_arch.iterfind(".//s:g/s:title", SVG_NS)]
    assert "jumprelu: yes 4 of 6 (67%, 95% interval 30% to 90%)" in titles
    assert "topk: no 2 of 3 (67%, 95% interval 21% to 94%)" in titles
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.text))
    assert "9 ratings of 6 features from 3 SAEs (jumprelu, topk) by 3 raters; rated blinded" in " ".join(text.split())
    assert "0.545" in text and "0.778" in text  # alpha 6/11 nominal, 7/9 ordinal
    assert "4 · 67% (30%–90%)" in text  # jumprelu's yes in the table
    assert str(escape(HTML_NOTE)) in page.text and HTML_NOTE not in page.text  # notes are escaped
    assert 'href="/saes/tiny-topk/features/1"' in page.text
    api = f"/api/v1/studies/{quote(STUDY, safe='')}"
    for link in [f"{api}.csv", f"{api}.json", api]:
        assert f'href="{link}"' in page.text
        assert client.get(link).status_code == 200
    assert "rate?saes=tiny,tiny-b,tiny-topk&amp;study=fig6+pilot%2Fround+1&amp;blind=1" in page.text


def test_undefined_agreement_says_why(client: TestClient) -> None:
    page = client.get("/studies/solo")
    assert page.status_code == 200
    assert "Krippendorff’s α is undefined here: no feature was rated by two or more raters" in page.text


def test_unknown_study_is_a_404_page(client: TestClient) -> None:
    page = client.get("/studies/nope", headers={"accept": "text/html"})
    assert page.status_code == 404 and "No such study" in page.text and "&#39;nope&#39;" in page.text
    assert client.get("/studies/a%00b", headers={"accept": "text/html"}).status_code == 404
