"""`jumpscope sweep`: the Fig. 2 comparison from the command line. Heavy imports stay inside."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.table import Table

from app.core.commands import console, parse_overrides
from trainer.device import Device

QUICK = {"width": 2048, "train_tokens": 300_000, "batch_size": 512, "eval_tokens": 30_000, "lm_tokens": 2_048}
"""--quick: smaller SAEs on fewer tokens (with trainer.sweep.grid.QUICK_GRID)."""
TINY = {"width": 64, "train_tokens": 16_384, "batch_size": 1024, "eval_tokens": 4_096, "lm_tokens": 512}
"""--tiny: a plumbing check on the tiny random Gemma 2 (numbers mean nothing)."""
TINY_GRID = {"jumprelu": (1e-3, 1e-2), "relu": (1e-2, 1e-1), "topk": (4, 16), "gated": (1e-2, 1e-1)}


def parse_grid(specs: list[str]) -> dict[str, tuple[float, ...]]:
    """['jumprelu=1e-4,2e-4', 'topk=16,32'] -> {'jumprelu': (1e-4, 2e-4), 'topk': (16.0, 32.0)}."""
    grid: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        arch, sep, values = spec.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--grid takes ARCH=V1,V2,... (e.g. topk=16,32,64), got {spec!r}")
        try:
            grid[arch.strip()] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--grid {spec!r}: the values must be numbers separated by commas") from None
    return grid


def sweep_command(
    out: Annotated[
        Path | None, typer.Option(help="Folder for the cache, SAEs, results and plots (default runs/NAME).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Sweep name; its SAEs register as NAME-ARCH-KNOBVALUE (default pareto, pareto-quick, pareto-tiny)."
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="'gemma3-270m' (packaged), a local model folder or a hub id (e.g. google/gemma-2-2b on a GPU)."
        ),
    ] = "gemma3-270m",
    layer: Annotated[
        int | None, typer.Option(help="Decoder layer (default: the middle one; 12 for Gemma 2 2B).")
    ] = None,
    site: Annotated[str, typer.Option(help="resid, mlp or attn.")] = "resid",
    width: Annotated[int | None, typer.Option(help="d_sae of every SAE (default 4096; --quick 2048).")] = None,
    train_tokens: Annotated[
        int | None, typer.Option(help="Tokens each SAE trains on, harvested once (default 1,500,000; --quick 300,000).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tokens per optimiser step (default 1024; --quick 512).")
    ] = None,
    eval_tokens: Annotated[
        int | None, typer.Option(help="Held-out activations for L0, FVU, dead and dense (default 100,000).")
    ] = None,
    lm_tokens: Annotated[
        int | None, typer.Option(help="Held-out predictions for delta LM loss (default 8,192; 0 skips it).")
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="ARCH=V1,V2,... knob values (lambda, or k for topk); "
            "repeat per architecture; replaces the default grid."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="One seed for every SAE (initialisation and token order).")] = 0,
    epochs: Annotated[float, typer.Option(help="Passes of each SAE over the cached tokens.")] = 1.0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="FIELD=VALUE: a named deviation for every SAE (an SAEConfig or TrainConfig "
            "field, e.g. bandwidth=0.01, threshold_init=0.05, lr=3e-4); repeatable.",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="About 14 minutes on a 215 GFLOP/s 2-core CPU: 4 points per architecture, width 2048, 300k tokens."
        ),
    ] = False,
    tiny: Annotated[bool, typer.Option(help="A plumbing check on the tiny random Gemma 2 (seconds).")] = False,
    register: Annotated[
        bool,
        typer.Option("--register/--no-register", help="Store the SAEs and the sweep in the database (DATABASE_URL)."),
    ] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    index_tokens: Annotated[
        int,
        typer.Option(
            help="Index every SAE on this many tokens of the sweep's cache (no model pass), to browse and rate "
            "their features side by side; 0: no index."
        ),
    ] = 0,
) -> None:
    """Train JumpReLU, ReLU, TopK and Gated SAEs at several sparsities on one activation cache and compare them.

    The paper's Fig. 2 on activations you can run: every SAE has the same width, tokens, batch,
    recipe and seed; all are evaluated on the same held-out text (L0, FVU, delta LM loss, dead
    and dense fractions). Writes OUT/results.json, OUT/results.csv, OUT/fvu.svg and
    OUT/delta_lm_loss.svg, registers the SAEs and the sweep, and the browser shows it at
    /compare/NAME. Interrupted, the same command resumes: the cache and finished SAEs are kept.
    """
    from app.catalog.saes import RegistryError
    from app.core.commands import fail, open_store
    from app.core.settings import Settings
    from app.sweeps.run import SweepOptions, run_sweep
    from trainer.data.activations import ActivationError
    from trainer.formats.files import SAEFormatError
    from trainer.lm.models import TINY_MODEL
    from trainer.sweep.grid import DEFAULT_GRID, QUICK_GRID, SweepConfig
    from trainer.training.trainer import TrainingInterrupted

    devices = get_args(Device)
    if device not in devices:
        raise fail(f"--device must be {', '.join(devices[:-1])} or {devices[-1]}, got {device!r}")
    preset = TINY if tiny else QUICK if quick else {}
    given = {
        "width": width,
        "train_tokens": train_tokens,
        "batch_size": batch_size,
        "eval_tokens": eval_tokens,
        "lm_tokens": lm_tokens,
    }
    sizes = {**preset, **{k: v for k, v in given.items() if v is not None}}
    try:
        chosen = parse_grid(grid) if grid else dict(TINY_GRID if tiny else QUICK_GRID if quick else DEFAULT_GRID)
        overrides = parse_overrides(set_ or [])
        cfg = SweepConfig(**sizes, grid=chosen, seed=seed, epochs=epochs, overrides=overrides)  # type: ignore[arg-type]
        name = name or ("pareto-tiny" if tiny else "pareto-quick" if quick else "pareto")
        opts = SweepOptions(
            out=out or Path("runs") / name,
            name=name,
            model=TINY_MODEL if tiny else model,
            layer=layer,
            site=site,
            device=device,
            config=cfg,
            index_tokens=index_tokens,
        )
        if index_tokens < 0 or (index_tokens and not register):
            raise ValueError("--index-tokens must be 0 or more, and indexing needs --register")
    except (ValueError, RegistryError) as err:
        raise fail(str(err)) from None
    settings = Settings()
    engine = None
    if register:
        engine = open_store(settings)
    try:
        doc = run_sweep(opts, engine, settings.data_dir, log=console.print, progress=sys.stderr.isatty())
    except TrainingInterrupted:
        console.print("interrupted: run the same command again to continue")
        raise typer.Exit(code=130) from None
    except (ValueError, ActivationError, SAEFormatError, RegistryError, OSError) as err:
        raise fail(str(err)) from None
    _print(doc)


def _print(doc: dict[str, object]) -> None:
    table = Table(title=f"sweep {doc['name']} (held-out metrics)")
    for column in ("architecture", "knob", "L0", "FVU", "FVU typical", "delta LM", "dead", "dense>1%", "train s"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for row in doc["points"]:  # type: ignore[attr-defined]
        delta, typical = row.get("delta_lm_loss"), row.get("fvu_typical")
        table.add_row(
            row["architecture"],
            f"{row['knob']}={row['value']:g}",
            f"{row['l0']:.1f}",
            f"{row['fvu']:.4f}",
            "-" if typical is None else f"{typical:.4f}",
            "-" if delta is None else f"{delta:.4f}",
            f"{row['dead_fraction']:.1%}",
            f"{row['dense_fraction_1pct']:.1%}",
            f"{row['train_seconds']:.0f}",
        )
    Console(width=120).print(table)
    budget = doc["budget"]
    console.print("budget: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget.items()))  # type: ignore[attr-defined]


def register(cli: typer.Typer) -> None:
    """Add sweep to the root command."""
    cli.command("sweep")(sweep_command)
