"""The encode reply as JSON bytes, written in small pieces so that a large reply never holds the GIL long.

A reply can hold hundreds of thousands of values (JUMPSCOPE_ENCODE_MAX_VALUES caps it). Building
pydantic objects per value and serialising them in one call took seconds and, on the event loop,
stalled every other request. Here each piece (a few hundred tokens) is one `json.dumps` call, run
in a thread by the caller: between pieces the interpreter lets the event loop run. The shape is
exactly `EncodeOut` / `EncodeBatchOut` (app.encoding.schemas; tested equal), or `EncodeMultiOut`.
"""

from __future__ import annotations

import json
import math

from app.encoding.types import TextEncoding

VALUES_PER_PIECE = 8192
"""About this many values per json.dumps call (a few milliseconds each)."""


def _number(value: float) -> float | None:
    """JSON has no NaN or infinity: such a value (a broken SAE) is written as null."""
    return value if math.isfinite(value) else None


def _dumps(chunk: list[list[dict[str, float | int | None]]]) -> str:
    """json.dumps, with any non-finite value written as null."""
    try:
        return json.dumps(chunk, allow_nan=False)
    except ValueError:
        clean = [[{"index": a["index"], "value": _number(float(a["value"] or 0.0))} for a in row] for row in chunk]
        return json.dumps(clean)


def _text_json(enc: TextEncoding) -> str:
    head = json.dumps({"tokens": enc.tokens, "token_ids": enc.token_ids, "special": enc.special})[:-1]
    activations = _activations_json(enc)
    if enc.dense is None:
        features = "null"
    else:
        features = json.dumps([{"index": i, "values": [_number(v) for v in values]} for i, values in enc.dense.items()])
    return f'{head}, "activations": {activations}, "features": {features}}}'


def _activations_json(enc: TextEncoding) -> str:
    """The per-token active features of one encoding as a JSON list, piece by piece."""
    pieces: list[str] = []
    chunk: list[list[dict[str, float | int | None]]] = []
    count = 0
    for row in enc.activations:
        chunk.append([{"index": i, "value": v} for i, v in row])
        count += len(row) + 1
        if count >= VALUES_PER_PIECE:
            pieces.append(_dumps(chunk)[1:-1])
            chunk, count = [], 0
    if chunk:
        pieces.append(_dumps(chunk)[1:-1])
    return "[" + ", ".join(pieces) + "]"


def reply_json(results: list[TextEncoding], *, single: bool) -> bytes:
    """EncodeOut JSON of results[0] when `single`, else EncodeBatchOut JSON of all."""
    if single:
        return _text_json(results[0]).encode()
    return ('{"results": [' + ", ".join(_text_json(r) for r in results) + "]}").encode()


def multi_json(names: list[str], results: list[TextEncoding]) -> bytes:
    """EncodeMultiOut JSON: the text's tokens once, then each SAE's per-token active features."""
    first = results[0]
    head = json.dumps({"tokens": first.tokens, "token_ids": first.token_ids, "special": first.special})[:-1]
    saes = ", ".join(
        f'{{"sae": {json.dumps(name)}, "activations": {_activations_json(enc)}}}'
        for name, enc in zip(names, results, strict=True)
    )
    return f'{head}, "results": [{saes}]}}'.encode()
