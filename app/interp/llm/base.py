"""The one interface every chat backend implements, and the types it speaks.

A backend answers a list of chat messages with text and, when asked and able, the
log-probabilities of each generated token with its most likely alternatives (the simulation
score reads an expected 0-10 activation from them). Backends are async: the OpenAI-compatible
one runs many requests at once, the in-process one runs its model in a worker thread. A backend
may also be a PrefillScorer (the in-process one is): it reads next-token distributions inside a
teacher-forced answer, which the simulation score's "all at once" method uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability and its most likely alternatives."""

    token: str
    """The token's text as the backend decodes it."""
    logprob: float
    """Natural-log probability of this token."""
    top: dict[str, float] = field(default_factory=dict)
    """Alternative token text -> logprob (the chosen token included), at most the requested number,
    plus the chosen token when sampling picked one outside them. Distinct tokens that decode to the
    same text keep the likelier one's logprob."""


@dataclass(frozen=True)
class ChatReply:
    """A backend's answer."""

    text: str
    """The generated text (the assistant message's content)."""
    model: str
    """The model that answered, as the backend names it."""
    tokens: tuple[TokenLogprob, ...] | None = None
    """Per generated token, when logprobs were asked for and the backend returns them; else None."""
    finish_reason: str | None = None
    """Why generation stopped, as the OpenAI API says it: 'stop' (end of turn) or 'length' (max_tokens
    reached: the text may be cut off); None when the backend does not say."""
    prompt_tokens: int | None = None
    """Tokens of the templated prompt, when the backend reports them."""
    completion_tokens: int | None = None
    """Tokens generated, when the backend reports them."""


class LLMError(RuntimeError):
    """The backend could not answer (unreachable, timed out, refused, malformed reply).

    The message says what failed and how to fix it; callers keep what they already have."""


@runtime_checkable
class ChatBackend(Protocol):
    """A chat LLM: OpenAI-compatible endpoint or in-process Hugging Face model."""

    name: str
    """What to record as the explaining / scoring LLM, e.g. 'hf:HuggingFaceTB/SmolLM2-135M-Instruct'
    or 'openai:http://localhost:11434/v1#llama3.1:8b'."""

    concurrency: int
    """Requests it answers at once (an endpoint's in-flight limit; 1 for an in-process model, which
    runs one call at a time): how many features the explain pipeline works on together."""

    async def chat(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0, logprobs: int = 0
    ) -> ChatReply:
        """Answer `messages`. `temperature` 0 is greedy. `logprobs` > 0 asks for that many top
        alternatives per generated token (ChatReply.tokens; None when the backend cannot).
        Raises LLMError when no answer can be had (after the backend's own retries)."""
        ...

    async def aclose(self) -> None:
        """Release connections / model memory."""
        ...


@runtime_checkable
class PrefillScorer(Protocol):
    """An optional capability beside ChatBackend: read the model's next-token distribution inside a
    teacher-forced assistant answer, many positions in one pass, without generating anything.

    The simulation score's "all at once" method (Bills et al. 2023) needs it: the answer lists the
    context's tokens, each followed by a tab, and the prediction for a token is read at the position
    after its tab. Backends that cannot do this (most chat endpoints) simply do not implement it."""

    name: str
    """As ChatBackend.name."""

    async def next_token_distributions(
        self, messages: Sequence[Message], assistant_prefix: str, positions: Sequence[int], candidates: Sequence[str]
    ) -> list[dict[str, float]]:
        """For the chat-templated `messages` followed by the assistant's partial answer
        `assistant_prefix`, per character offset in `positions` (0 to len(assistant_prefix)), the
        probability of each candidate string's first token as the next token, renormalised over the
        candidates (the values of each dict sum to 1).

        A candidate whose first token is also an earlier candidate's cannot be told apart from it
        and is left out of the dicts. Raises ValueError for bad arguments (an offset outside the
        prefix, no candidates), LLMError when no answer can be had (a prompt over the context too)."""
        ...
