"""The latest explanation of features, shown next to them on the text -> features page.

STUB: the store of automated explanations (app/interp/store.py, tables `explanations` and
`explanation_scores`, issue 18) has not landed yet. Until it does, this returns nothing and the
page shows no explanations; once it lands, this function calls its "latest explanation per
feature" query and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.orm import Session


def latest_explanations(session: Session, sae_id: int, indices: Collection[int]) -> dict[int, str]:
    """Feature index -> the text of its latest explanation, for those of `indices` that have one (STUB: none)."""
    del session, sae_id, indices  # STUB until app/interp/store.py lands (see the module docstring)
    return {}
