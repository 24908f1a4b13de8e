"""Activation sources: everything the trainer reads is an iterable of (n, d_in) chunks.

A source is deterministic given its seed, so a resumed run can replay it to the exact
batch it stopped at. Sources here: activation shards on disk (interface.md), an in-memory
tensor, and a synthetic generator with a known sparse dictionary. The live language-model
source (trainer.lm.source) implements the same `ActivationSource` protocol.

Shards a harvest writes also carry, row for row, where each activation came from
(`TokenRows`): its token id, its document (an index into the cache's `documents.json`), its
packed sequence and its position there. With them an SAE can be indexed from the cache
without running the model again (trainer.data.sequences rebuilds the packed sequences).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor


class ActivationError(ValueError):
    """Activation data that cannot be used, with a message naming the problem."""


@runtime_checkable
class ActivationSource(Protocol):
    """An iterable of float32 chunks (n, d_in) with special tokens already removed."""

    d_in: int
    description: str
    """Recorded as `dataset` in the SAE's cfg.json."""

    def __iter__(self) -> Iterator[Tensor]: ...


class TensorSource:
    """Activations held in memory, optionally looped forever."""

    def __init__(
        self, activations: Tensor, chunk_tokens: int = 65_536, loop: bool = False, description: str = "in-memory"
    ) -> None:
        if activations.ndim != 2 or activations.shape[0] == 0:
            raise ActivationError(
                f"activations must be a non-empty (n_tokens, d_in) tensor, got {tuple(activations.shape)}"
            )
        self.activations = activations
        self.d_in = activations.shape[1]
        self.chunk_tokens = chunk_tokens
        self.loop = loop
        self.description = description

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            for start in range(0, self.activations.shape[0], self.chunk_tokens):
                yield self.activations[start : start + self.chunk_tokens].float()
            if not self.loop:
                return


@dataclass
class SyntheticSpec:
    """A sparse generative model with a known dictionary, for tests and demos."""

    d_in: int = 64
    """Width of the generated activations."""
    n_features: int = 256
    """Size of the true dictionary (unit-norm random directions)."""
    active_per_token: float = 4.0
    """Expected number of true features active per token (the intended L0)."""
    noise: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to each token."""
    scale: float = 10.0
    """Overall scale of the activations (the trainer must normalise it away)."""
    seed: int = 0
    """Seed of the dictionary and the feature frequencies."""
    sample_seed: int = 1
    """Seed of the token stream (a different one gives held-out data)."""
    chunk_tokens: int = 16_384
    """Tokens generated per chunk."""

    def __post_init__(self) -> None:
        if self.active_per_token <= 0 or self.active_per_token > self.n_features:
            raise ValueError("active_per_token must be in (0, n_features]")


class SyntheticSource:
    """Tokens x = sum_i a_i d_i + noise, each true feature i firing with its own frequency.

    Frequencies follow a power law (a few common features, many rare ones, like real SAEs)
    normalised to `active_per_token` on average; magnitudes are uniform in [0.5, 1.5].
    """

    def __init__(self, spec: SyntheticSpec, loop: bool = True, max_tokens: int | None = None) -> None:
        self.spec = spec
        self.d_in = spec.d_in
        self.loop = loop
        self.max_tokens = max_tokens
        gen = torch.Generator().manual_seed(spec.seed)
        dictionary = torch.randn(spec.n_features, spec.d_in, generator=gen)
        self.dictionary = dictionary / dictionary.norm(dim=1, keepdim=True)  # (n_features, d_in)
        ranks = torch.arange(1, spec.n_features + 1, dtype=torch.float64)
        weights = ranks.pow(-0.5)[torch.randperm(spec.n_features, generator=gen)]
        self.frequencies = (weights / weights.sum() * spec.active_per_token).clamp(max=1.0).float()
        params = ",".join(f"{k}={v}" for k, v in asdict(spec).items() if k != "chunk_tokens")
        self.description = f"synthetic:{params}"

    def held_out(self) -> SyntheticSource:
        """The same dictionary with a different token stream."""
        spec = SyntheticSpec(**{**asdict(self.spec), "sample_seed": self.spec.sample_seed + 10_007})
        return SyntheticSource(spec, loop=self.loop, max_tokens=self.max_tokens)

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.spec.sample_seed)
        n = self.spec.chunk_tokens
        produced = 0
        while self.max_tokens is None or produced < self.max_tokens:
            if self.max_tokens is not None:
                n = min(n, self.max_tokens - produced)
            active = torch.rand(n, self.spec.n_features, generator=gen) < self.frequencies
            magnitude = 0.5 + torch.rand(n, self.spec.n_features, generator=gen)
            codes = active * magnitude  # (n, n_features)
            x = codes @ self.dictionary  # (n, d_in)
            if self.spec.noise > 0:
                x = x + self.spec.noise * torch.randn(n, self.d_in, generator=gen)
            produced += n
            yield x * self.spec.scale
            if not self.loop and self.max_tokens is None:
                return


SHARD_TENSOR = "activations"
TOKEN_IDS = "token_ids"
DOC_IDS = "doc_ids"
SEQ_IDS = "seq_ids"
POSITIONS = "positions"
ROW_TENSORS = (TOKEN_IDS, DOC_IDS, SEQ_IDS, POSITIONS)
"""The per-row tensors beside `activations` in a harvest's shards, all (n_tokens,)."""
_ROW_DTYPES = {TOKEN_IDS: torch.int32, DOC_IDS: torch.int64, SEQ_IDS: torch.int64, POSITIONS: torch.int32}
DOCUMENTS_FILE = "documents.json"
"""The document ids (a JSON list) that a harvest's `doc_ids` index into."""


@dataclass
class TokenRows:
    """Activation rows and where each came from; every tensor has n rows, special tokens excluded."""

    activations: Tensor
    """(n, d_in) float."""
    token_ids: Tensor
    """(n,) int64 token id."""
    doc_ids: Tensor
    """(n,) int64 document: an index into the list of document ids (the cache's documents.json)."""
    seq_ids: Tensor
    """(n,) int64 packed sequence, counted from 0 over the whole harvest (non-decreasing)."""
    positions: Tensor
    """(n,) int64 position within that sequence (BOS, when prepended, is position 0)."""

    def __len__(self) -> int:
        return int(self.activations.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """The rows as shard tensors, by name."""
        return {SHARD_TENSOR: self.activations, TOKEN_IDS: self.token_ids, DOC_IDS: self.doc_ids,
                SEQ_IDS: self.seq_ids, POSITIONS: self.positions}  # fmt: skip

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> TokenRows:
        return cls(tensors[SHARD_TENSOR], *(tensors[name].long() for name in ROW_TENSORS))

    def head(self, n: int) -> TokenRows:
        """The first n rows."""
        return TokenRows.from_tensors({name: t[:n] for name, t in self.tensors().items()})


def _shard_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ActivationError(f"activation folder {folder} does not exist or is not a folder")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ActivationError(f"activation folder {folder} holds no *.safetensors shards")
    return files


class ShardSource:
    """Activation shards on disk (interface.md): *.safetensors with `activations` (n, d_in).

    Shards are read in file-name order; `loop` starts over when they run out. Every shard
    is checked (tensor present, 2-D, d_in consistent) before training starts.
    """

    def __init__(self, folder: str | Path, loop: bool = False) -> None:
        self.folder = Path(folder)
        self.files = _shard_files(self.folder)
        self.loop = loop
        meta_path = self.folder / "meta.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        widths = set()
        self.n_tokens = 0
        with_rows = []
        for path in self.files:
            with safe_open(path, framework="pt") as shard:
                keys = set(shard.keys())
                if SHARD_TENSOR not in keys:
                    raise ActivationError(
                        f"shard {path.name} has no '{SHARD_TENSOR}' tensor (found: {', '.join(sorted(keys)) or 'none'})"
                    )
                shape = shard.get_slice(SHARD_TENSOR).get_shape()
                row_shapes = {name: shard.get_slice(name).get_shape() for name in ROW_TENSORS if name in keys}
            if len(shape) != 2:
                raise ActivationError(f"shard {path.name}: '{SHARD_TENSOR}' must be 2-D (n_tokens, d_in), got {shape}")
            for name, row_shape in row_shapes.items():
                if list(row_shape) != [shape[0]]:
                    raise ActivationError(
                        f"shard {path.name}: '{name}' must be ({shape[0]},) like its activations, got {row_shape}"
                    )
            with_rows.append(len(row_shapes) == len(ROW_TENSORS))
            widths.add(shape[1])
            self.n_tokens += shape[0]
        self.token_rows = all(with_rows)
        """Every shard carries token_ids, doc_ids, seq_ids and positions (a harvest's cache)."""
        if len(widths) != 1:
            raise ActivationError(f"shards in {self.folder} disagree on d_in: {sorted(widths)}")
        self.d_in = widths.pop()
        if self.n_tokens == 0:
            raise ActivationError(f"activation folder {self.folder} holds no tokens")
        self.description = str(self.meta.get("dataset", f"activations:{self.folder}"))

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            for path in self.files:
                with safe_open(path, framework="pt") as shard:
                    chunk = shard.get_tensor(SHARD_TENSOR).float()
                if not torch.isfinite(chunk).all():
                    raise ActivationError(f"shard {path.name} contains NaN or infinite activations")
                yield chunk
            if not self.loop:
                return

    def rows(self) -> Iterator[TokenRows]:
        """The shards in order as `TokenRows` (activations as float32); needs `token_rows`."""
        if not self.token_rows:
            raise ActivationError(
                f"the shards in {self.folder} carry no {', '.join(ROW_TENSORS)}: harvest them again with "
                "`jumpscope cache` (or index with the model instead)"
            )
        for path in self.files:
            with safe_open(path, framework="pt") as shard:
                rows = TokenRows.from_tensors({name: shard.get_tensor(name) for name in (SHARD_TENSOR, *ROW_TENSORS)})
            rows.activations = rows.activations.float()
            if not torch.isfinite(rows.activations).all():
                raise ActivationError(f"shard {path.name} contains NaN or infinite activations")
            yield rows

    def documents(self) -> list[str]:
        """The document ids the shards' doc_ids index into (documents.json)."""
        path = self.folder / DOCUMENTS_FILE
        if not path.exists():
            raise ActivationError(f"{self.folder} has no {DOCUMENTS_FILE}: harvest it again with `jumpscope cache`")
        try:
            documents = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ActivationError(f"{path} is not a JSON list of document ids ({error})") from None
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise ActivationError(f"{path} is not a JSON list of document ids")
        return documents


def write_shards(
    folder: str | Path,
    chunks: Iterable[Tensor | TokenRows],
    meta: dict[str, Any],
    *,
    shard_tokens: int = 262_144,
    dtype: torch.dtype = torch.float32,
    finish: Callable[[], tuple[dict[str, Any], list[str] | None]] | None = None,
) -> int:
    """Write chunks as activation shards plus meta.json; returns the token count.

    Chunks are (n, d_in) activations or `TokenRows`, whose per-row tensors go into the shards
    too. `finish`, called once the chunks run out, gives more meta.json fields and the document
    ids written to documents.json. Written into a temporary sibling folder that is renamed into
    place at the end, so an interrupted cache never looks complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    pending: list[dict[str, Tensor]] = []
    pending_n = index = total = 0

    def write(part: dict[str, Tensor]) -> None:
        nonlocal index
        tensors = {name: t.to(dtype if name == SHARD_TENSOR else _ROW_DTYPES[name]).cpu().contiguous()
                   for name, t in part.items()}  # fmt: skip
        save_file(tensors, str(tmp / f"shard_{index:05d}.safetensors"))
        index += 1

    def joined() -> dict[str, Tensor]:
        return {name: torch.cat([p[name] for p in pending]) for name in pending[0]}

    try:
        for chunk in chunks:
            part = chunk.tensors() if isinstance(chunk, TokenRows) else {SHARD_TENSOR: chunk}
            if pending and part.keys() != pending[0].keys():
                raise ActivationError("a chunk stream must be all activations or all token rows")
            n = part[SHARD_TENSOR].shape[0]
            pending.append(part)
            pending_n += n
            total += n
            if pending_n >= shard_tokens:  # cut exactly shard_tokens per file
                data = joined()
                full = (pending_n // shard_tokens) * shard_tokens
                for start in range(0, full, shard_tokens):
                    write({name: t[start : start + shard_tokens] for name, t in data.items()})
                rest = {name: t[full:] for name, t in data.items()}
                pending, pending_n = ([rest], pending_n - full) if pending_n > full else ([], 0)
        if pending_n:
            write(joined())
        if total == 0:
            raise ActivationError("no activations to write: the source yielded no tokens")
        more, documents = finish() if finish is not None else ({}, None)
        if documents is not None:
            (tmp / DOCUMENTS_FILE).write_text(json.dumps(documents))
        (tmp / "meta.json").write_text(json.dumps({**meta, **more, "n_tokens": total}, indent=2))
        if folder.exists():
            raise ActivationError(f"{folder} already exists; remove it or choose another folder")
        os.replace(tmp, folder)
    except BaseException:  # Ctrl-C included: leave no partial folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return total


class ShuffleBuffer:
    """Mixes a chunk stream through a buffer of `capacity` tokens (deterministic by seed).

    Fills to capacity, shuffles, emits half and keeps half, so consecutive tokens of one
    document end up far apart (Gemma Scope shuffles in buckets of ~1e6 activations).
    """

    def __init__(self, chunks: Iterable[Tensor], capacity: int, seed: int = 0) -> None:
        self.chunks = chunks
        self.capacity = capacity
        self.seed = seed

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        held: Tensor | None = None
        for chunk in self.chunks:
            held = chunk if held is None else torch.cat([held, chunk])
            if held.shape[0] >= self.capacity:
                held = held[torch.randperm(held.shape[0], generator=gen)]
                half = held.shape[0] // 2
                yield held[:half]
                held = held[half:]
        if held is not None and held.shape[0]:
            yield held[torch.randperm(held.shape[0], generator=gen)]


class EpochShuffle:
    """A finite data set of n_tokens activations held in memory, streamed in a fresh random order every
    epoch, forever (deterministic by seed).

    What a shuffle buffer at least as large as the data amounts to, without its cost: the data is read
    once (one pass of the source), and every step gathers its rows instead of the buffer concatenating
    and permuting everything it holds (README, "The demo": a cache that fits in memory trains this way).
    """

    def __init__(self, source: Iterable[Tensor], n_tokens: int, seed: int = 0, chunk_tokens: int = 65_536) -> None:
        self.data = take_tokens(source, n_tokens)  # (n, d_in): one pass over the source
        self.seed = seed
        self.chunk_tokens = chunk_tokens

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        n = self.data.shape[0]
        while True:
            order = torch.randperm(n, generator=gen)  # (n,): this epoch's order
            for part in order.split(self.chunk_tokens):
                yield self.data[part]  # (<= chunk_tokens, d_in)


def batches(chunks: Iterable[Tensor], batch_size: int, *, keep_tail: bool = False) -> Iterator[Tensor]:
    """Re-cut a chunk stream into (batch_size, d_in) batches; a short tail is dropped (training's
    batches are all full) unless keep_tail (evaluation counts every token it was given)."""
    pending: list[Tensor] = []
    pending_n = 0
    for chunk in chunks:
        pending.append(chunk)
        pending_n += chunk.shape[0]
        if pending_n < batch_size:
            continue
        joined = torch.cat(pending) if len(pending) > 1 else pending[0]
        usable = (joined.shape[0] // batch_size) * batch_size
        yield from joined[:usable].split(batch_size)
        rest = joined[usable:]
        pending, pending_n = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if keep_tail and pending_n:
        yield torch.cat(pending)


def take_tokens(chunks: Iterable[Tensor], n_tokens: int) -> Tensor:
    """The first n_tokens of a chunk stream, concatenated (fewer if the stream ends)."""
    got: list[Tensor] = []
    n = 0
    for chunk in chunks:
        got.append(chunk[: n_tokens - n])
        n += got[-1].shape[0]
        if n >= n_tokens:
            break
    if not got:
        raise ActivationError("the activation source yielded no tokens")
    return torch.cat(got)
