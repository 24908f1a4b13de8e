"""Commands that train, cache and evaluate SAEs, and `jumpscope demo`, the main job end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.core.commands import console, fail, open_store, parse_overrides, print_metrics
from app.core.settings import Settings
from app.pipeline.run import (
    EVAL_TOKENS,
    SHUFFLE_BUFFER,
    PipelineHooks,
    PipelineResult,
    Stage,
    TrainingPlan,
    run_pipeline,
    shuffle_tokens,
    train_step,
)
from app.pipeline.stage_times import StageTimes
from app.pipeline.stages import evaluate_sae_dir, lm_metadata, lm_source, metadata_from_shards, write_activation_cache
from trainer.device import Device
from trainer.saes import registry
from trainer.saes.config import BDecInit, ThresholdParam
from trainer.training.config import Recipe, StepKind

if TYPE_CHECKING:
    from trainer.data.activations import ActivationSource


# Tuned on the packaged Gemma 3 270M, layer 9 resid, width 4096, short recipe (README, "What was tried").
DEMO_L0_COEFF = 1.2e-4
DEMO_BATCH = 1024
"""Tokens per step of the demo's SAE: one pass over the 600,000-token cache in 585 steps, which beat two
passes in 292 steps of 4,096 on both FVU and delta LM loss in a third less time (README)."""


_FLAGGED = {
    "d_in": "the data's width", "d_sae": "--width", "architecture": "--arch", "k": "--k", "tokens": "--tokens",
    "batch_size": "--batch-size", "sparsity_coeff": "--l0-coeff / --l1-coeff", "grad_clip": "--grad-clip",
    "shuffle_buffer": "--shuffle-buffer", "normalize": "--no-normalize", "device": "--device",
    "autocast_bf16": "--bf16", "step": "--step", "checkpoint_every": "--checkpoint-every",
    "log_every": "--log-every", "seed": "--seed", "recipe": "--recipe", "use_pre_enc_bias": "--no-pre-enc-bias",
}  # fmt: skip
"""Config fields `train` sets through their own options, which `--set` refuses."""


def _architecture(value: str) -> str:
    """--arch: any architecture registered in trainer.saes.registry (checked when parsed)."""
    try:
        return registry.get(value).name
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _either(names: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _with_penalty(penalty: str) -> list[str]:
    return [spec.name for spec in registry.specs() if spec.penalty == penalty]


def _synthetic_source(d_in: int, features: int, l0: float, seed: int) -> ActivationSource:
    from trainer.data.activations import SyntheticSource, SyntheticSpec

    return SyntheticSource(SyntheticSpec(d_in=d_in, n_features=features, active_per_token=l0, seed=seed))


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
    arch: Annotated[
        str,
        typer.Option(
            parser=_architecture,
            metavar="[" + "|".join(registry.names()) + "]",
            help="SAE architecture: " + "; ".join(f"{s.name} = {s.summary}" for s in registry.specs()) + ".",
        ),
    ] = "jumprelu",
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
        typer.Option(
            help="paper: the Gemma Scope recipe. short: raw theta, lr 1e-3, warm-ups scaled to the run, decoder "
            "rows started at centred activations, JumpReLU thresholds at a 1% firing rate and Adam beta1 0.9, "
            "every Adam step bounded per element (update_clip 3)."
        ),
    ] = "paper",
    bandwidth: Annotated[
        float | None, typer.Option(help="JumpReLU STE bandwidth epsilon (default 0.001, the paper's).")
    ] = None,
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
        int, typer.Option(help=f"Tokens in the shuffle buffer (0 = none; --model uses {SHUFFLE_BUFFER:,} unless set).")
    ] = 0,
    no_normalize: Annotated[
        bool, typer.Option("--no-normalize", help="Do not scale inputs to unit mean squared norm.")
    ] = False,
    no_pre_enc_bias: Annotated[
        bool, typer.Option("--no-pre-enc-bias", help="Do not subtract b_dec before encoding.")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="GPU: bf16 autocast for matmuls (weights stay fp32).")] = False,
    step: Annotated[
        StepKind,
        typer.Option(
            help="dense, sparse (f kept at its active entries: the same training, faster at low L0) or auto "
            "(sparse once L0 is at most d_sae/20 on a CPU, d_sae/64 on a GPU, where the architecture has one)."
        ),
    ] = "auto",
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0 = at the end only).")] = 1000,
    log_every: Annotated[int, typer.Option(help="metrics.jsonl line every N steps.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and shuffling.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="FIELD=VALUE: any other SAEConfig or TrainConfig field as a named deviation (e.g. "
            "decoder_init=data, threshold_init_rate=0.01, threshold_lr_scale=10, resample_every=25, "
            "adam_betas=[0.9,0.999], dead_aux=0.03125); wins over the recipe; repeatable.",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one SAE (launch with `torchrun --nproc-per-node N -m app train ...` for DDP).

    Short runs: the paper's recipe (the default) warms the learning rate up over 1,000 steps and
    lambda over 10,000 (40M tokens at batch 4,096); a shorter run never finishes them and comes out
    neither sparse nor a good reconstruction. For runs of up to a few thousand steps use
    --recipe short, which scales both warm-ups to the run (a warning says so at the start).
    """
    from trainer.data.activations import ActivationError, ShardSource
    from trainer.formats.native import SAEMetadata
    from trainer.saes.config import SAEConfig
    from trainer.training.config import TrainConfig, schedule_warnings
    from trainer.training.trainer import TrainingInterrupted

    if sum([activations is not None, synthetic, model is not None]) != 1:
        raise fail("give exactly one activation source: --activations DIR, --model NAME or --synthetic")
    penalty = registry.get(arch).penalty  # which coefficient flag applies: l0, l1 or none
    if penalty == "l0" and l1_coeff is not None:
        raise fail(f"--l1-coeff is for --arch {_either(_with_penalty('l1'))}; {arch} takes --l0-coeff")
    if penalty == "l1" and l0_coeff is not None:
        raise fail(f"--l0-coeff is for --arch {_either(_with_penalty('l0'))}; {arch} takes --l1-coeff")
    try:
        meta = SAEMetadata()
        source: ActivationSource
        if activations is not None:
            shards = ShardSource(activations, loop=True)
            source, meta = shards, metadata_from_shards(shards)
        elif model is not None:
            lm = lm_source(model=model, layer=layer, site=site, dataset=dataset, text_column=text_column,
                           context_size=context_size, model_batch=model_batch, device=device,
                           loop=True)  # fmt: skip
            source, meta = lm, lm_metadata(lm)
            shuffle_buffer = shuffle_buffer or SHUFFLE_BUFFER
        else:
            source = _synthetic_source(synthetic_d_in, synthetic_features, synthetic_l0, seed)
            meta = SAEMetadata(dataset="synthetic", extra={"synthetic": asdict(source.spec)})  # type: ignore[attr-defined]
        explicit: set[str] = set()
        sae_kwargs: dict[str, Any] = {}
        train_kwargs: dict[str, Any] = {}
        sae_fields, train_fields = {f.name for f in fields(SAEConfig)}, {f.name for f in fields(TrainConfig)}
        for name, value in parse_overrides(set_ or []).items():
            if name in _FLAGGED:
                raise fail(f"--set {name}: use its own option ({_FLAGGED[name]})")
            if name not in sae_fields | train_fields:
                raise fail(f"--set {name}: not an SAEConfig or TrainConfig field")
            (sae_kwargs if name in sae_fields else train_kwargs)[name] = value
            explicit.add(name)
        if threshold_param is not None:
            sae_kwargs["threshold_param"] = threshold_param
            explicit.add("threshold_param")
        if bandwidth is not None:
            sae_kwargs["bandwidth"] = bandwidth
            explicit.add("bandwidth")
        sae_cfg = SAEConfig(
            d_in=source.d_in,
            d_sae=width,
            architecture=arch,
            k=k,
            use_pre_enc_bias=not no_pre_enc_bias,
            **sae_kwargs,
        )
        if b_dec_init is not None:
            train_kwargs["b_dec_init"] = b_dec_init
            explicit.add("b_dec_init")
        for name, value in (
            ("lr", lr),
            ("lr_warmup_steps", lr_warmup_steps),
            ("sparsity_warmup_steps", sparsity_warmup_steps),
        ):
            if value is not None:
                train_kwargs[name] = value
                explicit.add(name)
        coeff = l0_coeff if penalty == "l0" else l1_coeff
        train_cfg = TrainConfig(
            tokens=tokens,
            batch_size=batch_size,
            sparsity_coeff=coeff,
            grad_clip=grad_clip,
            shuffle_buffer=shuffle_buffer,
            normalize=not no_normalize,
            device=device,
            autocast_bf16=bf16,
            step=step,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            seed=seed,
            recipe=recipe,
            **train_kwargs,
        )
        plan = TrainingPlan(source=source, sae=sae_cfg, train=train_cfg, meta=meta, out_dir=out, explicit=explicit)
        for warning in schedule_warnings(sae_cfg, train_cfg, explicit):
            console.print(f"[bold yellow]warning:[/] {warning}")
        result = train_step(plan=plan, resume=resume, progress=progress)
    except TrainingInterrupted:
        console.print(f"interrupted: checkpoint written; continue with --resume --out {out}")
        raise typer.Exit(code=130) from None
    except (ValueError, FileNotFoundError, ActivationError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"saved {sae_cfg.architecture} SAE ({result.steps} steps) to {out}")


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
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Print an SAE's metrics: l0, fvu, mse, dead and dense fractions, delta_lm_loss, tokens."""
    from trainer.data.activations import ActivationError
    from trainer.formats.files import SAEFormatError

    try:
        metrics = evaluate_sae_dir(
            sae_dir, activations=activations, model=model, dataset=dataset, split=split, tokens=tokens,
            lm_tokens=lm_tokens, batch_size=batch_size, device=device, progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (ValueError, ActivationError, SAEFormatError, OSError) as err:
        raise fail(str(err)) from None
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        print_metrics(metrics, f"{sae_dir}")


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
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = "auto",
) -> None:
    """Run a model over a dataset once and write activation shards for many SAEs to train on.

    The shards also keep each activation's token, document, sequence and position, so an SAE of the
    same model, layer and site can be indexed from them with no model pass (`index NAME --activations OUT`).
    """
    from trainer.data.activations import ActivationError
    from trainer.training.malloc import keep_freed_memory

    if out.exists():
        raise fail(f"{out} already exists; remove it or choose another --out")
    keep_freed_memory()  # the model's large temporaries are reused, not page-faulted in per batch
    try:
        lm = lm_source(model=model, layer=layer, site=site, dataset=dataset, text_column=text_column, split=split,
                       context_size=context_size, model_batch=model_batch, device=device,
                       max_tokens=tokens)  # fmt: skip
        n = write_activation_cache(lm, out, shard_tokens=shard_tokens, bf16=bf16)
    except (ValueError, ActivationError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"wrote {n:,} activations of width {lm.d_in} to {out}")


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
    epochs: Annotated[float, typer.Option(help="Passes of SAE training over the cached activations.")] = 1.0,
    width: Annotated[int, typer.Option(help="SAE width d_sae.")] = 4096,
    l0_coeff: Annotated[float, typer.Option(help="JumpReLU lambda (short recipe).")] = DEMO_L0_COEFF,
    retrain: Annotated[bool, typer.Option(help="Train and evaluate again even if finished stages are cached.")] = False,
    synthetic: Annotated[bool, typer.Option(help="A 1-minute smoke run on synthetic data instead.")] = False,
    tiny: Annotated[
        bool, typer.Option(help="A 30-second smoke run on the tiny random Gemma 2 (OUT defaults to runs/demo-tiny).")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto uses CUDA when present.")] = "auto",
    index_tokens: Annotated[int, typer.Option(help="Tokens the indexer streams for the feature pages.")] = 200_000,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the browser at the end.")] = True,
    host: Annotated[str, typer.Option(help="Interface to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
) -> None:
    """The main job on embedded defaults: train, evaluate and index a JumpReLU SAE on Gemma 3 270M, then serve it.

    Stages, each cached so a second run starts serving in seconds: the model is converted once
    into the user cache; residual-stream activations of the middle layer over the packaged
    corpus are harvested into OUT/activations (and held-out ones into OUT/heldout) in the one
    model pass of the run; a JumpReLU SAE (short recipe) trains on them into OUT/sae (an
    interrupted run resumes from its checkpoint); it is evaluated on the held-out activations
    (l0, fvu, dead/dense) and held-out text (delta LM loss) into OUT/sae/eval.json; it is
    registered in the database (DATABASE_URL, default ./jumpscope.db) and indexed from the
    harvest with no model pass; the browser is served on http://HOST:PORT.
    """
    from trainer.data.activations import ShardSource
    from trainer.lm.source import LMActivationSource
    from trainer.saes.config import SAEConfig
    from trainer.training.config import TrainConfig
    from trainer.training.trainer import TrainingInterrupted

    if synthetic:
        _synthetic_demo(out)
        return
    if tiny:
        from trainer.lm.models import TINY_MODEL

        model = TINY_MODEL
        out = Path("runs/demo-tiny") if out == Path("runs/demo") else out
        cache_tokens, width, epochs = min(cache_tokens, 20_000), min(width, 256), max(epochs, 10.0)
        index_tokens = min(index_tokens, 5_000)
    from trainer.lm.models import keep_loaded
    from trainer.training.malloc import keep_freed_memory

    keep_loaded()  # harvest, evaluation and index share one loaded model
    keep_freed_memory()  # reuse large freed buffers (the model's too): ~10% faster harvests on CPU
    settings = Settings()
    engine = open_store(settings)
    acts, heldout, sae_dir = out / "activations", out / "heldout", out / "sae"
    tokens = 0
    index_from: Path | None = None
    current = Stage.TRAIN
    times = StageTimes.load(out)

    def on_stage(stage: Stage, *, skip: bool, run: PipelineResult) -> None:
        nonlocal current
        current = stage
        if skip:
            times.stop()
        else:
            times.start(stage.value)
        if stage is Stage.TRAIN and not skip:
            console.print(f"stage 2/5: training a {width}-wide JumpReLU SAE on {tokens:,} tokens")
        elif stage is Stage.EVALUATE and not skip:
            console.print("stage 3/5: evaluating on held-out text")
        elif stage is Stage.REGISTER:
            print_metrics(run.metrics, f"demo SAE ({sae_dir}) on held-out text")
            if skip:
                console.print(f"stage 4/5: {run.name} is registered and indexed ({settings.database_url})")
            else:
                source = "its harvest (no model pass)" if index_from is not None else "the model"
                console.print(f"stage 4/5: registering {run.name} in {settings.database_url} "
                              f"and indexing {index_tokens:,} tokens from {source}")  # fmt: skip

    try:
        if not (acts / "meta.json").exists() or not (heldout / "meta.json").exists():
            times.start("load model")
            lm = lm_source(model=model, layer=layer, model_batch=32, device=device, max_tokens=cache_tokens)
            console.print(
                f"stage 1/5: harvesting {cache_tokens:,} training and {EVAL_TOKENS:,} held-out activations of "
                f"{lm.loaded.name} layer {lm.cfg.layer}"
            )
            times.start("harvest")
            if not (acts / "meta.json").exists():
                write_activation_cache(lm, acts, bf16=True)
            if not (heldout / "meta.json").exists():  # the evaluation's, in the same model pass
                held = LMActivationSource(lm.loaded, replace(lm.cfg, split="heldout", max_tokens=EVAL_TOKENS))
                write_activation_cache(held, heldout)
            times.stop()
        shards = ShardSource(acts, loop=True)
        index_from = acts if shards.token_rows else None  # a cache from before token rows: index with the model
        tokens = max(DEMO_BATCH, int(epochs * shards.n_tokens) // DEMO_BATCH * DEMO_BATCH)
        train_cfg = TrainConfig(tokens=tokens, batch_size=DEMO_BATCH, recipe="short", sparsity_coeff=l0_coeff,
                                shuffle_buffer=shuffle_tokens(shards.n_tokens, shards.d_in),
                                checkpoint_every=100, log_every=10, device=device)  # fmt: skip
        plan = TrainingPlan(source=shards, sae=SAEConfig(d_in=shards.d_in, d_sae=width), train=train_cfg,
                            meta=metadata_from_shards(shards), out_dir=sae_dir)  # fmt: skip
        result = run_pipeline(plan=plan, engine=engine, data_dir=settings.data_dir, replace=True, reuse=True,
                              retrain=retrain, index_tokens=index_tokens, index_activations=index_from,
                              eval_activations=heldout, progress=True,
                              hooks=PipelineHooks(on_stage=on_stage))  # fmt: skip
        times.stop()
    except TrainingInterrupted:
        console.print("interrupted: run `jumpscope demo` again to continue from the checkpoint")
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:
        if current not in (Stage.REGISTER, Stage.INDEX):
            raise
        console.print("interrupted: run `jumpscope demo` again to index")
        raise typer.Exit(code=130) from None
    except (ValueError, OSError) as err:  # ActivationError, SAEFormatError and RegistryError among them
        raise fail(str(err)) from None
    _print_times(times)
    if serve:
        import uvicorn

        console.print(f"stage 5/5: serving on http://{host}:{port}/saes/{result.name} (Ctrl-C stops)")
        uvicorn.run("app.server:create_app", factory=True, host=host, port=port, log_level="warning")


DEMO_STAGES = ["load model", "harvest", "train", "evaluate", "register", "index"]
"""The demo's timed stages, in order (load model includes the one-off conversion of the default model)."""


def _print_times(times: StageTimes) -> None:
    """The demo's stage times: this run's, and those a cached stage took when it ran; and the run
    after loading the model as a multiple of its one model pass (the harvest)."""
    table = Table(title="demo stage times (wall clock)")
    for column in ("stage", "minutes", "this run"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    total = 0.0
    seconds_of: dict[str, float] = {}
    for stage, seconds, now in times.rows(DEMO_STAGES):
        total += seconds or 0.0
        seconds_of[stage] = seconds or 0.0
        table.add_row(stage, "-" if seconds is None else f"{seconds / 60:.1f}", "yes" if now else "kept")
    table.add_row("total", f"{total / 60:.1f}", "")
    harvest = seconds_of.get("harvest", 0.0)
    if harvest > 0:
        after_load = total - seconds_of.get("load model", 0.0)
        table.caption = f"harvest to index: {after_load / harvest:.2f}x the harvest (the one model pass over the text)"
    Console(stderr=True).print(table)


def _synthetic_demo(out: Path) -> None:
    """Train and evaluate a small JumpReLU SAE on synthetic data with a known dictionary."""
    import torch

    from trainer.data.activations import SyntheticSource, SyntheticSpec
    from trainer.evaluation.metrics import evaluate
    from trainer.formats.native import SAEMetadata, load_native
    from trainer.saes.config import SAEConfig
    from trainer.training.config import TrainConfig

    out = out / "synthetic"
    spec = SyntheticSpec()
    source = SyntheticSource(spec)
    train_cfg = TrainConfig(tokens=8_192_000, batch_size=1024, recipe="short", sparsity_coeff=0.02,
                            checkpoint_every=1000, log_every=50, norm_tokens=65_536)  # fmt: skip
    meta = SAEMetadata(dataset="synthetic", extra={"synthetic": asdict(spec)})
    plan = TrainingPlan(
        source=source, sae=SAEConfig(d_in=spec.d_in, d_sae=512), train=train_cfg, meta=meta, out_dir=out
    )
    train_step(plan=plan, resume=False, reuse=True, progress=True)
    sae = load_native(out).sae
    print_metrics(asdict(evaluate(sae, source.held_out(), 262_144)), f"synthetic demo SAE ({out}), held-out tokens")
    cos = torch.nn.functional.normalize(sae.W_dec, dim=1) @ source.dictionary.T  # (d_sae, n_true)
    Console().print(
        f"mean best cosine of the {spec.n_features} true directions: "
        f"{cos.max(0).values.mean().item():.3f} (true L0 ~{spec.active_per_token:g})"
    )


def register(cli: typer.Typer) -> None:
    """Add train, cache, eval and demo to the root command."""
    cli.command()(train)
    cli.command()(cache)
    cli.command("eval")(eval_)
    cli.command()(demo)
