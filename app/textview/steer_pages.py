"""The steering page, `/saes/NAME/steer`: a prompt, interventions on features (found by a search of the
SAE's features, or arriving from a dashboard's "steer with this" link, `?f=INDEX`), their strengths,
and the unsteered and steered continuations side by side (app.steering.service.steer, the engine of
POST /api/v1/saes/{sae}/steer, rendered on the server).

The page is one GET form, so it needs no JavaScript and every run is a URL: `prompt`, one
(`f`, `kind`, `v`) triple per intervention (kind `add`: v x the decoder direction; `clamp`: the
activation set to v), `positions`, `max_new_tokens`, `temperature`, `seed`, and `run=1` to generate.
Without `run=1` the form is only edited: `fq` searches features, `add=INDEX` adds one (its strength
defaults to STRENGTH_MULTIPLE times its indexed max activation), `remove=K` drops row K. The run's
link carries the seed the server used, so it reproduces sampled runs too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.catalog.saes import NotFound, RegistryError
from app.core.errors import AuthError, InvalidInput, TooManyRequests, validation_message
from app.encoding.types import EncoderUnavailable
from app.features.queries import list_features
from app.features.schemas import FeatureSummary
from app.steering.schemas import MAX_INTERVENTIONS, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, SteerIn, SteerOut
from app.textview.explanations import latest_explanations
from app.textview.queries import SAEInfo, indexed_maxima, sae_info
from app.web.params import page_session
from app.web.rendering import error_page, render

STRENGTH_MULTIPLE = 4.0
"""A new intervention's default strength: this many times the feature's max activation in the index (raw
units), a push a few times stronger than the feature's own strongest firing; 1 when that is unknown."""
SEARCH_RESULTS = 12
"""Features a search lists."""
KINDS = ("add", "clamp")

router = APIRouter(include_in_schema=False)


@dataclass
class Row:
    """One intervention as typed into the form (validated only when the run is built)."""

    feature: str
    kind: str = "add"
    value: str = ""


@dataclass
class SteerForm:
    """The page's form, parsed leniently from its URL."""

    prompt: str = ""
    rows: list[Row] = field(default_factory=list)
    positions: str = "all"
    max_new_tokens: str = "32"
    temperature: str = "0"
    seed: str = ""
    run: bool = False
    search: str = ""
    added: int | None = None
    """The row `add=INDEX` appended (its strength still to default), if any."""

    @classmethod
    def parse(cls, params: Any) -> SteerForm:
        form = cls(
            prompt=params.get("prompt", "").replace("\x00", "")[: MAX_PROMPT_CHARS * 2],
            positions="from_prompt_end" if params.get("positions") == "from_prompt_end" else "all",
            max_new_tokens=params.get("max_new_tokens", "32").strip()[:12] or "32",
            temperature=params.get("temperature", "0").strip()[:24] or "0",
            seed=params.get("seed", "").strip()[:24],
            run=params.get("run") == "1",
            search=params.get("fq", "").replace("\x00", "").strip()[:200],
        )
        features, kinds, values = params.getlist("f"), params.getlist("kind"), params.getlist("v")
        for i, feature in enumerate(features[: MAX_INTERVENTIONS * 2]):
            kind = kinds[i] if i < len(kinds) and kinds[i] in KINDS else "add"
            form.rows.append(Row(feature.strip()[:12], kind, values[i].strip()[:24] if i < len(values) else ""))
        remove = params.get("remove", "")
        if remove.isascii() and remove.isdigit() and int(remove) < len(form.rows):
            del form.rows[int(remove)]
        add = params.get("add", "").strip()
        if add:
            form.rows.append(Row(add[:12]))
            form.added = len(form.rows) - 1
        form.rows = [r for r in form.rows if r.feature]
        return form

    def steer_in(self) -> SteerIn:
        """The REST body of this run (InvalidInput naming the field when something cannot be read)."""
        interventions = []
        for i, row in enumerate(self.rows, start=1):
            if not (row.feature.isascii() and row.feature.isdigit()):
                raise InvalidInput(f"Intervention {i}: the feature must be a feature index, not {row.feature!r}.")
            try:
                value = float(row.value)
            except ValueError:
                raise InvalidInput(f"Intervention {i}: the strength must be a number, not {row.value!r}.") from None
            interventions.append({"feature": int(row.feature), "strength" if row.kind == "add" else "clamp": value})
        body: dict[str, Any] = {"prompt": self.prompt, "interventions": interventions, "positions": self.positions,
                                "max_new_tokens": _number(self.max_new_tokens, int, "max_new_tokens"),
                                "temperature": _number(self.temperature, float, "temperature")}  # fmt: skip
        if self.seed:
            body["seed"] = _number(self.seed, int, "seed")
        try:
            return SteerIn.model_validate(body)
        except ValidationError as e:
            raise InvalidInput(validation_message(e.errors())) from e

    def url(self, sae: str, **changes: Any) -> str:
        """This form's URL (with some fields changed): what the page links to reproduce a run."""
        params: list[tuple[str, str]] = [("prompt", self.prompt)]
        for row in self.rows:
            params += [("f", row.feature), ("kind", row.kind), ("v", row.value)]
        fields = {"positions": self.positions, "max_new_tokens": self.max_new_tokens,
                  "temperature": self.temperature, "seed": self.seed, **changes}  # fmt: skip
        params += [(k, str(v)) for k, v in fields.items() if v not in (None, "")]
        return f"/saes/{sae}/steer?{urlencode(params)}"


def _number(text: str, kind: type[int] | type[float], name: str) -> int | float:
    """A form field as a number (SteerIn takes numbers only), or InvalidInput naming the field."""
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidInput(f"{name}: must be {what}, not {text!r}.") from None


@dataclass
class PageData:
    """What the page shows besides the run: the SAE, the features of the rows and the search results."""

    sae: SAEInfo
    explanations: dict[int, str]
    results: list[FeatureSummary]


def _load(request: Request, name: str, form: SteerForm) -> PageData:
    """The SAE (NotFound), default strengths for rows without one, explanations, and the search (blocking)."""
    with page_session(request) as session:
        info = sae_info(session, name)
        indices = {int(r.feature) for r in form.rows if r.feature.isdigit() and len(r.feature) < 10}
        maxima = indexed_maxima(session, info, indices)
        for row in form.rows:
            if not row.value and row.feature.isdigit():
                top = maxima.get(int(row.feature), 0.0)
                row.value = format(STRENGTH_MULTIPLE * top, ".3g") if top > 0 else "1"
        results: list[FeatureSummary] = []
        if form.search:
            results = list_features(session, name, sort="max_activation", order="desc", q=form.search,
                                    limit=SEARCH_RESULTS).items  # fmt: skip
        explanations = latest_explanations(session, info.id, indices | {f.index for f in results})
    return PageData(sae=info, explanations=explanations, results=results)


async def _steer(request: Request, sae: str, body: SteerIn) -> tuple[SteerOut | None, int, str | None]:
    """(result, 200, None) or (None, status, message): the REST API's rules (token, rate limit, gate, bounds)."""
    from app.auth.encode_access import encode_client
    from app.steering.service import steer

    def access() -> str:  # the page sends no token: it may run when the API would let an anonymous caller
        state = request.app.state
        with state.sessions() as session, session.begin():
            host = request.client.host if request.client else None
            return encode_client(session, None, host, requires_token=state.settings.encode_requires_token,
                                 limiter=state.encode_rate)  # fmt: skip

    try:
        await run_in_threadpool(access)
        return await steer(request, sae, body), 200, None
    except NotFound as e:
        return None, 404, str(e)
    except (InvalidInput, RegistryError) as e:
        return None, 422, str(e)
    except AuthError as e:
        return None, e.status, e.detail
    except TooManyRequests as e:
        return None, 429, e.detail
    except EncoderUnavailable as e:
        return None, 503, f"No model is available to generate with: {e}"


@router.get("/saes/{sae}/steer", response_class=HTMLResponse)
async def steer_page(request: Request, sae: str) -> HTMLResponse:
    """The steering page of one SAE; with run=1, both continuations."""
    form = SteerForm.parse(request.query_params)
    try:
        data = await run_in_threadpool(_load, request, sae, form)
    except NotFound as e:
        return error_page(request, 404, "No such SAE", str(e))
    status, error, result, link, api_body = 200, None, None, None, None
    if form.run:
        try:
            if not form.prompt.strip():
                raise InvalidInput("The prompt is empty: type the text the model should continue.")
            body = form.steer_in()
        except InvalidInput as e:
            status, error = 422, str(e)
        else:
            result, status, error = await _steer(request, sae, body)
        if result is not None:
            seed = "" if result.seed is None else str(result.seed)
            link = form.url(sae, seed=seed, run=1)
            api_body = json.dumps({**body.model_dump(exclude_none=True), "seed": result.seed}, indent=1)
    context = {"sae": data.sae, "form": form, "data": data, "result": result, "error": error, "link": link,
               "api_body": api_body, "kinds": KINDS, "max_new": MAX_NEW_TOKENS, "max_rows": MAX_INTERVENTIONS,
               "max_chars": MAX_PROMPT_CHARS, "multiple": STRENGTH_MULTIPLE}  # fmt: skip
    return render(request, "steer.html", context, status=status)
