"""The same-origin check of HTML form posts compares the whole origin: scheme, host and port (default ports
filled in), against the request's own scheme (as the server sees it) and Host header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.web.forms import same_origin
from tests.app.test_api import make_client

CSRF = "c" * 43


Case = tuple[str | None, str | None, str, str | None]


def test_same_origin() -> None:
    same: list[Case] = [
        ("http://testserver", None, "http", "testserver"),
        ("http://testserver:80", None, "http", "testserver"),
        ("HTTP://TestServer", None, "http", "testserver"),
        ("https://example.org", None, "https", "example.org:443"),
        ("https://example.org:8443", None, "https", "example.org:8443"),
        ("http://[::1]:8000", None, "http", "[::1]:8000"),
        (None, "http://testserver/saes/tiny?x=1", "http", "testserver"),
        (None, None, "http", "testserver"),  # neither header: the CSRF token decides alone
    ]
    for origin, referer, scheme, host in same:
        assert same_origin(origin, referer, scheme, host), (origin, referer, scheme, host)
    other: list[Case] = [
        ("https://testserver", None, "http", "testserver"),  # another scheme is another origin
        ("http://testserver", None, "https", "testserver"),
        ("http://example.org:8443", None, "https", "example.org:8443"),
        ("https://example.org:443", None, "https", "example.org:8443"),
        ("http://testserver:8080", None, "http", "testserver"),
        ("http://evil.example", None, "http", "testserver"),
        ("http://testserver.evil.example", None, "http", "testserver"),
        ("http://user@testserver", None, "http", "testserver"),
        ("http://testserver:abc", None, "http", "testserver"),
        ("ftp://testserver", None, "http", "testserver"),
        ("testserver", None, "http", "testserver"),
        ("null", None, "http", "testserver"),
        ("http://testserver", None, "http", None),
        ("http://[::1", None, "http", "[::1]"),
        (None, "https://testserver/x", "http", "testserver"),
        ("https://testserver", "http://testserver/x", "http", "testserver"),  # Origin wins over Referer
    ]
    for origin, referer, scheme, host in other:
        assert not same_origin(origin, referer, scheme, host), (origin, referer, scheme, host)


@pytest.fixture(params=["http", "https"])
def client(request: pytest.FixtureRequest, store: Engine, db_url: str, tmp_path: Path) -> Any:
    with make_client(db_url, tmp_path) as c:
        c.base_url = c.base_url.copy_with(scheme=request.param)
        c.cookies.set("jumpscope_csrf", CSRF)
        yield c


def test_forms_refuse_another_scheme(client: TestClient) -> None:
    scheme = client.base_url.scheme
    other = "https" if scheme == "http" else "http"
    form = {"csrf": CSRF, "rater": "origin", "next": "/rate"}
    for headers in [{"origin": f"{other}://testserver"}, {"referer": f"{other}://testserver/rate"}]:
        reply = client.post("/identity", data=form, headers=headers, follow_redirects=False)
        assert reply.status_code == 403 and "Cross-site request refused" in reply.text, headers
        reply = client.post("/saes/nope/features/1/rate", data={**form, "label": "yes"}, headers=headers)
        assert reply.status_code == 403 and "Cross-site request refused" in reply.text, headers
    for headers in [{"origin": f"{scheme}://testserver"}, {"referer": f"{scheme}://testserver/rate"}, {}]:
        reply = client.post("/identity", data=form, headers=headers, follow_redirects=False)
        assert reply.status_code == 303, (headers, reply.text[:300])
        reply = client.post("/saes/nope/features/1/rate", data={**form, "label": "yes"}, headers=headers)
        assert reply.status_code == 404, headers  # past the origin check: the SAE is unknown
