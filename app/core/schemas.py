"""Pieces every request body shares: strict parsing, no NUL characters, the health answer."""

from __future__ import annotations

import json
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator

NO_NUL = r"^[^\x00]*$"
"""Postgres text cannot hold NUL characters: string fields refuse them (422, never a database error)."""


def _types(annotation: Any) -> set[Any]:
    """The plain types inside an annotation (int | None -> {int, NoneType}; list[int] -> {list, int})."""
    args = get_args(annotation)
    found = {get_origin(annotation) or annotation}
    for arg in args:
        found |= _types(arg)
    return found


class StrictBody(BaseModel):
    """A request body: unknown keys refused, and true/false never read as a number (pydantic's lax mode would)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                items = value if isinstance(value, list) else [value]
                numeric = _types(field.annotation) & {int, float}
                if numeric and any(isinstance(v, bool | str) for v in items):
                    raise ValueError(f"{name}: must be a number, not {json.dumps(value)[:40]}")
        return data


def without_nul(value: Any) -> Any:
    """value with every NUL character (in keys and strings, at any depth) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def no_nul(value: Any, where: str) -> None:
    """Postgres text cannot hold NUL characters: refuse them up front (422, not a database error)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_nul(key, where)
            no_nul(item, where)
    elif isinstance(value, list):
        for item in value:
            no_nul(item, where)


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["ok", "unavailable"]
    encoder: Literal["ok", "unavailable"]
