"""What a page handler reads from its request: a database session, lenient integers, this URL changed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.requests import Request


@contextmanager
def page_session(request: Request) -> Iterator[Session]:
    """A session whose transaction commits when the block ends (rolls back on error)."""
    with request.app.state.sessions() as session, session.begin():
        yield session


def parse_index(text: str) -> int | None:
    """A non-negative integer from a path segment (a feature index, a job id), else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


def optional_int(text: str, lo: int, hi: int) -> int | None:
    """An integer from lo to hi from a form or query field, else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 16 and lo <= int(text) <= hi else None


def with_params(request: Request, **changes: Any) -> str:
    """This page's path and query with some parameters replaced (None removes one)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    params += [(k, v) for k, v in changes.items() if v is not None]
    return request.url.path + (f"?{urlencode(params)}" if params else "")
