"""Documents from local files and the hub, bad-input errors, and token packing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from trainer.data.text import (
    DEFAULT_CONTEXT_SIZE_CPU,
    DEFAULT_CONTEXT_SIZE_GPU,
    DatasetError,
    Document,
    PackedSequence,
    batch_sequences,
    default_context_size,
    is_heldout,
    iter_documents,
    pack_tokens,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _error(dataset: str | None, **kwargs: Any) -> str:
    with pytest.raises(DatasetError) as info:
        list(iter_documents(dataset, **kwargs))
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- documents from local files ---------------------------------------------------------------


def test_txt_file_is_one_document(tmp_path: Path) -> None:
    text = "First line of a story.\nSecond line.\n\nA new paragraph, with ünïcode.\n"
    path = tmp_path / "story.txt"
    path.write_text(text)
    assert list(iter_documents(str(path), split="all")) == [Document("story.txt:0", text)]


def test_folder_of_txt_files(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("second book")
    (folder / "a.txt").write_text("first book")
    (folder / "empty.txt").write_text("  \n")
    (folder / "README.md").write_text("ignored: not a data kind")
    (folder / ".hidden.txt").write_text("ignored: hidden")
    docs = list(iter_documents(str(folder), split="all"))
    assert [d.text for d in docs] == ["first book", "second book"]
    assert [d.id for d in docs] == ["books:0", "books:1"]


def test_jsonl_with_text_column_and_splits(tmp_path: Path) -> None:
    rows = [{"body": f"document number {i}", "n": i} for i in range(200)]
    rows[3]["body"] = ""  # empty rows are skipped but keep their row number
    path = _write_jsonl(tmp_path / "docs.jsonl", rows)
    everything = list(iter_documents(str(path), text_column="body", split="all"))
    assert len(everything) == 199
    assert everything[3] == Document("docs.jsonl:4", "document number 4")
    train = list(iter_documents(str(path), text_column="body"))
    heldout = list(iter_documents(str(path), text_column="body", split="heldout"))
    assert sorted(train + heldout) == sorted(everything)
    assert {d.id for d in heldout} == {d.id for d in everything if is_heldout(d.id)}
    assert 0 < len(heldout) < 30
    assert list(iter_documents(str(path), text_column="body", split="validation")) == heldout
    # The id does not depend on how the path is written.
    relative = Path("..") / tmp_path.name / "docs.jsonl"
    assert heldout == list(iter_documents(str(tmp_path / relative), text_column="body", split="heldout"))


def test_json_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"text": "from a json array"}, {"text": "second"}]))
    assert [d.text for d in iter_documents(str(tmp_path / "a.json"), split="all")] == ["from a json array", "second"]
    pq.write_table(pa.table({"content": ["alpha text", "beta text"], "score": [0.5, 0.7]}), tmp_path / "t.parquet")
    docs = list(iter_documents(str(tmp_path / "t.parquet"), text_column="content", split="all"))
    assert docs == [Document("t.parquet:0", "alpha text"), Document("t.parquet:1", "beta text")]
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"text": [f"shard {i} row {j}" for j in range(3)]}), folder / f"part-{i}.parquet")
    assert [d.text for d in iter_documents(str(folder), split="all")][2:4] == ["shard 0 row 2", "shard 1 row 0"]


# --- bad input: one line naming the problem and the allowed values -------------------------------


def test_missing_column_lists_available(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "title": "y"}])
    message = _error(str(path), text_column="text")
    assert "no column 'text'" in message and "'body', 'title'" in message and "--text-column" in message
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "t.parquet")
    assert "available columns: 'content'" in _error(str(tmp_path / "t.parquet"))
    txt = tmp_path / "a.txt"
    txt.write_text("some text")
    assert "available columns: 'text'" in _error(str(txt), text_column="body")
    assert "available columns: 'text'" in _error("packaged", text_column="body")


def test_non_text_column(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"ids": [1, 2, 3], "n": 4, "title": "t"}])
    message = _error(str(path), text_column="ids")
    assert "'ids'" in message and "not text" in message and "columns holding text: 'title'" in message
    assert "holds int values" in _error(str(path), text_column="n")


def test_empty_datasets(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty" in _error(str(tmp_path / "empty.jsonl"))
    blank = _write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "  \n"}, {"text": None}])
    message = _error(str(blank))
    assert "empty" in message and "'text'" in message
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in _error(str(tmp_path / "empty.txt"), split="all")


def test_files_that_are_not_text(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("text\nhello\n")
    message = _error(str(tmp_path / "data.csv"))
    assert "unsupported file kind '.csv'" in message and ".txt, .jsonl, .json, .parquet" in message
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    assert "UTF-8" in _error(str(tmp_path / "binary.txt"), split="all")
    (tmp_path / "broken.jsonl").write_text("this is not json\n")
    assert "broken.jsonl" in _error(str(tmp_path / "broken.jsonl"))


def test_bad_folders_paths_and_splits(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    assert "holds no data files" in _error(str(tmp_path / "nothing"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("a")
    _write_jsonl(mixed / "b.jsonl", [{"text": "b"}])
    assert "mixes data kinds (json, text)" in _error(str(mixed))
    assert "no such file or folder" in _error(str(tmp_path / "missing.jsonl"))
    assert "unknown split 'dev'; allowed: train, heldout" in _error(str(mixed / "a.txt"), split="dev")
    assert "unknown split" in _error(None, split="dev")


def test_unknown_hub_dataset_offline() -> None:
    message = _error("no-such-org/no-such-dataset")
    assert "'no-such-org/no-such-dataset' could not be found locally or on the Hub" in message
    assert "'packaged', a local .txt/.jsonl/.json/.parquet file or folder" in message


def test_errors_raise_before_iteration(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(DatasetError):
        iter_documents(str(path))  # no next() needed


# --- packing ----------------------------------------------------------------------------------

DOCS = [
    Document("d:0", "The quick brown fox jumps over the lazy dog. " * 7),
    Document("d:1", ""),  # tokenises to nothing: skipped, but keeps its index
    Document("d:2", "Sparse autoencoders find features in language models.\n\nNumbers 0123456789 & <b>tags</b>."),
    Document("d:3", "A literal <eos> and <bos> and <pad> inside text stay text. ünïcödé ✓"),
    Document("d:4", "short"),
    Document("d:5", "Beautiful is better than ugly. Explicit is better than implicit. " * 3),
]


def _check_packing(seqs: list[PackedSequence], docs: list[Document], tokenizer: Any, context_size: int) -> None:
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    for seq in seqs:
        assert seq.input_ids.shape == seq.doc_index.shape == seq.special.shape == (context_size,)
        assert seq.input_ids.dtype == seq.doc_index.dtype == torch.long and seq.special.dtype == torch.bool
        assert seq.input_ids[0] == bos and seq.special[0] and seq.doc_index[0] == -1
        # special marks BOS/EOS/pad and nothing else (literal "<eos>" text is not an EOS token).
        assert torch.equal(seq.special, torch.isin(seq.input_ids, torch.tensor([bos, eos, pad])))
    ids = torch.cat([s.input_ids for s in seqs])
    doc_index = torch.cat([s.doc_index for s in seqs])
    special = torch.cat([s.special for s in seqs])
    non_empty = [i for i, d in enumerate(docs) if d.text]
    # One EOS closes each non-empty document and belongs to it.
    assert doc_index[ids == eos].tolist() == non_empty
    # Padding only at the very end.
    padded = (ids == pad).nonzero().flatten()
    if len(padded):
        assert padded.tolist() == list(range(padded[0].item(), len(ids)))
    # Lossless: the non-special tokens of each document decode to its text, in order.
    real = ~special
    assert tokenizer.decode(ids[real].tolist()) == "".join(d.text for d in docs)
    assert sorted(set(doc_index[real].tolist())) == non_empty
    assert bool((doc_index[real].diff() >= 0).all())
    for i in non_empty:
        assert tokenizer.decode(ids[real & (doc_index == i)].tolist()) == docs[i].text


@pytest.mark.parametrize("context_size", [2, 16, 37, 512])
def test_pack_tokens_lossless(tokenizer: Any, context_size: int) -> None:
    seqs = list(pack_tokens(DOCS, tokenizer, context_size, tokenize_batch=2))
    _check_packing(seqs, DOCS, tokenizer, context_size)
    encoded = tokenizer([d.text for d in DOCS], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    n_tokens = sum(len(ids) for ids in encoded)
    n_eos = sum(1 for d in DOCS if d.text)
    assert len(seqs) == -(-(n_tokens + n_eos) // (context_size - 1))  # ceil: only the last one is padded
    # The tokenisation batch size changes nothing.
    for a, b in zip(seqs, pack_tokens(DOCS, tokenizer, context_size, tokenize_batch=64), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_pack_tokens_without_bos(tokenizer: Any) -> None:
    seqs = list(pack_tokens(DOCS, tokenizer, 20, prepend_bos=False))
    assert all(s.input_ids.shape == (20,) for s in seqs)
    ids = torch.cat([s.input_ids for s in seqs])
    assert tokenizer.bos_token_id not in ids.tolist()
    special = torch.cat([s.special for s in seqs])
    assert tokenizer.decode(ids[~special].tolist()) == "".join(d.text for d in DOCS)


def test_pack_packaged_corpus_prefix(tokenizer: Any) -> None:
    docs = list(iter_documents(None, split="heldout"))[:12]
    seqs = list(pack_tokens(docs, tokenizer, DEFAULT_CONTEXT_SIZE_CPU))
    _check_packing(seqs, docs, tokenizer, DEFAULT_CONTEXT_SIZE_CPU)


def test_pack_tokens_bad_arguments(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="context_size"):
        next(pack_tokens(DOCS, tokenizer, 1))
    assert list(pack_tokens([], tokenizer, 8)) == []


def test_batch_sequences(tokenizer: Any) -> None:
    seqs = list(pack_tokens(DOCS, tokenizer, 16))
    batches = list(batch_sequences(seqs, 4))
    assert [b.input_ids.shape[0] for b in batches] == [4] * (len(seqs) // 4) + (
        [len(seqs) % 4] if len(seqs) % 4 else []
    )
    for b in batches:
        assert b.input_ids.shape == b.doc_index.shape == b.special.shape == b.attention_mask.shape
        assert b.input_ids.shape[1] == 16
    assert torch.equal(torch.cat([b.input_ids for b in batches]), torch.stack([s.input_ids for s in seqs]))
    mask = torch.cat([b.attention_mask for b in batches])
    ids = torch.stack([s.input_ids for s in seqs])
    pad = torch.zeros_like(ids, dtype=torch.bool)
    pad[-1] = (ids[-1] == tokenizer.pad_token_id) & (torch.arange(16) > 0)
    assert torch.equal(mask, (~pad).long())
    assert pad.any()  # the last sequence of these documents is padded
    assert all(b.input_ids.shape[0] == 4 for b in batch_sequences(seqs, 4, drop_last=True))


def test_default_context_sizes() -> None:
    assert DEFAULT_CONTEXT_SIZE_GPU == 1024 and DEFAULT_CONTEXT_SIZE_CPU == 128
    assert default_context_size("cpu") == 128
    assert default_context_size(torch.device("cuda", 0)) == 1024


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise OSError("Name or service not known")

    def must_not_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("load_dataset must not retry against an unreachable Hub")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("socket.create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", must_not_load)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    message = _error("some-org/some-dataset")
    assert "could not be found locally or on the Hub (the Hub at" in message and "unreachable" in message
