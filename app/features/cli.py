"""`jumpscope index`: one streaming pass through model and SAE that fills the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.core.commands import console, fail, open_store
from trainer.device import Device


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
    heldout_top: Annotated[
        int, typer.Option(help="Top examples kept past --top-k, never shown: `jumpscope explain` scores on them.")
    ] = 10,
    heldout_band: Annotated[
        int, typer.Option(help="Band samples kept per band past --band-size, never shown (scored on, likewise).")
    ] = 2,
    contexts: Annotated[
        int,
        typer.Option(
            help="Random context windows kept with the features firing in each: the scores' non-activating "
            "examples (0: none)."
        ),
    ] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the band sampling.")] = 0,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = "auto",
    activations: Annotated[
        Path | None,
        typer.Option(
            help="Index from a harvest's activation cache (`jumpscope cache`, the demo's, a sweep's) with no model "
            "forward pass; the cache's dataset, split and context size apply."
        ),
    ] = None,
) -> None:
    """Stream text through an SAE's model and the SAE once, and store every feature's statistics and examples.

    With --activations DIR the model is not run: the SAE reads a harvested cache of its own model, layer
    and site, and the index equals the live pass's over the same tokens. A rerun replaces the old index
    atomically; an interrupted run leaves the previous index in place.
    """
    import signal

    from app.catalog.saes import RegistryError
    from app.features.indexer import IndexOptions, index_sae
    from trainer.analysis.feature_stats import StatsConfig
    from trainer.data.activations import ActivationError

    checks = [("--tokens", tokens, 1), ("--top-k", top_k, 1), ("--window", window, 1), ("--bands", bands, 1),
              ("--band-size", band_size, 1), ("--bins", bins, 2), ("--model-batch", model_batch, 1),
              ("--heldout-top", heldout_top, 0), ("--heldout-band", heldout_band, 0),
              ("--contexts", contexts, 0)]  # fmt: skip
    for flag, value, least in checks:
        if value < least:
            raise fail(f"{flag} must be at least {least}, got {value}")
    if activations is not None and (dataset is not None or split != "train" or text_column != "text"):
        raise fail("--activations indexes the cache's own text: leave out --dataset, --split and --text-column")
    if bins % 2:
        raise fail(f"--bins must be even (bins merge pairwise when the range doubles), got {bins}")
    from trainer.training.malloc import keep_freed_memory

    keep_freed_memory()  # the model's and the statistics' large temporaries are reused across batches
    engine = open_store()
    opts = IndexOptions(
        tokens=tokens, dataset=dataset, text_column=text_column, split=split, context_size=context_size,
        batch_sequences=model_batch, device=device, progress=True, activations=activations,
        stats=StatsConfig(top_k=top_k, window=window, n_bands=bands, band_size=band_size, n_bins=bins, seed=seed,
                          heldout_top=heldout_top, heldout_band=heldout_band, contexts=contexts),
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


def register(cli: typer.Typer) -> None:
    """Add index to the root command."""
    cli.command()(index)
