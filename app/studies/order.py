"""The order a rater sees a queue's features in: by SAE and index, or shuffled per study and rater.

The order of a study is seeded by (study, rater), so a reload or another server process shows
the same one. Orders are cached (a small thread-safe LRU) per store, index runs, study and rater.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.tables import Feature, SAERow

ORDER_CACHE_SIZE = 32

_ORDERS: OrderedDict[tuple[Any, ...], list[tuple[str, int]]] = OrderedDict()
_ORDERS_LOCK = threading.Lock()


def queue_seed(study: str, rater: str) -> int:
    """The shuffle seed of a study queue: the same for the same study and rater, so a reload keeps the order."""
    digest = hashlib.sha256(f"jumpscope-queue\x00{study}\x00{rater}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def queue_order(items: Sequence[tuple[str, int]], *, shuffle: bool, study: str, rater: str) -> list[tuple[str, int]]:
    """The order a rater sees (sae name, feature index) items in: by SAE and index, or shuffled per study+rater."""
    ordered = sorted(items)
    if shuffle:
        random.Random(queue_seed(study, rater)).shuffle(ordered)
    return ordered


def next_position(order: Sequence[tuple[str, int]], rated: set[tuple[str, int]], after: int) -> int | None:
    """The first unrated position after `after`, wrapping around; None when everything is rated."""
    n = len(order)
    for step in range(1, n + 1):
        pos = (after + step) % n
        if order[pos] not in rated:
            return pos
    return None


def live_order(session: Session, names: list[str], study: str, rater: str) -> list[tuple[str, int]]:
    """The live features of the SAEs in the rater's order (shuffled when there is a study), cached."""
    runs = tuple(
        session.execute(select(SAERow.name, SAERow.index_run_id).where(SAERow.name.in_(names)).order_by(SAERow.name))
    )
    key = (str(session.get_bind().engine.url), runs, study, rater)
    with _ORDERS_LOCK:
        if key in _ORDERS:
            _ORDERS.move_to_end(key)
            return _ORDERS[key]
    items = session.execute(
        select(SAERow.name, Feature.index)
        .join(Feature, Feature.run_id == SAERow.index_run_id)
        .where(SAERow.name.in_(names), Feature.fire_count > 0)
    ).all()
    order = queue_order([(n, i) for n, i in items], shuffle=bool(study), study=study, rater=rater)
    with _ORDERS_LOCK:
        _ORDERS[key] = order
        while len(_ORDERS) > ORDER_CACHE_SIZE:
            _ORDERS.popitem(last=False)
    return order
