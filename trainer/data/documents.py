"""A document (a stable id and its text) and the fixed held-out split every dataset shares."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

HELDOUT_EVERY = 20
"""One document in this many (by a stable hash of its id) is held out for evaluation."""


class Document(NamedTuple):
    """One document of a dataset: a stable id and its text."""

    id: str
    text: str


def is_heldout(doc_id: str) -> bool:
    """Whether a document id belongs to the held-out split (a fixed 1 in `HELDOUT_EVERY`, by BLAKE2b hash)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_EVERY == 0


def recording(docs: Iterable[Document], ids: list[str]) -> Iterator[Document]:
    """The documents, appending each one's id to `ids` as it is read (a packed batch's doc_index indexes `ids`)."""
    for doc in docs:
        ids.append(doc.id)
        yield doc
