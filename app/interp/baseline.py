"""The paper's baseline for automated interpretability: a randomly initialised SAE of the same shape.

`random_baseline(engine, NAME, seed=...)` makes sure NAME-random exists and is indexed like NAME:

- weights: `torch.manual_seed(seed)` then `build_sae` of NAME's architecture and shape, as the trainer's
  step 0 does before any data-driven start (trainer.training.trainer), folded with NAME's normalisation
  scale, so it reads the same raw activations; saved in the native format under data_dir and registered
  as NAME-random, with the model, layer, site, context size and dataset of NAME and `cfg.json`'s
  `baseline: {"kind": "random", "of": NAME, "seed": seed}` (app.interp.store.baseline_sae finds it);
- index: the options of NAME's current index run (tokens, dataset or harvest cache, split, context size,
  statistics), so that both SAEs' examples come from the same text.

A second call reuses what is there: the registered baseline if its shape and seed still match NAME (else it
is rebuilt and its old explanations dropped), its index if the options match (else it is indexed again).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from app.catalog.saes import get_sae, import_sae, load_registered
from app.core.database import session_scope
from app.core.tables import Explanation, IndexRun, SAERow
from app.interp.store import baseline_info, baseline_name

INDEX_PARAM_KEYS = ("context_size", "split", "text_column", "activations")
"""Index run params (besides the statistics, dataset and tokens) that the baseline's index must share."""


class BaselineError(ValueError):
    """The baseline cannot be made (e.g. NAME-random is another SAE's name, or NAME has no index)."""


def _stats_fields() -> set[str]:
    from trainer.analysis.feature_stats import StatsConfig

    return {f.name for f in dataclasses.fields(StatsConfig)}


def index_options_of(run: IndexRun, *, device: str, progress: bool = False) -> Any:
    """IndexOptions that repeat `run`: its token count, dataset (or harvest cache), split, context size and
    statistics."""
    from app.features.indexer import IndexOptions
    from trainer.analysis.feature_stats import StatsConfig

    params = run.params or {}
    stats = StatsConfig(**{k: v for k, v in params.items() if k in _stats_fields()})
    activations = params.get("activations")
    dataset = None if run.dataset in (None, "packaged") or activations else run.dataset
    return IndexOptions(
        tokens=max(1, int(run.tokens)), dataset=dataset, text_column=str(params.get("text_column", "text")),
        split=str(params.get("split", "train")) if not activations else "train",
        context_size=None if activations else params.get("context_size"), stats=stats,
        activations=Path(activations) if activations else None, device=device, progress=progress,
    )  # fmt: skip


def _same_index(a: IndexRun | None, b: IndexRun) -> bool:
    """Whether run a was made with the options of run b (same tokens asked, text and statistics)."""
    if a is None or a.status != "complete" or a.dataset != b.dataset:
        return False
    keys = _stats_fields() | set(INDEX_PARAM_KEYS)
    pa, pb = a.params or {}, b.params or {}
    return all(pa.get(k) == pb.get(k) for k in keys) and a.tokens == b.tokens


def random_baseline(
    engine: Engine,
    name: str,
    *,
    seed: int = 0,
    data_dir: Path,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> str:
    """Make NAME-random exist and be indexed like NAME (see the module docstring); returns its name."""
    from app.features.indexer import index_sae

    base = baseline_name(name)
    with session_scope(engine) as session:
        sae = get_sae(session, name)
        if baseline_info(sae) is not None:
            raise BaselineError(f"{name!r} is itself a random baseline: explain the SAE it stands for instead")
        if sae.index_run is None:
            raise BaselineError(f"SAE {name!r} is not indexed yet: run `jumpscope index {name}` first")
        run = sae.index_run  # its columns stay readable after the session (expire_on_commit=False)
        existing = session.scalar(select(SAERow).where(SAERow.name == base))
        info = baseline_info(existing) if existing is not None else None
        if existing is not None and (info is None or info.get("of") != name):
            raise BaselineError(
                f"the name {base!r} is taken by an SAE that is not the random baseline of {name!r}: rename it "
                f"(`jumpscope import ... --name`) or remove it first"
            )
        fits = (
            existing is not None and info is not None and info.get("seed") == seed
            and (existing.architecture, existing.d_in, existing.d_sae) == (sae.architecture, sae.d_in, sae.d_sae)
        )  # fmt: skip
        base_run = existing.index_run if existing is not None else None
        indexed = fits and _same_index(base_run, run)
        if existing is not None and not fits:  # other weights: explanations of the old ones do not apply
            session.execute(delete(Explanation).where(Explanation.sae_id == existing.id))
        sae_row = sae
        if not fits:
            _build(session, name, sae_row, seed, data_dir, replace=existing is not None)
    if not indexed:
        opts = index_options_of(run, device=device)

        def on_progress(done: int, total: int) -> None:
            if progress is not None:
                progress(f"index {base}", done, total)

        index_sae(engine, base, opts, on_progress=on_progress)
    return base


def _build(session: Session, name: str, sae: SAERow, seed: int, data_dir: Path, *, replace: bool) -> None:
    """Build, save and register NAME-random in the caller's transaction (replacing the registered one when
    `replace`)."""
    import torch

    from trainer.formats.native import native_config, save_native
    from trainer.saes.registry import build_sae

    loaded = load_registered(sae)
    sae_cfg = native_config(sae.config or {"architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae})
    training = (sae.config or {}).get("training") or {}
    if training.get("threshold_param") in ("log", "raw"):
        sae_cfg = dataclasses.replace(sae_cfg, threshold_param=training["threshold_param"])
    torch.manual_seed(seed)  # the trainer's seed rule: seed, then build (trainer.training.trainer)
    random_sae = build_sae(sae_cfg).fold(loaded.meta.normalization_scale)
    meta = dataclasses.replace(
        loaded.meta, tokens_trained=0, extra={"baseline": {"kind": "random", "of": name, "seed": seed}}
    )
    with tempfile.TemporaryDirectory(prefix="jumpscope-baseline-") as tmp:
        save_native(Path(tmp) / "sae", random_sae, meta)
        import_sae(session, Path(tmp) / "sae", data_dir=data_dir, name=baseline_name(name), replace=replace)
