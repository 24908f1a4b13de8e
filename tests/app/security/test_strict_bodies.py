"""Every request body is a StrictBody: unknown keys refused, true/false never a number, and booleans strict
("yes", "no", 0 and 1 are not booleans: pydantic's lax mode reads them so), each a one-line 422, on SQLite
and Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine, func, select

from app.core.database import session_scope
from app.core.schemas import StrictBody
from app.core.settings import Settings
from app.core.tables import Rating
from app.server import create_app
from tests.app.test_api import make_client

NOT_BOOLEANS: list[Any] = ["yes", "no", "true", "false", "", 0, 1, 0.0, [True], {"x": True}]


def strict_bodies() -> dict[str, type[BaseModel]]:
    """Every StrictBody subclass, by name (as the OpenAPI document names its schema)."""
    found: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [StrictBody]
    while todo:
        model = todo.pop()
        found[model.__name__] = model
        todo.extend(model.__subclasses__())
    return found


def refs(schema: Any) -> set[str]:
    """The component names a request body's schema refers to (directly, or through anyOf / oneOf)."""
    if isinstance(schema, dict):
        own = {schema["$ref"].rsplit("/", 1)[-1]} if "$ref" in schema else set()
        return own.union(*(refs(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(refs(v) for v in schema))
    return set()


def test_every_request_body_is_a_strict_body(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", data_dir=tmp_path / "data",
                              runs_dir=tmp_path / "runs", device="cpu"))  # fmt: skip
    bodies = {
        f"{method.upper()} {path}": refs(operation["requestBody"])
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    }
    assert len(bodies) >= 3 and all(bodies.values()), bodies
    names = set().union(*bodies.values())
    assert {"RatingIn", "EncodeText", "EncodeTexts", "TrainJobIn", "IndexJobIn"} <= names
    strict = strict_bodies()
    assert {where: sorted(models - strict.keys()) for where, models in bodies.items() if models - strict.keys()} == {}
    for name in names:  # pages' forms are not JSON bodies; the models with these names are StrictBodies
        assert issubclass(strict[name], StrictBody)


class Flags(StrictBody):
    flag: bool = False
    maybe: bool | None = None
    many: list[bool] = Field(default_factory=list)
    count: int = 0


def test_strict_body_booleans() -> None:
    assert Flags.model_validate({"flag": True, "maybe": None, "many": [True, False], "count": 3}).many == [True, False]
    for field in ["flag", "maybe", "many"]:
        for value in NOT_BOOLEANS:
            with pytest.raises(ValidationError, match=f"{field}: must be true or false"):
                Flags.model_validate({field: [value] if field == "many" else value})
    for value in [True, "1", None]:
        with pytest.raises(ValidationError):
            Flags.model_validate({"count": value})


@pytest.fixture
def client(registered: tuple[Engine, Any], db_url: str, tmp_path: Path) -> Any:
    with make_client(db_url, tmp_path) as c:
        yield c


def test_booleans_are_strict_over_http(client: TestClient, registered: tuple[Engine, Any]) -> None:
    url = "/api/v1/saes/tiny/features/2/ratings"
    for value in NOT_BOOLEANS:
        reply = client.post(url, json={"rater": "strict", "label": "yes", "blinded": value})
        assert reply.status_code == 422, value
        detail = reply.json()["detail"]
        assert "blinded: must be true or false" in detail and "\n" not in detail, detail
        reply = client.post("/api/v1/saes/tiny/encode", json={"text": "the fox", "include_bos": value})
        assert reply.status_code == 422, value
        assert "include_bos: must be true or false" in reply.json()["detail"]
    with session_scope(registered[0]) as session:
        assert session.scalar(select(func.count()).select_from(Rating)) == 0
    stored = client.post(url, json={"rater": "strict", "label": "yes", "blinded": True})
    assert stored.status_code == 201 and stored.json()["blinded"] is True
    encoded = client.post("/api/v1/saes/tiny/encode", json={"text": "the fox", "include_bos": False})
    assert encoded.status_code == 200, encoded.text
