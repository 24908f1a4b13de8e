"""Explain a feature from its examples: the prompt, the answer's parser and one explain call.

The prompt is short and has one answer format (`Explanation: ...`) with two worked examples, so
that small models (SmolLM2-135M-Instruct, or Gemma 3 270M base reading the messages as a few-shot
transcript) can follow it. Each shown example is one line with its activating tokens marked
`<<like this>>`, then the marked tokens with their activation on the 0-10 scale relative to the
feature's max over the shown examples.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from app.interp.errors import ParseError
from app.interp.examples import MARK_FRACTION, Context, marked_positions, quantise, render
from app.interp.llm.base import ChatBackend, Message

__all__ = ["PROMPT_VERSION", "ExplainResult", "ParseError", "explain", "explanation_messages", "parse_explanation"]

PROMPT_VERSION = "explain-v1"
"""Recorded with every explanation; bump it whenever the prompt or the parser changes."""
MAX_WORDS = 30
"""An answer longer than this (after its first sentence is kept) is rambling, not an explanation."""
MAX_CHARS = 200
"""Likewise in characters."""

_SYSTEM = (
    "You explain what a feature of a language model detects. "
    "You see text examples where the feature fires; the tokens it fires on are marked <<like this>>, "
    "and each example is followed by the marked tokens with how strongly the feature fires (1 to 10). "
    "Say in a few words what the marked tokens have in common. "
    "Answer with one line: Explanation: <your explanation>"
)

# Two worked examples, made up for the prompt: one about the words themselves, one about grammar.
_FEW_SHOT: tuple[tuple[str, str], ...] = (
    (
        "Example 1: See you on<< Monday>> at noon.\n"
        "Marked: Monday (10)\n"
        "Example 2: The shop is closed every<< Sunday>> and holiday.\n"
        "Marked: Sunday (9)\n"
        "Example 3: It rained from<< Friday>> until<< Saturday>>.\n"
        "Marked: Friday (7), Saturday (6)",
        "Explanation: names of days of the week",
    ),
    (
        "Example 1: I do<< not>> think so.\n"
        "Marked: not (10)\n"
        "Example 2: She could<<n't>> find the key.\n"
        "Marked: n't (8)\n"
        "Example 3: This is<< not>> what we wanted.\n"
        "Marked: not (6)",
        'Explanation: negation words such as "not" and "n\'t"',
    ),
)

_MARKER = re.compile(r"explanation\s*[:\-]\s*", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can'?t|i can not|i am unable|i'm unable"
    r"|as an ai|i don'?t know|i do not know|i'?m not sure|i am not sure|cannot be determined|cannot determine"
    r"|no (clear |obvious |common )?(pattern|connection|relation)|nothing in common)\b",
    re.IGNORECASE,
)
_ECHO = re.compile(r"<<|>>|\bexample\s*\d+\s*:|^marked\s*:|<your explanation>|<a few words>", re.IGNORECASE)
# A sentence ends at ". " before a capital, unless the period closes an abbreviation.
_SENTENCE_END = re.compile(
    r"(?<=[a-z0-9\"')\]])(?<!e\.g)(?<!i\.e)(?<!etc)(?<!\bvs)(?<!\bMr)(?<!\bDr)(?<!\bSt)\.\s+(?=[A-Z])"
)


@dataclass(frozen=True)
class ExplainResult:
    """One explain attempt: the explanation, or why the answer held none."""

    text: str | None
    """The parsed explanation; None when the answer was unusable."""
    raw: str
    """The LLM's answer as written."""
    error: str | None
    """Why the answer was unusable (None on success)."""
    messages: tuple[Message, ...]
    """The prompt sent."""
    llm: str
    """The backend's name."""
    prompt_version: str
    """`PROMPT_VERSION` of this prompt."""
    example_ids: tuple[int | None, ...]
    """The shown examples' store ids, in prompt order."""


def _example_lines(number: int, context: Context, max_value: float, fraction: float) -> str:
    positions = marked_positions(context, fraction)
    levels = quantise((context.values[i] for i in positions), max_value)
    # A marked token fires, so it shows at least 1 even when floor() puts it at 0 on the feature's scale.
    marked = ", ".join(
        f"{context.tokens[i].strip() or repr(context.tokens[i])} ({max(1, q)})"
        for i, q in zip(positions, levels, strict=True)
    )
    return f"Example {number}: {render(context.tokens, positions)}\nMarked: {marked}"


def explanation_messages(
    contexts: Sequence[Context], *, max_value: float | None = None, fraction: float = MARK_FRACTION
) -> list[Message]:
    """The explain prompt: system, the worked examples, then the feature's activating `contexts`
    (top examples first, then band samples, as given) with their activating tokens marked.

    `max_value` is the feature's max activation for the 0-10 values (default: the max over
    `contexts`). Non-activating contexts are left out; raises ValueError when none is activating."""
    shown = [c for c in contexts if c.is_activating]
    if not shown:
        raise ValueError("explanation_messages: no activating context to explain from")
    top = max_value if max_value is not None and max_value > 0 else max(c.max_value for c in shown)
    messages = [Message("system", _SYSTEM)]
    for user, assistant in _FEW_SHOT:
        messages += [Message("user", user), Message("assistant", assistant)]
    body = "\n".join(_example_lines(i + 1, c, top, fraction) for i, c in enumerate(shown))
    messages.append(Message("user", body))
    return messages


def _is_text(line: str) -> bool:
    """Readable text: no replacement or control characters, and at least half letters, digits or spaces."""
    if any(ch == "\ufffd" or unicodedata.category(ch) == "Cc" for ch in line):
        return False
    return sum(ch.isalnum() or ch.isspace() for ch in line) >= 0.5 * len(line)


def parse_explanation(text: str) -> str:
    """The explanation in an answer: the line after `Explanation:` (else the first non-empty line),
    cut at its first sentence, without quotes or markdown.

    Raises ParseError when there is none: an empty answer, a refusal or "I don't know", an answer
    that echoes the examples or the template, no words, garbage (undecodable bytes, control characters,
    mostly symbols), or over MAX_WORDS words / MAX_CHARS characters."""
    marker = _MARKER.search(text)
    rest = text[marker.end() :] if marker else text
    line = next((ln.strip() for ln in rest.splitlines() if ln.strip()), "")
    line = _SENTENCE_END.split(line, maxsplit=1)[0]
    line = line.replace("**", "").replace("__", "").strip().rstrip(".").strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip().rstrip(".").strip()  # the whole answer quoted
    if not line:
        raise ParseError("empty answer", text)
    if _ECHO.search(line):
        raise ParseError("the answer echoes the examples or the template", text)
    if _REFUSAL.search(line):
        raise ParseError("the answer is a refusal", text)
    if not re.search(r"[^\W\d_]", line):
        raise ParseError("the answer has no words", text)
    if not _is_text(line):
        raise ParseError("the answer is not text (undecodable or control characters, or mostly symbols)", text)
    if len(line.split()) > MAX_WORDS or len(line) > MAX_CHARS:
        raise ParseError(f"the answer is over {MAX_WORDS} words or {MAX_CHARS} characters", text)
    return line


async def explain(
    backend: ChatBackend,
    contexts: Sequence[Context],
    *,
    max_value: float | None = None,
    max_tokens: int = 48,
) -> ExplainResult:
    """Ask `backend` to explain the feature shown by `contexts`; an unusable answer is a result with
    `error` set, never an exception. LLMError (no answer at all) propagates to the caller."""
    messages = explanation_messages(contexts, max_value=max_value)
    shown_ids = tuple(c.example_id for c in contexts if c.is_activating)
    reply = await backend.chat(messages, max_tokens=max_tokens, temperature=0.0)
    try:
        text: str | None = parse_explanation(reply.text)
        error = None
    except ParseError as exc:
        text, error = None, exc.reason
    return ExplainResult(
        text=text,
        raw=reply.text,
        error=error,
        messages=tuple(messages),
        llm=backend.name,
        prompt_version=PROMPT_VERSION,
        example_ids=shown_ids,
    )
