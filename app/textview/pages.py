"""The text -> features page, `/saes/NAME/text?text=...` (interface.md): paste a text, see its tokens,
each token's strongest features, and the features most active over the whole text, each linking
to its dashboard; `compare=OTHER` (repeatable) adds SAEs of the same model side by side, all read
from ONE forward pass (POST /api/v1/encode/multi's path).

Rendered on the server, so the first render needs no JavaScript; the page is one GET form, so
every state is a shareable URL: `hl=SAE:INDEX` colours the tokens by that feature's activation
(scale as on the dashboard: the feature's indexed max, or its max here if larger), `pos=N` shows
token N's features. static/textview.js does both without a reload (hover or focus a token; press
a summary feature's "Highlight").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from app.catalog.saes import NotFound, RegistryError
from app.core.errors import AuthError, TooManyRequests
from app.encoding.schemas import MAX_MULTI_SAES
from app.encoding.types import EncodeError, EncoderUnavailable, TextEncoding
from app.textview.explanations import latest_explanations
from app.textview.queries import SAEInfo, comparable, indexed_maxima, sae_info
from app.textview.tokens import token_buttons_html
from app.textview.view import Column, column
from app.web.formats import fmt_value
from app.web.params import page_session
from app.web.rendering import error_page, render

MAX_PAGE_CHARS = 4000
"""Characters of text the page takes: it travels in the URL (longer texts: POST /api/v1/encode/multi)."""
TITLE_TOP = 3
"""Features per SAE in a token's tooltip (the panel lists more)."""

router = APIRouter(include_in_schema=False)


@dataclass
class TextQuery:
    """The page's state, parsed leniently from its URL: what cannot be used is noted in `problems`."""

    text: str = ""
    asked: bool = False
    """Whether a text was submitted at all (an empty one is then an error)."""
    compare: list[str] = field(default_factory=list)
    highlight: tuple[str, int] | None = None
    pos: int | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: Any) -> TextQuery:
        q = cls(text=params.get("text", "").replace("\x00", ""), asked="text" in params)
        q.compare = list(dict.fromkeys(name.strip() for name in params.getlist("compare") if name.strip()))[:64]
        hl = (params.getlist("hl") or [""])[-1]
        name, _, index = hl.partition(":")
        if hl and index.isascii() and index.isdigit() and len(index) <= 12:
            q.highlight = (name, int(index))
        elif hl:
            q.problems.append(f"Nothing highlighted: {hl[:60]!r} is not SAE:FEATURE.")
        pos = (params.getlist("pos") or [""])[-1]
        q.pos = int(pos) if pos.isascii() and pos.isdigit() and len(pos) <= 9 else None
        return q


@dataclass
class TextView:
    """Everything the results part of the page shows."""

    tokens: list[str]
    special: list[bool]
    columns: list[Column]
    highlight: tuple[str, int] | None
    pos: int | None

    def column_of(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.sae == name), None)

    def titles(self) -> list[str]:
        """Each token's tooltip (the no-JS hover): its strongest features, per SAE when several."""
        several = len(self.columns) > 1
        out = []
        for i in range(len(self.tokens)):
            parts = []
            for c in self.columns:
                top = " ".join(f"#{f} {fmt_value(v)}" for f, v in c.per_token[i][:TITLE_TOP]) or "none active"
                parts.append(f"{c.sae}: {top}" if several else top)
            out.append(" | ".join(parts))
        return out

    def tokens_html(self) -> Any:
        """The token buttons, coloured by the highlighted feature if there is one."""
        values, scale = None, 1.0
        if self.highlight is not None:
            col = self.column_of(self.highlight[0])
            if col is not None:
                values, scale = col.dense.get(self.highlight[1]), col.scale(self.highlight[1])
        return token_buttons_html(self.tokens, self.special, self.titles(), values, scale)

    def data(self) -> dict[str, Any]:
        """What static/textview.js needs (the page embeds it as JSON): per SAE, per-token features, summary
        features' values at every token, colour scales and explanations."""

        def short(v: float) -> float | None:
            return float(f"{v:.4g}") if math.isfinite(v) else None

        return {
            "highlight": f"{self.highlight[0]}:{self.highlight[1]}" if self.highlight else None,
            "saes": [
                {
                    "name": c.sae,
                    "tokens": [[[f, short(v)] for f, v in row] for row in c.per_token],
                    "dense": {str(f): [short(v) for v in values] for f, values in c.dense.items()},
                    "scales": {str(f): short(c.scale(f)) for f in c.dense},
                    "explanations": {str(f): text for f, text in c.explanations.items()},
                }
                for c in self.columns
            ],
        }


@dataclass
class Outcome:
    """What encoding the text gave: the encodings, or the error to show and its status."""

    encodings: list[TextEncoding] | None = None
    error: str | None = None
    status: int = 200


async def _encode(request: Request, names: list[str], text: str) -> Outcome:
    """Encode server-side with the encode API's rules: its token rule and rate limit, its gate and limits."""
    from app.auth.encode_access import encode_client
    from app.encoding.service import encode_multi, encode_texts

    def access() -> str:  # the page sends no token: it may encode when the API would let an anonymous caller
        state = request.app.state
        with state.sessions() as session, session.begin():
            host = request.client.host if request.client else None
            return encode_client(session, None, host, requires_token=state.settings.encode_requires_token,
                                 limiter=state.encode_rate)  # fmt: skip

    try:
        await run_in_threadpool(access)
        if len(names) == 1:
            encodings = await encode_texts(request, names[0], [text], top_k=None, features=None, include_bos=True)
        else:
            encodings = await encode_multi(request, names, text, top_k=None, include_bos=True)
    except NotFound as e:
        return Outcome(error=str(e), status=404)
    except (EncodeError, RegistryError) as e:
        return Outcome(error=str(e), status=422)
    except AuthError as e:
        return Outcome(error=e.detail, status=e.status)
    except TooManyRequests as e:
        return Outcome(error=e.detail, status=429)
    except EncoderUnavailable as e:
        return Outcome(error=f"No encoder is available: {e}", status=503)
    return Outcome(encodings=encodings)


def _check_compare(request: Request, main: SAEInfo, others: list[SAEInfo], names: list[str]) -> tuple[int, str] | None:
    """(status, message) when a compared SAE is unknown (404), of another model (422) or one too many (422)."""
    allowed = {o.name for o in others}
    for name in names:
        if name == main.name or name in allowed:
            continue
        try:
            with page_session(request) as session:
                other = sae_info(session, name)
        except NotFound as e:
            return 404, str(e)
        return 422, (
            f"{other.name} cannot be compared with {main.name} in one forward pass: it reads "
            f"{other.model or 'no model'}{'' if other.prepend_bos == main.prepend_bos else ' with another BOS rule'}, "
            f"{main.name} reads {main.model or 'no model'}."
        )
    if len({main.name, *names}) > MAX_MULTI_SAES:
        return 422, f"Compare at most {MAX_MULTI_SAES} SAEs at once ({len({main.name, *names})} chosen)."
    return None


def _view(request: Request, infos: list[SAEInfo], enc: list[TextEncoding], q: TextQuery) -> TextView:
    """Columns from the encodings, with the indexed maxima and explanations of their features (blocking)."""
    first = enc[0]
    highlight = q.highlight if q.highlight and any(i.name == q.highlight[0] for i in infos) else None
    if q.highlight and highlight is None:
        q.problems.append(f"Nothing highlighted: {q.highlight[0]!r} is not one of the SAEs on this page.")
    columns = []
    with page_session(request) as session:
        for info, e in zip(infos, enc, strict=True):
            wanted = highlight[1] if highlight and highlight[0] == info.name else None
            if wanted is not None and wanted >= info.d_sae:
                q.problems.append(f"Nothing highlighted: {info.name} has features 0 to {info.d_sae - 1}.")
                highlight = wanted = None
            col = column(info.name, e.activations, e.special, wanted)
            maxima = indexed_maxima(session, info, list(col.dense))
            col.scales = {f: max(maxima.get(f, 0.0), max(values, default=0.0)) for f, values in col.dense.items()}
            col.explanations = latest_explanations(session, info.id, list(col.dense))
            columns.append(col)
    pos = q.pos if q.pos is not None and q.pos < len(first.tokens) else None
    return TextView(tokens=first.tokens, special=first.special, columns=columns, highlight=highlight, pos=pos)


@router.get("/saes/{sae}/text", response_class=HTMLResponse)
async def text_page(request: Request, sae: str) -> HTMLResponse:
    """The text -> features page of one SAE (and the SAEs it is compared with)."""
    q = TextQuery.parse(request.query_params)

    def load() -> tuple[SAEInfo, list[SAEInfo]]:
        with page_session(request) as session:
            main = sae_info(session, sae)
            return main, comparable(session, main)

    try:
        main, others = await run_in_threadpool(load)
    except NotFound as e:
        return error_page(request, 404, "No such SAE", str(e))
    compare = [name for name in q.compare if name != main.name]
    refused = await run_in_threadpool(_check_compare, request, main, others, compare)
    if refused is not None and refused[0] == 404:
        return error_page(request, 404, "No such SAE", refused[1], sae_name=main.name)
    by_name = {o.name: o for o in others}
    infos = [main, *(by_name[name] for name in compare if name in by_name)]
    context: dict[str, Any] = {"sae": main, "others": others, "compare": compare, "q": q, "view": None,
                               "error": None, "max_chars": MAX_PAGE_CHARS}  # fmt: skip
    status = 200
    if refused is not None:
        status, context["error"] = refused
    elif main.model is None or main.layer is None:
        status, context["error"] = 422, f"{main.name} names no model and layer, so it cannot read text."
    elif q.asked and not q.text.strip():
        status, context["error"] = 422, "The text is empty: type or paste some text to see its features."
    elif len(q.text) > MAX_PAGE_CHARS:
        status, context["error"] = (
            422,
            (
                f"The text has {len(q.text):,} characters; this page takes at most {MAX_PAGE_CHARS:,} "
                "(POST /api/v1/encode/multi takes longer ones)."
            ),
        )
    elif q.text.strip():
        outcome = await _encode(request, [i.name for i in infos], q.text)
        if outcome.encodings is None:
            status, context["error"] = outcome.status, outcome.error
        else:
            context["view"] = await run_in_threadpool(_view, request, infos, outcome.encodings, q)
    return render(request, "text.html", context, status=status)
