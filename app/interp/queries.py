"""Read queries of automated explanations for the REST API and the pages: an SAE's explain attempts as a
filtered, sorted page; its score distributions beside its random-init baseline's (Fig. 7); and a sweep's
scores per architecture.

Distributions count each feature once, by its latest explanation (app.interp.store.latest_explanations);
the list shows every stored attempt. Unknown SAE names raise NotFound; an unknown sweep gives None.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.catalog.saes import get_sae
from app.core.tables import SCORE_KINDS, Explanation, ExplanationStatus, SAERow, ScoreKind, Sweep
from app.features.explanations import clean_score, score_columns
from app.features.schemas import ScoresOut
from app.interp.distributions import DEFAULT_BINS, score_stats
from app.interp.schemas import ExplanationItem, ExplanationList, ExplanationSummary, GroupScores, SaeScores, SweepScores
from app.interp.store import baseline_sae, latest_explanations, scores_of

ExplanationSort = Literal["feature", "created_at", ScoreKind]
"""What the list sorts by: the feature index, the time, or a score (attempts without it last)."""
SortOrder = Literal["asc", "desc"]
StatusFilter = Literal[ExplanationStatus, "all"]
"""Which attempts the list holds: explanations (ok), unreadable answers (failed), no answer (error), or all."""
BASELINE_GROUP = "random baseline"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_explanations(
    session: Session,
    name: str,
    *,
    q: str | None = None,
    sort: ExplanationSort = "feature",
    order: SortOrder | None = None,
    status: StatusFilter = "ok",
    llm: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> ExplanationList:
    """One page of an SAE's explain attempts. `q` matches the explanation (or, for an attempt without one, the
    LLM's answer); `order` defaults to ascending by feature and time, descending by score."""
    sae = get_sae(session, name)
    scores = score_columns(sae.id)
    conditions: list[Any] = [Explanation.sae_id == sae.id]
    if status != "all":
        conditions.append(Explanation.status == status)
    if llm is not None:
        conditions.append(Explanation.llm == llm)
    if q:
        pattern = _like(q)
        conditions.append(
            or_(Explanation.text.ilike(pattern, escape="\\"),
                and_(Explanation.text.is_(None), Explanation.raw.ilike(pattern, escape="\\")))
        )  # fmt: skip
    base = select(Explanation.id).outerjoin(scores, scores.c.explanation_id == Explanation.id).where(*conditions)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    direction = order or ("asc" if sort in ("feature", "created_at") else "desc")
    column = {"feature": Explanation.feature_index, "created_at": Explanation.created_at,
              **{k: scores.c[k] for k in SCORE_KINDS}}[sort]  # fmt: skip
    ordered = (column.asc() if direction == "asc" else column.desc()).nulls_last()
    ids = session.scalars(base.order_by(ordered, Explanation.feature_index, Explanation.id.desc())
                          .limit(limit).offset(offset)).all()  # fmt: skip
    rows = {r.id: r for r in session.scalars(select(Explanation).where(Explanation.id.in_(ids)))}
    return ExplanationList(total=total, items=[_item(rows[i]) for i in ids if i in rows])


def _item(row: Explanation) -> ExplanationItem:
    explained = row.status == "ok" and row.text is not None
    return ExplanationItem(
        id=row.id, feature=row.feature_index, status=row.status, text=row.text, llm=row.llm,
        prompt_version=row.prompt_version, created_at=row.created_at,
        scores=ScoresOut(**{kind: clean_score(score) for kind, score in scores_of(row).items()}),
        error=None if explained else row.error, raw=None if explained else (row.raw or ""),
    )  # fmt: skip


def _attempts(session: Session, sae_id: int, llm: str | None) -> dict[str, int]:
    query = select(Explanation.status, func.count()).where(Explanation.sae_id == sae_id)
    if llm is not None:
        query = query.where(Explanation.llm == llm)
    counts = {status: count for status, count in session.execute(query.group_by(Explanation.status))}
    return {status: int(counts.get(status, 0)) for status in ("ok", "failed", "error")}


def _score_lists(explanations: Iterable[Explanation]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {kind: [] for kind in SCORE_KINDS}
    for row in explanations:
        for kind, score in scores_of(row).items():
            out[kind].append(score)
    return out


def sae_scores(
    session: Session, sae: SAERow, *, llm: str | None = None, bins: int = DEFAULT_BINS,
    latest: list[Explanation] | None = None,
) -> SaeScores:  # fmt: skip
    """An SAE's explained features, attempts and score distributions (each feature's latest explanation;
    `latest` when the caller has read them already)."""
    if latest is None:
        latest = list(latest_explanations(session, sae_id=sae.id, llm=llm).values())
    lists = _score_lists(latest)
    return SaeScores(
        sae=sae.name, architecture=sae.architecture, features=len(latest), attempts=_attempts(session, sae.id, llm),
        scores={kind: score_stats(values, kind, bins) for kind, values in lists.items()},
    )  # fmt: skip


def explanation_summary(
    session: Session, name: str, *, llm: str | None = None, bins: int = DEFAULT_BINS
) -> ExplanationSummary:
    """The SAE's score distributions and, where NAME-random is registered, its random baseline's (Fig. 7)."""
    sae = get_sae(session, name)
    own = sae_scores(session, sae, llm=llm, bins=bins)
    base = baseline_sae(session, sae)
    baseline = sae_scores(session, base, llm=llm, bins=bins) if base is not None else None
    return ExplanationSummary(**own.model_dump(), llm=llm, baseline=baseline)


def sweep_scores(
    session: Session, name: str, *, llm: str | None = None, bins: int = DEFAULT_BINS
) -> SweepScores | None:
    """Scores pooled per architecture over the sweep's SAEs that have explanations, then over their random
    baselines; None for an unknown sweep."""
    sweep = session.scalar(select(Sweep).where(Sweep.name == name)) if "\x00" not in name else None
    if sweep is None:
        return None
    groups: dict[tuple[str, str], list[tuple[SAERow, list[Explanation]]]] = {}
    seen: set[int] = set()
    for point in sweep.points:
        sae = point.sae
        if sae is None or sae.id in seen:
            continue
        seen.add(sae.id)
        members = [(sae, ("architecture", point.architecture))]
        base = baseline_sae(session, sae)
        if base is not None and base.id not in seen:
            seen.add(base.id)
            members.append((base, ("baseline", BASELINE_GROUP)))
        for row, key in members:
            latest = list(latest_explanations(session, sae_id=row.id, llm=llm).values())
            if latest:
                groups.setdefault(key, []).append((row, latest))
    order = sorted(groups, key=lambda k: k[0] == "baseline")  # architectures in sweep order, baselines last
    out_groups, out_saes = [], []
    for kind, group_name in order:
        explained = groups[(kind, group_name)]
        pooled = _score_lists(e for _, latest in explained for e in latest)
        out_groups.append(GroupScores(
            name=group_name, kind=kind, saes=[s.name for s, _ in explained],
            features=sum(len(latest) for _, latest in explained),
            scores={k: score_stats(v, k, bins) for k, v in pooled.items()},
        ))  # fmt: skip
        out_saes += [sae_scores(session, s, llm=llm, bins=bins, latest=latest) for s, latest in explained]
    return SweepScores(sweep=sweep.name, llm=llm, groups=out_groups, saes=out_saes)
