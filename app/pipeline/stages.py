"""The building blocks of the pipeline (app.pipeline.run) and the commands: a model's live
activation source, the metadata of an SAE trained on it or on an activation cache, writing
that cache, and evaluating a native SAE folder.

Plain functions that raise ValueError (or its subclasses) naming the problem; the CLI turns
those into one-line errors. Heavy imports stay inside the functions so `jumpscope --help`
stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.data.activations import ActivationSource, ShardSource
    from trainer.formats.native import SAEMetadata
    from trainer.lm.source import LMActivationSource


def lm_source(
    *,
    model: str,
    layer: int | None = None,
    site: str = "resid",
    dataset: str | None = None,
    text_column: str = "text",
    split: str = "train",
    context_size: int | None = None,
    model_batch: int = 8,
    device: str = "auto",
    max_tokens: int | None = None,
    loop: bool = False,
) -> LMActivationSource:
    """Load a model and build its live activation source (errors are ValueErrors naming the problem).

    layer None is the middle decoder layer; context_size None is 128 on CPU, 1024 on GPU;
    max_tokens stops after that many activations; loop starts the text over when it runs out
    (for training).
    """
    from trainer.data.text import default_context_size
    from trainer.device import resolve_device
    from trainer.lm.models import load_model
    from trainer.lm.source import LMActivationSource, LMSourceConfig

    torch_device = resolve_device(device)
    loaded = load_model(model, device=torch_device)
    cfg = LMSourceConfig(
        layer=loaded.n_layers // 2 if layer is None else layer,
        site=site,
        dataset=dataset,
        text_column=text_column,
        split=split,
        context_size=context_size or default_context_size(torch_device),
        batch_sequences=model_batch,
        max_tokens=max_tokens,
        loop=loop,
    )
    return LMActivationSource(loaded, cfg)


def lm_metadata(source: LMActivationSource) -> SAEMetadata:
    """cfg.json fields of an SAE trained on a live model source."""
    from trainer.formats.native import SAEMetadata

    cfg = source.cfg
    return SAEMetadata(
        model=source.loaded.name,
        layer=cfg.layer,
        site=cfg.site,
        dataset=cfg.dataset or "packaged",
        context_size=cfg.context_size,
        prepend_bos=True,
        extra={"text_column": cfg.text_column},
    )


def metadata_from_shards(shards: ShardSource) -> SAEMetadata:
    """cfg.json fields of an SAE trained on an activation cache: what the cache's meta.json says
    (`write_activation_cache` writes model, layer, site, dataset, context_size and prepend_bos)."""
    from trainer.formats.native import SAEMetadata

    meta = shards.meta
    return SAEMetadata(
        model=meta.get("model"),
        layer=meta.get("layer"),
        site=meta.get("site"),
        dataset=shards.description,
        context_size=meta.get("context_size"),
        prepend_bos=bool(meta.get("prepend_bos", True)),
    )


def write_activation_cache(
    lm: LMActivationSource, out: Path, *, shard_tokens: int = 262_144, bf16: bool = False
) -> int:
    """Harvest lm's activations (up to lm.cfg.max_tokens) into shards at out, with a progress bar.

    The shards carry token rows (trainer.data.activations.TokenRows) and the folder the document
    ids, so that an SAE can be indexed from it with no model pass (`jumpscope index --activations`).
    """
    import torch
    from tqdm.auto import tqdm

    from trainer.data.activations import TokenRows, write_shards
    from trainer.lm.source import TokenRowHarvest

    meta = {k: v for k, v in asdict(lm_metadata(lm)).items() if k not in ("extra", "normalization_scale")}
    meta |= {"tokens_trained": None, "text_column": lm.cfg.text_column, "split": lm.cfg.split}
    bar = tqdm(total=lm.cfg.max_tokens, unit="tok", unit_scale=True,
               desc=f"cache {lm.loaded.name} L{lm.cfg.layer} {lm.cfg.site}")  # fmt: skip

    harvest = TokenRowHarvest(lm)

    def counted(chunks: Iterator[TokenRows]) -> Iterator[TokenRows]:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk

    try:
        return write_shards(out, counted(iter(harvest)), meta, shard_tokens=shard_tokens,
                            dtype=torch.bfloat16 if bf16 else torch.float32,
                            finish=lambda: (harvest.meta(), harvest.documents))  # fmt: skip
    finally:
        bar.close()


def evaluate_sae_dir(
    sae_dir: Path,
    *,
    activations: Path | None = None,
    model: str | None = None,
    dataset: str | None = None,
    split: str = "heldout",
    tokens: int = 200_000,
    lm_tokens: int = 20_000,
    batch_size: int = 4096,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """l0, fvu, mse, dead/dense fractions and (with a model) delta LM loss of a native SAE folder."""
    from trainer.data.activations import ShardSource, SyntheticSource, SyntheticSpec
    from trainer.device import resolve_device
    from trainer.evaluation.delta_lm import delta_lm_loss
    from trainer.evaluation.metrics import evaluate
    from trainer.formats.native import load_native
    from trainer.lm.source import lm_batches

    loaded = load_native(sae_dir)
    meta = loaded.meta
    source: ActivationSource
    lm = None
    model_name = model or meta.model
    if model_name is not None and (meta.layer is None or meta.site is None):
        raise ValueError(f"{sae_dir}/cfg.json names no layer and site: it cannot be evaluated on a model")
    if model_name is not None:
        data = dataset or (None if meta.dataset in (None, "packaged") else meta.dataset)
        text_column = str(meta.extra.get("text_column", "text"))
        context = meta.context_size
        lm = lm_source(model=model_name, layer=meta.layer, site=meta.site or "resid", dataset=data,
                       text_column=text_column, split=split, context_size=context, device=device)  # fmt: skip
    if activations is not None:
        source = ShardSource(activations)
    elif lm is not None:
        source = lm
    elif "synthetic" in meta.extra:  # held out: the same dictionary, another token stream
        source = SyntheticSource(SyntheticSpec(**meta.extra["synthetic"])).held_out()
    else:
        raise ValueError(f"{sae_dir} names no model: give --model NAME or held-out --activations DIR")
    if source.d_in != loaded.sae.cfg.d_in:
        raise ValueError(
            f"d_in mismatch: the activations are {source.d_in} wide, the SAE expects {loaded.sae.cfg.d_in}"
        )
    torch_device = resolve_device(device)
    metrics: dict[str, Any] = asdict(
        evaluate(loaded.sae, source, tokens, batch_size=batch_size, device=torch_device, progress=progress)
    )
    if lm is not None and lm_tokens > 0:
        sae = loaded.sae.to(torch_device)
        result = delta_lm_loss(
            lm.loaded.model,
            sae,
            layer=lm.cfg.layer,
            site=lm.cfg.site,
            batches=lm_batches(lm),
            max_tokens=lm_tokens,
            progress=progress,
        )
        metrics |= {"delta_lm_loss": result.delta_lm_loss, "clean_lm_loss": result.clean_loss,
                    "spliced_lm_loss": result.spliced_loss, "lm_tokens": result.tokens}  # fmt: skip
    return metrics
