"""The `jumpscope` command line (interface.md). Heavy imports stay inside the commands."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.core.settings import Settings
from app.pipeline.stages import evaluate_sae_dir, lm_metadata, lm_source, write_activation_cache
from app.sweeps.cli import sweep_command

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from trainer.data.activations import ActivationSource


app = typer.Typer(
    name="jumpscope",
    help="Train, evaluate, inspect and rate JumpReLU sparse autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


# Tuned on the packaged Gemma 3 270M, layer 9 resid, width 4096, short recipe (see README).
DEMO_L0_COEFF = 2e-4


class Arch(StrEnum):
    jumprelu = "jumprelu"
    relu = "relu"
    topk = "topk"
    gated = "gated"


class ThresholdParam(StrEnum):
    log = "log"
    raw = "raw"


class Recipe(StrEnum):
    paper = "paper"
    short = "short"


class BDecInit(StrEnum):
    zeros = "zeros"
    mean = "mean"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit to raise (code 2)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=2)


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="Logging level: debug, info, warning.")] = "warning",
) -> None:
    """jumpscope: JumpReLU sparse autoencoders on Gemma activations."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


def _synthetic_source(d_in: int, features: int, l0: float, seed: int) -> ActivationSource:
    from trainer.data.activations import SyntheticSource, SyntheticSpec

    return SyntheticSource(SyntheticSpec(d_in=d_in, n_features=features, active_per_token=l0, seed=seed))


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Output folder: the native SAE, metrics.jsonl, checkpoint.pt.")],
    activations: Annotated[Path | None, typer.Option(help="Train from cached activation shards in DIR.")] = None,
    synthetic: Annotated[bool, typer.Option(help="Train on synthetic data with a known sparse dictionary.")] = False,
    model: Annotated[
        str | None,
        typer.Option(help="Stream live activations of this model: 'gemma3-270m', a local folder or a hub id."),
    ] = None,
    layer: Annotated[int | None, typer.Option(help="--model: decoder layer (default: the middle one).")] = None,
    site: Annotated[str, typer.Option(help="--model: resid, mlp or attn.")] = "resid",
    dataset: Annotated[
        str | None,
        typer.Option(help="--model: HF dataset, local text/jsonl/parquet file or folder (default: packaged)."),
    ] = None,
    text_column: Annotated[str, typer.Option(help="--model: the dataset column holding the text.")] = "text",
    context_size: Annotated[
        int | None, typer.Option(help="--model: tokens per sequence (default 128 CPU, 1024 GPU).")
    ] = None,
    model_batch: Annotated[int, typer.Option(help="--model: sequences per forward pass.")] = 8,
    synthetic_d_in: Annotated[int, typer.Option(help="Synthetic data: width d_in.")] = 64,
    synthetic_features: Annotated[int, typer.Option(help="Synthetic data: true dictionary size.")] = 256,
    synthetic_l0: Annotated[float, typer.Option(help="Synthetic data: true features active per token.")] = 4.0,
    arch: Annotated[Arch, typer.Option(help="SAE architecture.")] = Arch.jumprelu,
    width: Annotated[int, typer.Option(help="Number of latents d_sae.")] = 16_384,
    l0_coeff: Annotated[float | None, typer.Option(help="JumpReLU lambda (L0 penalty, normalised units).")] = None,
    l1_coeff: Annotated[float | None, typer.Option(help="ReLU / Gated lambda (decoder-norm-weighted L1).")] = None,
    k: Annotated[int, typer.Option(help="TopK: active latents per token.")] = 32,
    threshold_param: Annotated[
        ThresholdParam | None,
        typer.Option(help="JumpReLU: train log(theta) (paper) or raw theta (short runs). Default: from --recipe."),
    ] = None,
    recipe: Annotated[
        Recipe,
        typer.Option(help="paper: the Gemma Scope recipe. short: raw theta, lr 1e-3, warm-ups scaled to the run."),
    ] = Recipe.paper,
    bandwidth: Annotated[float, typer.Option(help="JumpReLU STE bandwidth epsilon.")] = 0.001,
    tokens: Annotated[int, typer.Option(help="Training tokens.")] = 4_000_000_000,
    batch_size: Annotated[int, typer.Option(help="Tokens per step (global across processes).")] = 4096,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (paper: 7e-5).")] = None,
    lr_warmup_steps: Annotated[int | None, typer.Option(help="Cosine LR warm-up steps (paper: 1000).")] = None,
    sparsity_warmup_steps: Annotated[
        int | None, typer.Option(help="Linear lambda warm-up steps (paper: 10000).")
    ] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Clip gradient norm (deviation; paper: none).")] = None,
    b_dec_init: Annotated[
        BDecInit | None, typer.Option(help="Start b_dec at zeros (paper) or the data mean (default: from --recipe).")
    ] = None,
    shuffle_buffer: Annotated[
        int, typer.Option(help="Tokens in the shuffle buffer (0 = none; --model uses 262,144 unless set).")
    ] = 0,
    no_normalize: Annotated[
        bool, typer.Option("--no-normalize", help="Do not scale inputs to unit mean squared norm.")
    ] = False,
    no_pre_enc_bias: Annotated[
        bool, typer.Option("--no-pre-enc-bias", help="Do not subtract b_dec before encoding.")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = Device.auto,
    bf16: Annotated[bool, typer.Option(help="GPU: bf16 autocast for matmuls (weights stay fp32).")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0 = at the end only).")] = 1000,
    log_every: Annotated[int, typer.Option(help="metrics.jsonl line every N steps.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and shuffling.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one SAE (launch with `torchrun --nproc-per-node N -m app train ...` for DDP)."""
    from trainer.data.activations import ActivationError, ShardSource
    from trainer.formats import SAEMetadata
    from trainer.training.config import SAEConfig, TrainConfig, resolve_recipe
    from trainer.training.trainer import Trainer, TrainingInterrupted

    if sum([activations is not None, synthetic, model is not None]) != 1:
        raise fail("give exactly one activation source: --activations DIR, --model NAME or --synthetic")
    if arch is Arch.jumprelu and l1_coeff is not None:
        raise fail("--l1-coeff is for --arch relu or gated; JumpReLU takes --l0-coeff")
    if arch in (Arch.relu, Arch.gated) and l0_coeff is not None:
        raise fail(f"--l0-coeff is for --arch jumprelu; {arch.value} takes --l1-coeff")
    try:
        meta = SAEMetadata()
        source: ActivationSource
        if activations is not None:
            shards = ShardSource(activations, loop=True)
            source = shards
            meta = SAEMetadata(
                model=shards.meta.get("model"),
                layer=shards.meta.get("layer"),
                site=shards.meta.get("site"),
                dataset=shards.description,
                context_size=shards.meta.get("context_size"),
                prepend_bos=bool(shards.meta.get("prepend_bos", True)),
            )
        elif model is not None:
            lm = lm_source(model, layer, site, dataset, text_column, "train", context_size, model_batch, device.value)
            source, meta = lm, lm_metadata(lm)
            lm.cfg.loop = True
            if shuffle_buffer == 0:  # consecutive tokens of one document are strongly correlated
                shuffle_buffer = 262_144
        else:
            source = _synthetic_source(synthetic_d_in, synthetic_features, synthetic_l0, seed)
            meta = SAEMetadata(dataset="synthetic", extra={"synthetic": asdict(source.spec)})  # type: ignore[attr-defined]
        explicit: set[str] = set()
        sae_kwargs: dict[str, Any] = {}
        if threshold_param is not None:
            sae_kwargs["threshold_param"] = threshold_param.value
            explicit.add("threshold_param")
        sae_cfg = SAEConfig(
            d_in=source.d_in,
            d_sae=width,
            architecture=arch.value,
            k=k,  # type: ignore[arg-type]
            bandwidth=bandwidth,
            use_pre_enc_bias=not no_pre_enc_bias,
            **sae_kwargs,
        )
        train_kwargs: dict[str, Any] = {}
        if b_dec_init is not None:
            train_kwargs["b_dec_init"] = b_dec_init.value
            explicit.add("b_dec_init")
        for name, value in (
            ("lr", lr),
            ("lr_warmup_steps", lr_warmup_steps),
            ("sparsity_warmup_steps", sparsity_warmup_steps),
        ):
            if value is not None:
                train_kwargs[name] = value
                explicit.add(name)
        coeff = l0_coeff if arch is Arch.jumprelu else l1_coeff
        train_cfg = TrainConfig(
            tokens=tokens,
            batch_size=batch_size,
            sparsity_coeff=coeff,
            grad_clip=grad_clip,
            shuffle_buffer=shuffle_buffer,
            normalize=not no_normalize,
            device=device.value,  # type: ignore[arg-type]
            autocast_bf16=bf16,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            seed=seed,
            recipe=recipe.value,
            **train_kwargs,  # type: ignore[arg-type]
        )
        resolve_recipe(sae_cfg, train_cfg, explicit)
        result = Trainer(sae_cfg, train_cfg, source, out, meta, progress=progress).fit(resume=resume)
    except TrainingInterrupted:
        console.print(f"interrupted: checkpoint written; continue with --resume --out {out}")
        raise typer.Exit(code=130) from None
    except (ValueError, FileNotFoundError, ActivationError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"saved {result.sae.cfg.architecture} SAE ({result.steps} steps) to {result.out_dir}")


def _store(settings: Settings | None = None) -> Engine:
    from app.core.database import StoreError, open_store

    settings = settings or Settings()
    try:
        return open_store(settings.database_url)
    except StoreError as err:
        raise fail(str(err)) from None


class Format(StrEnum):
    auto = "auto"
    native = "native"
    gemmascope = "gemmascope"
    saelens = "saelens"


class ExportFormat(StrEnum):
    native = "native"
    gemmascope = "gemmascope"
    saelens = "saelens"


db_app = typer.Typer(help="Database schema: apply Alembic migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations to DATABASE_URL (or JUMPSCOPE_DATABASE_URL; default sqlite:///jumpscope.db)."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.core.database import current_revision, engine_for, upgrade

    url = Settings().database_url
    try:
        upgrade(url, revision)
        now = current_revision(engine_for(url))
    except (SQLAlchemyError, OSError) as err:
        raise fail(f"cannot migrate {url}: {str(getattr(err, 'orig', err) or err).strip()}") from None
    console.print(f"database {engine_for(url).url!r} is at revision {now}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's migration revision and the latest one."""
    from app.core.database import current_revision, engine_for, head_revision

    url = Settings().database_url
    typer.echo(f"current: {current_revision(engine_for(url))}  head: {head_revision()}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A native folder, a Gemma Scope params.npz or a SAELens folder.")],
    format: Annotated[Format, typer.Option(help="Format of PATH (auto detects it).")] = Format.auto,
    name: Annotated[str | None, typer.Option(help="URL-safe name (default: MODEL-lLAYER-SITE-WIDTH).")] = None,
    model: Annotated[str | None, typer.Option(help="The SAE's model, where the file does not say.")] = None,
    layer: Annotated[int | None, typer.Option(help="The SAE's layer, where the file does not say.")] = None,
    site: Annotated[str | None, typer.Option(help="resid, mlp or attn, where the file does not say.")] = None,
    metrics: Annotated[
        Path | None, typer.Option(help="A JSON file of eval metrics (`jumpscope eval --json`) to store with it.")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an SAE registered under the same name.")] = False,
) -> None:
    """Register an SAE in the database (its weights are kept as a native folder under the data dir)."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.catalog.saes import RegistryError, import_sae, ratings_count
    from app.core.database import session_scope
    from trainer.formats import SAEFormatError

    settings = Settings()
    engine = _store(settings)
    extra: dict[str, Any] | None = None
    if metrics is not None:
        try:
            extra = json.loads(metrics.read_text())
        except (OSError, ValueError) as err:
            raise fail(f"--metrics {metrics}: {err}") from None
    try:
        with session_scope(engine) as session:
            row, replaced = import_sae(
                session, path, data_dir=settings.data_dir, format=format.value, name=name, model=model,
                layer=layer, site=site, replace=replace, metrics=extra,
            )  # fmt: skip
            kept = ratings_count(session, row) if replaced else 0
            summary = f"{row.name}: {row.architecture} {row.d_in}x{row.d_sae}, weights in {row.path}"
    except (RegistryError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    except SQLAlchemyError as err:
        raise fail(f"database error: {str(getattr(err, 'orig', err)).strip()}") from None
    verb = "replaced" if replaced else "registered"
    console.print(f"{verb} {summary}" + (f" ({kept} ratings kept, index dropped)" if replaced else ""))


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="A registered SAE.")],
    out: Annotated[Path, typer.Argument(help="Folder (or .npz file for gemmascope) to write.")],
    format: Annotated[ExportFormat, typer.Option(help="Output format.")] = ExportFormat.native,
) -> None:
    """Write a registered SAE as a native folder, a Gemma Scope params.npz or a SAELens folder."""
    from app.catalog.saes import RegistryError, export_sae
    from app.core.database import session_scope
    from trainer.formats import SAEFormatError

    engine = _store()
    try:
        with session_scope(engine) as session:
            written = export_sae(session, name, out, format.value)
    except (RegistryError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"wrote {name} as {format.value} to {written}")


@app.command()
def index(
    name: Annotated[str, typer.Argument(help="A registered SAE (see `jumpscope import`).")],
    tokens: Annotated[int, typer.Option(help="Non-special tokens to stream through model and SAE.")] = 1_000_000,
    dataset: Annotated[
        str | None, typer.Option(help="HF dataset, local text/jsonl/parquet file or folder (default: packaged).")
    ] = None,
    text_column: Annotated[str, typer.Option(help="The dataset column holding the text.")] = "text",
    split: Annotated[str, typer.Option(help="Dataset split (packaged corpus: train or heldout).")] = "train",
    context_size: Annotated[
        int | None, typer.Option(help="Tokens per sequence (default: the SAE's training context).")
    ] = None,
    model_batch: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    top_k: Annotated[int, typer.Option(help="Top activating examples per feature (one per document).")] = 20,
    window: Annotated[int, typer.Option(help="Context tokens stored per example, around the max token.")] = 64,
    bands: Annotated[int, typer.Option(help="Lower activation bands (equal-width intervals).")] = 5,
    band_size: Annotated[int, typer.Option(help="Examples sampled uniformly per band.")] = 5,
    bins: Annotated[int, typer.Option(help="Activation histogram bins (even).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the band sampling.")] = 0,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = Device.auto,
) -> None:
    """Stream text through an SAE's model and the SAE once, and store every feature's statistics and examples.

    A rerun replaces the old index atomically; an interrupted run leaves the previous index in place.
    """
    import signal

    from app.catalog.saes import RegistryError
    from app.features.indexer import IndexOptions, index_sae
    from trainer.analysis.feature_stats import StatsConfig
    from trainer.data.activations import ActivationError

    checks = [("--tokens", tokens, 1), ("--top-k", top_k, 1), ("--window", window, 1), ("--bands", bands, 1),
              ("--band-size", band_size, 1), ("--bins", bins, 2), ("--model-batch", model_batch, 1)]  # fmt: skip
    for flag, value, least in checks:
        if value < least:
            raise fail(f"{flag} must be at least {least}, got {value}")
    if bins % 2:
        raise fail(f"--bins must be even (bins merge pairwise when the range doubles), got {bins}")
    engine = _store()
    opts = IndexOptions(
        tokens=tokens, dataset=dataset, text_column=text_column, split=split, context_size=context_size,
        batch_sequences=model_batch, device=device.value, progress=True,
        stats=StatsConfig(top_k=top_k, window=window, n_bands=bands, band_size=band_size, n_bins=bins, seed=seed),
    )  # fmt: skip

    def terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = index_sae(engine, name, opts)
    except KeyboardInterrupt:
        console.print("interrupted: nothing stored; the previous index (if any) is unchanged")
        raise typer.Exit(code=130) from None
    except (RegistryError, ActivationError, ValueError, OSError) as err:
        raise fail(str(err)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print(
        f"indexed {summary.name}: {summary.tokens:,} tokens in {summary.seconds_pass:.1f} s "
        f"({summary.tokens / max(summary.seconds_pass, 1e-9):,.0f} tok/s), {summary.features:,} features "
        f"({summary.dead:,} dead), {summary.examples:,} examples written in {summary.seconds_write:.1f} s"
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (use Postgres when > 1).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the web server: REST API under /api/v1, OpenAPI docs at /docs, feature pages at /."""
    import uvicorn

    settings = Settings()
    _store(settings)  # migrate a fresh SQLite store, or fail early with the fix
    if workers > 1 and settings.database_url.startswith("sqlite"):
        console.print("[yellow]note:[/] several workers share one SQLite file; use Postgres for real concurrency")
    console.print(f"jumpscope on http://{host}:{port} (API docs: http://{host}:{port}/docs)")
    uvicorn.run("app.server:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)


@app.command()
def worker(
    host: Annotated[str, typer.Option(help="Interface the encode API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the encode API (the web server's JUMPSCOPE_WORKER_URL).")] = 8001,
    serve_encoder: Annotated[bool, typer.Option("--serve/--no-serve", help="Also serve encodings over HTTP.")] = True,
    name: Annotated[str | None, typer.Option(help="Worker name in the jobs table (default host:pid).")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue.")] = 2.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats of a running job.")] = 5.0,
    stale_after: Annotated[
        float, typer.Option(help="Requeue a running job whose worker was silent this long (seconds).")
    ] = 60.0,
    max_jobs: Annotated[int | None, typer.Option(help="Exit after this many jobs.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Exit after this many idle seconds.")] = None,
) -> None:
    """Run queued training and indexing jobs, and serve encodings to the web server over HTTP."""
    import signal
    import threading

    from app.jobs.worker import Worker

    settings = Settings()
    engine = _store(settings)
    runner = Worker(settings, name=name, poll=poll, heartbeat_every=heartbeat, stale_after=stale_after, engine=engine)
    server = None
    if serve_encoder:
        import uvicorn

        from app.encoding.encoder import LocalEncoder
        from app.encoding.worker_api import create_worker_app

        encoder = LocalEncoder(max_loaded=settings.max_loaded_saes, max_tokens=settings.encode_max_tokens,
                               max_batch_texts=settings.encode_max_batch, window_ms=settings.encode_window_ms,
                               batching=settings.encode_batching, device=settings.device)  # fmt: skip
        config = uvicorn.Config(create_worker_app(encoder), host=host, port=port, log_level="warning")
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True, name="encode-api").start()
        console.print(f"worker {runner.name}: encode API on http://{host}:{port}")

    def stop(_signum: int, _frame: Any) -> None:
        console.print("stopping: the running job checkpoints and returns to the queue")
        runner.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    done = runner.run(max_jobs=max_jobs, idle_exit=idle_exit)
    if server is not None:
        server.should_exit = True
    console.print(f"worker {runner.name}: {done} jobs run")


users_app = typer.Typer(help="API tokens: who may write ratings and queue jobs.", no_args_is_help=True)
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The rater name the token writes as.")],
    admin: Annotated[bool, typer.Option(help="May also queue jobs.")] = False,
) -> None:
    """Create a token for NAME and print it (it is stored hashed and cannot be shown again)."""
    from app.auth.tokens import add_token
    from app.core.database import session_scope

    if not name.strip() or len(name) > 100 or "\x00" in name:
        raise fail("NAME must hold 1 to 100 characters")
    with session_scope(_store()) as session:
        token = add_token(session, name.strip(), admin=admin)
    console.print(f"token for {name.strip()!r}{' (admin)' if admin else ''}; keep it, it is shown only once:")
    typer.echo(token)


@users_app.command("list")
def users_list() -> None:
    """Token holders (names, admin flag, last use); never the tokens."""
    from sqlalchemy import select

    from app.core.database import session_scope
    from app.core.tables import ApiToken

    with session_scope(_store()) as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.name, ApiToken.id)).all()
        for row in rows:
            typer.echo(f"{row.name}\t{'admin' if row.admin else 'rater'}\tcreated {row.created_at:%Y-%m-%d}"
                       f"\tlast used {row.last_used_at or 'never'}")  # fmt: skip
    if not rows:
        console.print("no tokens: writes are open to anyone who can reach the server")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="Remove every token of NAME.")]) -> None:
    """Revoke NAME's tokens (their ratings stay)."""
    from app.auth.tokens import remove_tokens
    from app.core.database import session_scope

    with session_scope(_store()) as session:
        n = remove_tokens(session, name)
    if n == 0:
        raise fail(f"no tokens for {name!r}")
    console.print(f"removed {n} token(s) of {name!r}")


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command("eval")
def eval_(
    sae_dir: Annotated[Path, typer.Argument(help="A native SAE folder.", metavar="DIR")],
    activations: Annotated[Path | None, typer.Option(help="Held-out activation shards instead of live text.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for live activations and delta LM loss (default: the SAE's own).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Text to evaluate on (default: the SAE's, held-out split).")
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split for live evaluation.")] = "heldout",
    tokens: Annotated[int, typer.Option(help="Tokens for l0, fvu and the firing statistics.")] = 200_000,
    lm_tokens: Annotated[int, typer.Option(help="Predictions for delta LM loss (0 = skip it).")] = 20_000,
    batch_size: Annotated[int, typer.Option(help="Tokens per SAE batch.")] = 4096,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Print an SAE's metrics: l0, fvu, mse, dead and dense fractions, delta_lm_loss, tokens."""
    from trainer.data.activations import ActivationError
    from trainer.formats import SAEFormatError

    try:
        metrics = evaluate_sae_dir(
            sae_dir, activations=activations, model=model, dataset=dataset, split=split, tokens=tokens,
            lm_tokens=lm_tokens, batch_size=batch_size, device=device.value, progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (ValueError, ActivationError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        print_metrics(metrics, f"{sae_dir}")


@app.command()
def cache(
    out: Annotated[Path, typer.Option("--out", help="New folder for the activation shards.")],
    model: Annotated[
        str, typer.Option(help="'gemma3-270m' (packaged), a local model folder or a hub id.")
    ] = "gemma3-270m",
    layer: Annotated[int | None, typer.Option(help="Decoder layer (default: the middle one).")] = None,
    site: Annotated[str, typer.Option(help="resid, mlp or attn.")] = "resid",
    dataset: Annotated[str | None, typer.Option(help="HF dataset, local text/jsonl/parquet file or folder.")] = None,
    text_column: Annotated[str, typer.Option(help="The dataset column holding the text.")] = "text",
    split: Annotated[str, typer.Option(help="Dataset split (packaged corpus: train or heldout).")] = "train",
    context_size: Annotated[int | None, typer.Option(help="Tokens per sequence (default 128 CPU, 1024 GPU).")] = None,
    tokens: Annotated[int, typer.Option(help="Activations to write (special tokens excluded).")] = 1_000_000,
    model_batch: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    shard_tokens: Annotated[int, typer.Option(help="Activations per shard file.")] = 262_144,
    bf16: Annotated[bool, typer.Option(help="Store bfloat16 instead of float32.")] = False,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = Device.auto,
) -> None:
    """Run a model over a dataset once and write activation shards for many SAEs to train on."""
    from trainer.data.activations import ActivationError

    if out.exists():
        raise fail(f"{out} already exists; remove it or choose another --out")
    try:
        lm = lm_source(model, layer, site, dataset, text_column, split, context_size, model_batch, device.value, tokens)
        n = write_activation_cache(lm, out, shard_tokens=shard_tokens, bf16=bf16)
    except (ValueError, ActivationError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"wrote {n:,} activations of width {lm.d_in} to {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo keeps its stages (activations, SAE, eval).")] = Path(
        "runs/demo"
    ),
    model: Annotated[str, typer.Option(help="Model: the packaged 'gemma3-270m', a local folder or a hub id.")] = (
        "gemma3-270m"
    ),
    layer: Annotated[
        int | None, typer.Option(help="Decoder layer (default: the middle one, 9 for Gemma 3 270M).")
    ] = None,
    cache_tokens: Annotated[int, typer.Option(help="Activations harvested once from the packaged corpus.")] = 600_000,
    epochs: Annotated[float, typer.Option(help="Passes of SAE training over the cached activations.")] = 2.0,
    width: Annotated[int, typer.Option(help="SAE width d_sae.")] = 4096,
    l0_coeff: Annotated[float, typer.Option(help="JumpReLU lambda (short recipe).")] = DEMO_L0_COEFF,
    retrain: Annotated[bool, typer.Option(help="Train and evaluate again even if finished stages are cached.")] = False,
    synthetic: Annotated[bool, typer.Option(help="A 1-minute smoke run on synthetic data instead.")] = False,
    tiny: Annotated[
        bool, typer.Option(help="A 30-second smoke run on the tiny random Gemma 2 (OUT defaults to runs/demo-tiny).")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = Device.auto,
    index_tokens: Annotated[int, typer.Option(help="Tokens the indexer streams for the feature pages.")] = 200_000,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the browser at the end.")] = True,
    host: Annotated[str, typer.Option(help="Interface to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
) -> None:
    """The main job on embedded defaults: train, evaluate and index a JumpReLU SAE on Gemma 3 270M, then serve it.

    Stages, each cached so a second run starts serving in seconds: the model is converted once
    into the user cache; residual-stream activations of the middle layer over the packaged
    corpus are harvested into OUT/activations; a JumpReLU SAE (short recipe) trains on them
    into OUT/sae (an interrupted run resumes from its checkpoint); it is evaluated on held-out
    text (l0, fvu, dead/dense, delta LM loss) into OUT/sae/eval.json; it is registered in the
    database (DATABASE_URL, default ./jumpscope.db) and indexed; the browser is served on
    http://HOST:PORT.
    """
    from trainer.data.activations import ActivationError, ShardSource
    from trainer.formats import NATIVE_WEIGHTS, SAEFormatError, SAEMetadata
    from trainer.training.config import SAEConfig, TrainConfig, resolve_recipe
    from trainer.training.trainer import CHECKPOINT, Trainer, TrainingInterrupted

    if synthetic:
        _synthetic_demo(out)
        return
    if tiny:
        from trainer.lm.models import TINY_MODEL

        model = TINY_MODEL
        out = Path("runs/demo-tiny") if out == Path("runs/demo") else out
        cache_tokens, width, epochs = min(cache_tokens, 20_000), min(width, 256), max(epochs, 10.0)
        index_tokens = min(index_tokens, 5_000)
    trained = False
    acts, sae_dir = out / "activations", out / "sae"
    eval_path = sae_dir / "eval.json"
    try:
        if not (acts / "meta.json").exists():
            lm = lm_source(model, layer, "resid", None, "text", "train", None, 32, device.value, cache_tokens)
            console.print(
                f"stage 1/5: harvesting {cache_tokens:,} activations of {lm.loaded.name} layer {lm.cfg.layer}"
            )
            write_activation_cache(lm, acts, bf16=True)
        shards = ShardSource(acts, loop=True)
        if retrain or not (sae_dir / NATIVE_WEIGHTS).exists():
            resume = (sae_dir / CHECKPOINT).exists() and not retrain
            tokens = max(4096, int(epochs * shards.n_tokens) // 4096 * 4096)
            console.print(f"stage 2/5: training a {width}-wide JumpReLU SAE on {tokens:,} tokens")
            trained = True
            sae_cfg = SAEConfig(d_in=shards.d_in, d_sae=width)
            train_cfg = TrainConfig(tokens=tokens, recipe="short", sparsity_coeff=l0_coeff, shuffle_buffer=262_144,
                                    checkpoint_every=50, log_every=10, device=device.value)  # type: ignore[arg-type]  # fmt: skip
            resolve_recipe(sae_cfg, train_cfg, set())
            meta = SAEMetadata(model=shards.meta.get("model"), layer=shards.meta.get("layer"), site="resid",
                               dataset="packaged", context_size=shards.meta.get("context_size"))  # fmt: skip
            Trainer(sae_cfg, train_cfg, shards, sae_dir, meta).fit(resume=resume)
            eval_path.unlink(missing_ok=True)
        if not eval_path.exists():
            console.print("stage 3/5: evaluating on held-out text")
            metrics = evaluate_sae_dir(sae_dir, tokens=50_000, lm_tokens=4_000, device=device.value,
                                       progress=sys.stderr.isatty())  # fmt: skip
            eval_path.write_text(json.dumps(metrics, indent=2) + "\n")
        metrics = json.loads(eval_path.read_text())
    except TrainingInterrupted:
        console.print("interrupted: run `jumpscope demo` again to continue from the checkpoint")
        raise typer.Exit(code=130) from None
    except (ValueError, ActivationError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    print_metrics(metrics, f"demo SAE ({sae_dir}) on held-out text")
    name = _demo_index(sae_dir, metrics, index_tokens, device.value, fresh=trained)
    if serve:
        import uvicorn

        console.print(f"stage 5/5: serving on http://{host}:{port}/saes/{name} (Ctrl-C stops)")
        uvicorn.run("app.server:create_app", factory=True, host=host, port=port, log_level="warning")


app.command("sweep")(sweep_command)


def _demo_index(sae_dir: Path, metrics: dict[str, Any], tokens: int, device: str, *, fresh: bool) -> str:
    """Register the demo SAE in the store and index it, unless an index of these weights exists."""
    from sqlalchemy import select

    from app.catalog.saes import RegistryError, default_name, import_sae
    from app.core.database import session_scope
    from app.core.tables import SAE
    from app.features.indexer import IndexOptions, index_sae
    from trainer.formats import load_native

    settings = Settings()
    engine = _store(settings)
    loaded = load_native(sae_dir)
    name = default_name(loaded.meta, loaded.sae.cfg.architecture, loaded.sae.cfg.d_sae)
    with session_scope(engine) as session:
        row = session.scalar(select(SAE).where(SAE.name == name))
        done = row is not None and row.index_run_id is not None and not fresh and row.indexed_tokens >= min(tokens, 1)
    if done:
        console.print(f"stage 4/5: {name} is registered and indexed ({settings.database_url})")
        return name
    console.print(f"stage 4/5: registering {name} in {settings.database_url} and indexing {tokens:,} tokens")
    try:
        with session_scope(engine) as session:
            import_sae(session, sae_dir, data_dir=settings.data_dir, name=name, replace=True, metrics=metrics)
        index_sae(engine, name, IndexOptions(tokens=tokens, device=device))
    except KeyboardInterrupt:
        console.print("interrupted: run `jumpscope demo` again to index")
        raise typer.Exit(code=130) from None
    except (RegistryError, ValueError, OSError) as err:
        raise fail(str(err)) from None
    return name


def _synthetic_demo(out: Path) -> None:
    """Train and evaluate a small JumpReLU SAE on synthetic data with a known dictionary."""
    import torch

    from trainer.data.activations import SyntheticSource, SyntheticSpec
    from trainer.evaluation.metrics import evaluate
    from trainer.formats import NATIVE_WEIGHTS, SAEMetadata, load_native
    from trainer.training.config import SAEConfig, TrainConfig, resolve_recipe
    from trainer.training.trainer import Trainer

    out = out / "synthetic"
    spec = SyntheticSpec()
    source = SyntheticSource(spec)
    if not (out / NATIVE_WEIGHTS).exists():
        sae_cfg = SAEConfig(d_in=spec.d_in, d_sae=512)
        train_cfg = TrainConfig(tokens=8_192_000, batch_size=1024, recipe="short", sparsity_coeff=0.02,
                                checkpoint_every=1000, log_every=50, norm_tokens=65_536)  # fmt: skip
        resolve_recipe(sae_cfg, train_cfg, set())
        meta = SAEMetadata(dataset="synthetic", extra={"synthetic": asdict(spec)})
        Trainer(sae_cfg, train_cfg, source, out, meta).fit()
    sae = load_native(out).sae
    print_metrics(asdict(evaluate(sae, source.held_out(), 262_144)), f"synthetic demo SAE ({out}), held-out tokens")
    cos = torch.nn.functional.normalize(sae.W_dec, dim=1) @ source.dictionary.T  # (d_sae, n_true)
    Console().print(
        f"mean best cosine of the {spec.n_features} true directions: "
        f"{cos.max(0).values.mean().item():.3f} (true L0 ~{spec.active_per_token:g})"
    )
