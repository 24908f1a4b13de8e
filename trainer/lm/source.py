"""The live language-model activation source: text -> tokens -> model -> (n, d_in) chunks.

Documents are tokenised with BOS and packed into fixed-length sequences (trainer.data.text),
run through the model in batches with the forward pass stopped right after the hooked
layer (trainer.lm.sites.harvest), and the BOS/EOS/pad positions are dropped, so the trainer,
the cache writer and the evaluators never see special tokens. Deterministic: the same
dataset, model and settings give the same stream, which is what `--resume` replays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor

from trainer.data.text import PackedBatch, batch_sequences, iter_documents, pack_tokens
from trainer.lm.models import LoadedModel
from trainer.lm.sites import check_site, harvest, site_width


@dataclass
class LMSourceConfig:
    """Which activations to harvest, from which text."""

    layer: int
    """Zero-indexed decoder layer."""
    site: str
    """resid, mlp or attn."""
    dataset: str | None = None
    """HF dataset name, local text/jsonl/parquet file or folder; None = the packaged corpus."""
    text_column: str = "text"
    """Column holding the text, for jsonl/parquet/hub datasets."""
    split: str = "train"
    """Dataset split (the packaged corpus has train and heldout)."""
    context_size: int = 128
    """Tokens per packed sequence, BOS included."""
    batch_sequences: int = 8
    """Sequences per forward pass."""
    max_tokens: int | None = None
    """Stop after this many (non-special) activations; None = until the data runs out."""
    loop: bool = False
    """Start the dataset over when it runs out (for training longer than one epoch)."""


class LMActivationSource:
    """ActivationSource over a model's activations at one site."""

    def __init__(self, loaded: LoadedModel, cfg: LMSourceConfig) -> None:
        self.loaded = loaded
        self.cfg = cfg
        check_site(loaded.model, cfg.layer, cfg.site)
        self.d_in = site_width(loaded.model, cfg.site)
        self.description = cfg.dataset or "packaged"
        self.device = next(loaded.model.parameters()).device

    def packed_batches(self) -> Iterator[PackedBatch]:
        """The token batches this source runs through the model."""
        docs = iter_documents(self.cfg.dataset, text_column=self.cfg.text_column, split=self.cfg.split)
        seqs = pack_tokens(docs, self.loaded.tokenizer, self.cfg.context_size)
        return batch_sequences(seqs, self.cfg.batch_sequences)

    def activations(self, batch: PackedBatch) -> Tensor:
        """(B, T, d_in) activations of one packed batch, on the model's device."""
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        return harvest(self.loaded.model, ids, mask, self.cfg.layer, self.cfg.site)

    def __iter__(self) -> Iterator[Tensor]:
        produced = 0
        while True:
            for chunk in self._one_pass():
                if self.cfg.max_tokens is not None:
                    chunk = chunk[: self.cfg.max_tokens - produced]
                produced += chunk.shape[0]
                if chunk.shape[0]:
                    yield chunk
                if self.cfg.max_tokens is not None and produced >= self.cfg.max_tokens:
                    return
            if not self.cfg.loop or produced == 0:
                return

    def _one_pass(self) -> Iterator[Tensor]:
        for batch in self.packed_batches():
            acts = self.activations(batch)  # (B, T, d_in)
            keep = ~batch.special.to(acts.device)  # (B, T): drop BOS / EOS / pad
            yield acts[keep].float()  # (n, d_in)


def lm_batches(source: LMActivationSource) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(input_ids, attention_mask, special) batches for trainer.evaluation.delta_lm.delta_lm_loss."""
    for batch in source.packed_batches():
        yield batch.input_ids, batch.attention_mask, batch.special
