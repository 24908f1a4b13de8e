"""One rule for the names of people (app.auth.names): ASCII letters, digits and . _ -, 1 to 64 characters.

`jumpscope users add`, the rater of a rating posted to the JSON API, the no-JS rating form, the rater
cookie and the identity form all follow it, on SQLite and Postgres: no rater is called `=1+1` (a formula
in ratings.csv) or U+202E + `admin` (a name shown backwards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from app.auth.names import NAME_RULE, check_name, is_plain_name
from app.cli import app as cli_app
from app.core.database import session_scope
from app.core.tables import ApiToken, Rating
from tests.app.test_api import make_client

BAD = ["=1+1", "\u202eadmin", "Zoë", "ann smith", " ann", "ann\n", "a/b", "<b>", "a" * 65, "", "[/]", "ａｄｍｉｎ"]
GOOD = ["ann", "A.b_c-9", "x" * 64, "1", "r2.d2"]


def test_the_rule() -> None:
    for name in GOOD:
        assert is_plain_name(name) and check_name(name) == name
    for name in BAD:
        assert not is_plain_name(name), name
        with pytest.raises(ValueError, match="ASCII letters, digits"):
            check_name(name)
    with pytest.raises(ValueError) as err:
        check_name("\u202eadmin")
    assert "\u202e" not in str(err.value) and "\\u202e" in str(err.value)  # quoted, never shown raw


def test_users_add_refuses_names_that_are_not_plain(store: Engine, db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": db_url, "JUMPSCOPE_DATA_DIR": str(tmp_path / "data")}
    for name in BAD:
        result = runner.invoke(cli_app, ["users", "add", name], env=env)
        assert result.exit_code != 0, name
        assert "ASCII letters, digits" in result.output, (name, result.output)
    for name in ["ann", "A.b_c-9", "x" * 64]:
        result = runner.invoke(cli_app, ["users", "add", name], env=env)
        assert result.exit_code == 0, result.output
    with session_scope(store) as session:
        assert sorted(session.scalars(select(ApiToken.name))) == sorted(["ann", "A.b_c-9", "x" * 64])


@pytest.fixture
def client(registered: tuple[Engine, Any], db_url: str, tmp_path: Path) -> Any:
    with make_client(db_url, tmp_path) as c:
        c.cookies.set("jumpscope_csrf", "c" * 43)
        yield c


def raters(engine: Engine) -> list[str]:
    with session_scope(engine) as session:
        return sorted(session.scalars(select(Rating.rater)))


def test_raters_follow_the_rule(client: TestClient, registered: tuple[Engine, Any]) -> None:
    engine = registered[0]
    api = "/api/v1/saes/tiny/features/3/ratings"
    for name in BAD:
        reply = client.post(api, json={"rater": name, "label": "yes"})
        assert reply.status_code == 422, name
        detail = reply.json()["detail"]
        assert detail.startswith("rater: ") and NAME_RULE in detail and "\n" not in detail, detail
    # the no-JS form: a name typed into it, or remembered by the rater cookie
    form = {"csrf": "c" * 43, "label": "yes", "next": "/"}
    typed = [name for name in BAD if name.strip() and not is_plain_name(name.strip())]  # forms strip spaces
    for name in typed:
        reply = client.post("/saes/tiny/features/3/rate", data={**form, "rater": name})
        assert reply.status_code == 422 and "Rating not saved" in reply.text and NAME_RULE in reply.text, name
    client.cookies.set("jumpscope_rater", "%3D1%2B1")  # "=1+1", set before the rule
    reply = client.post("/saes/tiny/features/3/rate", data=form)
    assert reply.status_code == 422 and "Name needed" in reply.text
    # the identity form (who rates in this browser)
    for name in [*typed, " "]:
        reply = client.post("/identity", data={"csrf": "c" * 43, "rater": name, "next": "/"})
        assert reply.status_code == 422 and "Name needed" in reply.text and NAME_RULE in reply.text, name
    assert client.cookies.get("jumpscope_rater") == "%3D1%2B1"  # never replaced by a refused name
    assert raters(engine) == []
    for name in GOOD:
        assert client.post(api, json={"rater": name, "label": "maybe"}).status_code == 201
    client.cookies.clear()
    client.cookies.set("jumpscope_csrf", "c" * 43)
    reply = client.post("/identity", data={"csrf": "c" * 43, "rater": "cookie.rater", "next": "/"},
                        follow_redirects=False)  # fmt: skip
    assert reply.status_code == 303 and client.cookies.get("jumpscope_rater") == "cookie.rater"
    assert client.post("/saes/tiny/features/3/rate", data=form, follow_redirects=False).status_code == 303
    assert raters(engine) == sorted([*GOOD, "cookie.rater"])
