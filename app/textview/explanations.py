"""The latest explanation of features, shown next to them on the text -> features page: the store's "latest
explanation per feature" query (app.interp.store.latest_explanations: status ok, any LLM, newest first)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.orm import Session

from app.interp.store import latest_explanations as stored_explanations


def latest_explanations(session: Session, sae_id: int, indices: Collection[int]) -> dict[int, str]:
    """Feature index -> the text of its latest explanation, for those of `indices` that have one."""
    if not indices:
        return {}
    rows = stored_explanations(session, sae_id=sae_id, features=list(indices))
    return {index: row.text for index, row in rows.items() if row.text}
