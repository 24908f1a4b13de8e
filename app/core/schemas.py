"""Pieces every request body shares: strict parsing, valid text, plain JSON values, no NUL characters, the
health answer; and the one cell rule of every CSV the app writes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator

NO_NUL = r"^[^\x00]*$"
"""Postgres text cannot hold NUL characters: string fields refuse them (422, never a database error)."""

JSON_MAX_DEPTH = 20
"""How deeply a free-form JSON value of a body (a rating's `shown`) may nest objects and arrays."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def _types(annotation: Any) -> set[Any]:
    """The plain types inside an annotation (int | None -> {int, NoneType}; list[int] -> {list, int})."""
    args = get_args(annotation)
    origin = get_origin(annotation)
    found = {annotation} if origin is None else set() if origin in (Union, UnionType) else {origin}
    for arg in args:
        found |= _types(arg)
    return found


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included, at any depth (iteratively: no recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str):
                    yield key
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in value holds a UTF-16 surrogate (JSON's "\\ud800"): not valid Unicode text,
    which neither UTF-8, Postgres nor a JSON response can carry."""
    return any(_SURROGATE.search(text) for text in _strings(value))


INVALID_TEXT = "must be valid Unicode text (no unpaired surrogates such as \\ud800)"


class StrictBody(BaseModel):
    """A request body: unknown keys refused, numbers and booleans strict (true/false is not a number, "yes" and 1
    are not booleans; pydantic's lax mode would read them so), and every string valid Unicode."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _strict_values(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, value in data.items():  # before anything echoes a key or value into an error message
            if isinstance(key, str) and _SURROGATE.search(key):
                raise ValueError(f"keys {INVALID_TEXT}")
            if has_lone_surrogate(value):
                raise ValueError(f"{str(key)[:40]}: {INVALID_TEXT}")
        for name, field in cls.model_fields.items():
            if name not in data:
                continue
            value = data[name]
            items = value if isinstance(value, list) else [value]
            kinds = _types(field.annotation)
            if kinds & {int, float} and any(isinstance(v, bool | str) for v in items):
                raise ValueError(f"{name}: must be a number, not {json.dumps(value)[:40]}")
            if list not in kinds:
                items = [value]
            allowed = (bool, type(None)) if type(None) in kinds else bool
            if bool in kinds and kinds <= {bool, list, type(None)} and not all(isinstance(v, allowed) for v in items):
                raise ValueError(f"{name}: must be true or false, not {json.dumps(value)[:40]}")
        return data


def check_json(value: Any, *, max_chars: int, max_depth: int = JSON_MAX_DEPTH) -> None:
    """ValueError unless value is plain JSON that every backend stores and every reader serves: objects and
    arrays nested at most max_depth deep, string keys, finite numbers, valid Unicode, at most max_chars as JSON."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise ValueError(f"objects and arrays may nest at most {max_depth} deep")
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    raise ValueError("object keys must be strings")
                children: Any = item.values()
            else:
                children = item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite (no NaN or infinity, nor 1e400)")
        elif not (item is None or isinstance(item, str | int)):
            raise ValueError("not a JSON value")
    if has_lone_surrogate(value):
        raise ValueError(INVALID_TEXT)
    if len(json.dumps(value, allow_nan=False)) > max_chars:
        raise ValueError(f"limited to {max_chars:,} characters of JSON")


def plain_json(value: Any, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """value made safe to serve, whatever was stored: non-finite numbers -> null, surrogates -> U+FFFD,
    objects and arrays deeper than max_depth -> null, anything that is not JSON -> its text."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list) and max_depth <= 0:
        return None
    if isinstance(value, dict):
        return {plain_json(str(k)): plain_json(v, max_depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v, max_depth - 1) for v in value]
    return plain_json(str(value))


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


CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection")."""


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text, never runs: text starting like a formula gets a leading
    single quote (OWASP's advice). Numbers and booleans stay as they are (their minus sign is harmless)."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """Every cell of a csv.DictWriter row made safe (csv_cell)."""
    return {key: csv_cell(value) for key, value in row.items()}


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["ok", "unavailable"]
    encoder: Literal["ok", "unavailable"]
