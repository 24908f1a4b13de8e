"""Simulation score (Bills et al. 2023, jumprelu.md §5): from the explanation alone the LLM predicts
the feature's activation, 0-10, on every token of held-out contexts; the score is the Pearson
correlation of the predictions with the true activations.

Two methods, recorded as the result's `method` (and its prompt version):

- "all-at-once" (Bills et al.'s, app.interp.scoring.simulation_all_at_once), when the backend is a
  PrefillScorer (LocalChat): the answer is teacher-forced and each token's prediction is the expected
  value of the model's next-token distribution over the answers, all read in one forward pass per
  context. Nothing is generated or parsed, so even a 135M model gives a prediction for every token.
- "generation", for any other backend (chat endpoints), described below.

Generation:
- One call per context. The prompt lists the context's tokens one per line; the answer is a line
  per token, `token<TAB>number` (a plain list of numbers in token order is accepted too).
- Where the backend returns log-probabilities, each prediction is the expected value over the digit
  answers "0".."10" at the generated number (the "all at once" simulator's expected value, read
  from the generated tokens' top alternatives instead of prompt logprobs, which chat endpoints do
  not give); else the parsed number. On tokenizers that split "10" into "1" "0", the alternative
  "1" counts as 1, except the chosen one when the model went on to write "0" (then 10).
- Score: Pearson's r over all tokens of all parsed contexts pooled (Bills et al.'s "all at once"
  score: a context where the feature never fires still counts, since predicting 0 there is part of
  the skill). The mean of per-context correlations is returned too; it skips contexts whose truth
  or prediction is constant (undefined r), so it mostly measures top and band contexts.
- A context whose answer cannot be aligned with its tokens (missing, misaligned, off-scale) is a
  recorded failure with its raw text and is left out of the score; nothing raises but LLMError.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from app.interp.errors import ParseError
from app.interp.examples import SCALE_MAX, Context, display_token
from app.interp.llm.base import ChatBackend, ChatReply, Message, PrefillScorer
from app.interp.scoring.calls import chat_all
from app.interp.scoring.result import Failure, ScoreResult
from app.interp.scoring.simulation_all_at_once import ALL_AT_ONCE_PROMPT_VERSION, read_all_at_once
from app.interp.scoring.stats import expected_value, mean_defined, pearson

PROMPT_VERSION = "simulate-v1"
"""Recorded with every simulation score of the generation method; bump it whenever its prompt or parser changes."""

PROMPT_VERSIONS: dict[str, str] = {"generation": PROMPT_VERSION, "all-at-once": ALL_AT_ONCE_PROMPT_VERSION}
"""Method -> the prompt version its scores record (each bumped on its own when its prompt changes)."""

SimulationMethod = Literal["all-at-once", "generation"]

T = TypeVar("T")

_SYSTEM = (
    "We study a feature of a language model that fires on some tokens of a text. "
    "Given an explanation of the feature, predict how strongly it fires on each token of a new text, "
    "from 0 (not at all) to 10 (as strongly as it ever does). Most tokens are 0. "
    "Write one line per token, in order: the token, a tab, the number. Write nothing else."
)
_FEW_SHOT_EXPLANATION = "names of days of the week"
_FEW_SHOT: tuple[tuple[str, int], ...] = (
    ("See", 0),
    (" you", 0),
    (" on", 0),
    (" Monday", 10),
    (" or", 0),
    (" Tuesday", 9),
    (".", 0),
)

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_TAB_LINE = re.compile(rf"^(?P<tok>.*)\t[ \t]*(?P<num>{_NUMBER})[ \t]*$")
_SPACE_LINE = re.compile(rf"^(?P<tok>.*?\S)[ ]*(?:[:=|,]|->|=>)?[ ]+(?P<num>{_NUMBER})[ ]*$")
_NUMBERS_ONLY = re.compile(r"^[\s\[\](),;0-9.+\-]*$")
_DIGITS = {str(v): v for v in range(SCALE_MAX + 1)}


@dataclass(frozen=True)
class ParsedSimulation:
    """The numbers of an answer aligned with the context's tokens."""

    values: tuple[float, ...]
    """One 0-10 prediction per context token."""
    offsets: tuple[int, ...]
    """Character offset in the answer of each prediction's first digit (to find its logprobs)."""


@dataclass(frozen=True, kw_only=True)
class SimulationResult(ScoreResult):
    """The simulation score and its per-token predictions."""

    predictions: tuple[tuple[float, ...] | None, ...]
    """Per scored context (in `example_ids` order) the 0-10 prediction per token; None if it failed."""
    per_context: tuple[float | None, ...]
    """Per scored context Pearson's r (None where undefined or failed)."""
    per_context_mean: float | None
    """The mean of the defined per-context correlations."""
    from_logprobs: int
    """How many predictions are expected values from logprobs (the rest are parsed numbers)."""
    method: SimulationMethod
    """'all-at-once' (read from one teacher-forced pass) or 'generation' (the LLM wrote the numbers)."""


def simulation_messages(explanation: str, context: Context) -> list[Message]:
    """The simulation prompt for one context: system, one worked example, the explanation and the
    context's tokens one per line (as `display_token` shows them)."""
    example_tokens = "\n".join(tok for tok, _ in _FEW_SHOT)
    example_answer = "\n".join(f"{tok}\t{v}" for tok, v in _FEW_SHOT)
    tokens = "\n".join(display_token(t) for t in context.tokens)
    return [
        Message("system", _SYSTEM),
        Message("user", f"Explanation: {_FEW_SHOT_EXPLANATION}\nTokens:\n{example_tokens}"),
        Message("assistant", example_answer),
        Message("user", f"Explanation: {' '.join(explanation.split())}\nTokens:\n{tokens}"),
    ]


def _key(text: str) -> str:
    return text.strip().strip("\"'`").strip().lower()


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line without its line break) for each line of `text`."""
    out: list[tuple[int, str]] = []
    pos = 0
    for raw in text.splitlines(keepends=True):
        out.append((pos, raw.rstrip("\r\n")))
        pos += len(raw)
    return out


def _checked(value: float, what: str, text: str) -> float:
    if not 0 <= value <= SCALE_MAX:
        raise ParseError(f"{what}: {value:g} is outside 0-{SCALE_MAX}", text)
    return value


def _align(text: str, tokens: Sequence[str], pattern: re.Pattern[str]) -> ParsedSimulation:
    """Match answer lines to tokens in order; a line that is not the next token is skipped as extra."""
    keys = [_key(display_token(t)) for t in tokens]
    values: list[float] = []
    offsets: list[int] = []
    for start, line in _lines(text):
        if len(values) == len(keys):
            break  # anything after the last token (a small model rambling on) is ignored
        m = pattern.match(line)
        if m is None or _key(m.group("tok")) != keys[len(values)]:
            continue
        values.append(_checked(float(m.group("num")), f"token {tokens[len(values)]!r}", text))
        offsets.append(start + m.start("num"))
    if len(values) < len(keys):
        missing = display_token(tokens[len(values)])
        raise ParseError(f"answered {len(values)} of {len(keys)} tokens; no line for token {missing!r} in order", text)
    return ParsedSimulation(tuple(values), tuple(offsets))


def parse_simulation(text: str, tokens: Sequence[str]) -> ParsedSimulation:
    """The 0-10 predictions in an answer, one per token of `tokens`.

    Accepts `token<TAB>number` lines (extra lines are skipped, tokens compared without surrounding
    whitespace, quotes or case), an answer that opens with numbers only in token order (`0, 0, 7`,
    `[0 0 7]`, one per line; up to the first blank line), or `token: number` / `token number` lines.
    Raises ParseError when a token has no answer, the count of numbers differs from the count of
    tokens, or a number is off the 0-10 scale."""
    if not tokens:
        raise ParseError("no tokens to predict", text)
    if any(_TAB_LINE.match(line) for _, line in _lines(text)):
        return _align(text, tokens, _TAB_LINE)
    # Numbers only, up to the first blank line (a base model goes on to write the next example).
    block = re.split(r"\n[ \t]*\n", text.lstrip(), maxsplit=1)[0]
    if _NUMBERS_ONLY.match(block) and re.search(r"\d", block):
        start = len(text) - len(text.lstrip())
        found = list(re.finditer(_NUMBER, block))
        if len(found) != len(tokens):
            raise ParseError(f"misaligned: {len(found)} numbers for {len(tokens)} tokens", text)
        values = tuple(_checked(float(m.group()), f"number {i + 1}", text) for i, m in enumerate(found))
        return ParsedSimulation(values, tuple(start + m.start() for m in found))
    if any(_SPACE_LINE.match(line) for _, line in _lines(text)):
        return _align(text, tokens, _SPACE_LINE)
    raise ParseError("no predictions found (expected lines of token<TAB>number)", text)


def digit_probabilities(top: Mapping[str, float], *, chosen: str, ten: bool = False) -> dict[int, float]:
    """Probability per answer value 0-10 from a generated token's top alternatives (text -> logprob).

    Alternatives are compared without surrounding whitespace; those that are not "0".."10" are
    dropped. `ten`: the chosen token is a "1" that the model continued with "0", so its mass counts
    for 10 (other "1" alternatives stay 1)."""
    probs: dict[int, float] = {}
    for text, logprob in top.items():
        value = _DIGITS.get(text.strip())
        if value is None:
            continue
        if ten and text == chosen:
            value = SCALE_MAX
        probs[value] = probs.get(value, 0.0) + math.exp(logprob)
    return probs


def expected_predictions(
    reply: ChatReply, parsed: ParsedSimulation, tokens: Sequence[str]
) -> tuple[tuple[float, ...], int]:
    """The predictions with each parsed number replaced by its expected value where the reply's
    logprobs cover it; returns (predictions, how many came from logprobs).

    Each number is found in the generated tokens by its character offset; when the tokens' texts
    do not join into the reply's text, the joined text is parsed again and used if it gives the
    same numbers. A number whose token is not a bare digit answer keeps its parsed value."""
    values = list(parsed.values)
    if not reply.tokens:
        return tuple(values), 0
    joined = "".join(t.token for t in reply.tokens)
    offsets: tuple[int, ...] | None = parsed.offsets if joined == reply.text else None
    if offsets is None:
        try:
            again = parse_simulation(joined, tokens)
        except ParseError:
            return tuple(values), 0
        if again.values != parsed.values:
            return tuple(values), 0
        offsets = again.offsets
    starts: list[int] = []
    pos = 0
    for t in reply.tokens:
        starts.append(pos)
        pos += len(t.token)
    used = 0
    for k, offset in enumerate(offsets):
        i = bisect.bisect_right(starts, offset) - 1
        tok = reply.tokens[i]
        chosen = tok.token.strip()
        if chosen not in _DIGITS:
            continue
        ten = chosen == "1" and values[k] == SCALE_MAX
        ev = expected_value(digit_probabilities(tok.top or {tok.token: tok.logprob}, chosen=tok.token, ten=ten))
        if ev is not None:
            values[k] = ev
            used += 1
    return tuple(values), used


async def score_simulation(
    backend: ChatBackend,
    explanation: str,
    contexts: Sequence[Context],
    *,
    rng_seed: int = 0,
    logprobs: int = 15,
    max_tokens_per_token: int = 8,
) -> SimulationResult:
    """Simulate the feature on each context from `explanation` and score the predictions.

    `contexts`: held-out top, band and non-activating windows (empty ones are skipped). A backend that
    is a PrefillScorer is read all at once (`logprobs` and `max_tokens_per_token` then do not apply);
    any other generates. `logprobs`: top alternatives asked per generated token (0: parsed numbers
    only). `rng_seed` is accepted for the scorers' common signature; simulation draws nothing at
    random. LLMError propagates."""
    del rng_seed
    scored = [c for c in contexts if c.tokens]
    predictions: list[tuple[float, ...] | None] = []
    failures: list[Failure] = []
    method: SimulationMethod
    if isinstance(backend, PrefillScorer):
        method = "all-at-once"
        readings = await _gather(*(read_all_at_once(backend, explanation, c) for c in scored))
        predictions = [r.values for r in readings]
        raw = [r.text for r in readings]
        from_logprobs = sum(len(r.values) for r in readings)
    else:
        method = "generation"
        prompts = [simulation_messages(explanation, c) for c in scored]
        limits = [max_tokens_per_token * len(c.tokens) + 16 for c in scored]
        replies = await chat_all(backend, prompts, max_tokens=limits, logprobs=logprobs)
        raw = [r.text for r in replies]
        from_logprobs = 0
        for i, (context, reply) in enumerate(zip(scored, replies, strict=True)):
            try:
                parsed = parse_simulation(reply.text, context.tokens)
            except ParseError as exc:
                failures.append(Failure(call=i, reason=exc.reason, raw=reply.text))
                predictions.append(None)
                continue
            values, used = expected_predictions(reply, parsed, context.tokens)
            predictions.append(values)
            from_logprobs += used
    pooled_pred: list[float] = []
    pooled_true: list[float] = []
    per_context: list[float | None] = []
    for context, pred in zip(scored, predictions, strict=True):
        if pred is None:
            per_context.append(None)
            continue
        pooled_pred.extend(pred)
        pooled_true.extend(context.values)
        per_context.append(pearson(pred, context.values))
    return SimulationResult(
        kind="simulation",
        score=pearson(pooled_pred, pooled_true),
        n=len(pooled_pred),
        failures=tuple(failures),
        raw=tuple(raw),
        llm=backend.name,
        prompt_version=PROMPT_VERSIONS[method],
        example_ids=tuple(c.example_id for c in scored),
        predictions=tuple(predictions),
        per_context=tuple(per_context),
        per_context_mean=mean_defined(per_context),
        from_logprobs=from_logprobs,
        method=method,
    )


async def _gather(*calls: Coroutine[Any, Any, T]) -> list[T]:
    """The results of `calls` run concurrently, in order; when one raises, the others are cancelled."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
