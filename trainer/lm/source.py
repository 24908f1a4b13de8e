"""The live language-model activation source: text -> tokens -> model -> (n, d_in) chunks.

Documents are tokenised with BOS and packed into fixed-length sequences (trainer.data.text),
run through the model in batches with the forward pass stopped right after the hooked
layer (trainer.lm.sites.harvest), and the BOS/EOS/pad positions are dropped, so the trainer,
the cache writer and the evaluators never see special tokens. Deterministic: the same
dataset, model and settings give the same stream, which is what `--resume` replays.

`TokenRowHarvest` is one pass of the same stream as `TokenRows` (each activation with its token,
document, sequence and position) for the cache writer, recording what an index built from the
cache needs to rebuild the packed sequences (trainer.data.sequences).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from trainer.data.activations import TokenRows
from trainer.data.documents import recording
from trainer.data.text import Document, PackedBatch, batch_sequences, iter_documents, pack_tokens, special_tokens
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

    def packed_batches(self, documents: list[str] | None = None) -> Iterator[PackedBatch]:
        """The token batches this source runs through the model; the ids of the documents read
        are appended to `documents` when given (a batch's doc_index indexes that list)."""
        docs: Iterator[Document] = iter_documents(
            self.cfg.dataset, text_column=self.cfg.text_column, split=self.cfg.split
        )
        if documents is not None:
            docs = recording(docs, documents)
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


class TokenRowHarvest:
    """One pass of a live source (up to its max_tokens) as `TokenRows`, for an activation cache.

    Iterate it once; afterwards `documents` holds the ids the rows' doc_ids index and `meta()` what
    trainer.data.sequences needs to rebuild the packed sequences exactly: the special token ids,
    how many sequences are complete in the cache, and where the padding of the last one starts.
    """

    def __init__(self, source: LMActivationSource) -> None:
        if source.cfg.loop:
            raise ValueError("a harvest is one pass over the data: the source must not loop")
        self.source = source
        self.documents: list[str] = []
        self.sequences = 0
        """Packed sequences whose every token is in the rows yielded."""
        self.pad_from: tuple[int, int] | None = None
        """(sequence, position) of the first pad token, when the data ran out (only the last sequence has pads)."""

    def __iter__(self) -> Iterator[TokenRows]:
        cfg = self.source.cfg
        produced = seq0 = 0
        for batch in self.source.packed_batches(self.documents):
            acts = self.source.activations(batch)  # (B, T, d_in)
            keep = ~batch.special  # (B, T) on the CPU
            b_idx, pos = keep.nonzero(as_tuple=True)  # (n,) each, row-major like acts[keep]
            rows = TokenRows(
                acts[keep.to(acts.device)].float(), batch.input_ids[keep], batch.doc_index[keep], seq0 + b_idx, pos
            )
            n_seq = batch.input_ids.shape[0]
            pad = batch.special & (batch.doc_index < 0)  # (B, T): BOS and pad
            pad[:, 0] = False  # position 0 is the BOS
            if pad.any():
                b, p = pad.nonzero()[0].tolist()
                self.pad_from = (seq0 + b, p)
            if cfg.max_tokens is not None and produced + len(rows) >= cfg.max_tokens:
                cut = cfg.max_tokens - produced
                self.sequences = int(rows.seq_ids[cut]) if cut < len(rows) else seq0 + n_seq
                if cut < len(rows):
                    self.pad_from = None  # the data did not run out
                yield rows.head(cut)
                return
            produced += len(rows)
            seq0 += n_seq
            self.sequences = seq0
            yield rows

    def meta(self) -> dict[str, Any]:
        """The meta.json fields of a cache with token rows (after the pass)."""
        cfg = self.source.cfg
        ids = special_tokens(self.source.loaded.tokenizer)
        return {
            "token_rows": True,
            "special_tokens": ids._asdict(),
            "sequences": self.sequences,
            "pad_from": list(self.pad_from) if self.pad_from is not None else None,
            "batch_sequences": cfg.batch_sequences,
        }


def lm_batches(source: LMActivationSource) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(input_ids, attention_mask, special) batches for trainer.evaluation.delta_lm.delta_lm_loss."""
    for batch in source.packed_batches():
        yield batch.input_ids, batch.attention_mask, batch.special
