"""Token ids for a teacher-forced read (PrefillScorer): the assistant's partial answer cut at read offsets,
and the candidates' first tokens.

A read at character offset p of the answer is the model's next-token distribution after the tokens of
answer[:p], so p must fall between two tokens. The answer is tokenized as one text when every offset
is a token boundary of that tokenization (tokenizing answer[:p] alone gives the same leading tokens,
as it does after a tab or a newline for byte-level BPE tokenizers); otherwise piece by piece between
the offsets, so that each offset starts a token (the model then reads a slightly unusual split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]] if text else []


def prefix_token_ids(tokenizer: Any, prefix: str, positions: Sequence[int]) -> tuple[list[int], list[int]]:
    """(token ids of `prefix`, per offset in `positions` the number of those ids before it).

    Offsets must lie in 0..len(prefix) (any order, repeats allowed)."""
    whole = _encode(tokenizer, prefix)
    starts: list[int] = []
    for p in positions:
        head = _encode(tokenizer, prefix[:p])
        if whole[: len(head)] != head:
            break  # p cuts a token of the whole text: fall back to pieces
        starts.append(len(head))
    else:
        return whole, starts
    cuts = sorted({0, len(prefix), *positions})
    ids: list[int] = []
    start_of: dict[int, int] = {}
    for a, b in zip(cuts, [*cuts[1:], cuts[-1]], strict=True):
        start_of[a] = len(ids)
        ids.extend(_encode(tokenizer, prefix[a:b]))
    return ids, [start_of[p] for p in positions]


def candidate_token_ids(tokenizer: Any, candidates: Sequence[str]) -> dict[str, int]:
    """Candidate -> the id of its first token, in the given order; a candidate whose first token is an
    earlier candidate's is left out (e.g. "10" after "1" where "10" is spelt "1" "0").

    Raises ValueError for a candidate that encodes to no token."""
    chosen: dict[str, int] = {}
    for candidate in candidates:
        ids = _encode(tokenizer, candidate)
        if not ids:
            raise ValueError(f"candidates: {candidate!r} encodes to no token")
        if ids[0] not in chosen.values():
            chosen[candidate] = ids[0]
    return chosen
