"""The explain prompt, its parser on what small models really write, and one explain call
(app.interp.explainer)."""

from __future__ import annotations

import asyncio

import pytest

from app.interp.examples import Context, hold_out, render
from app.interp.explainer import (
    MAX_WORDS,
    PROMPT_VERSION,
    ParseError,
    explain,
    explanation_messages,
    parse_explanation,
)
from app.interp.llm.base import LLMError
from tests.app.interp.recorded import RECORDED, RecordedAnswers

TOP = [
    Context(("I", " will", " call", " you", " on", " Tuesday", " morning", "."), (0, 0, 0, 0, 0, 5.0, 0, 0), 11),
    Context(("The", " market", " opens", " on", " Saturday", " and", " Sunday", "."), (0, 0, 0, 0, 4.0, 0, 3.5, 0), 12),
]
BAND = [Context(("We", " left", " on", " Thursday", "\n", "night"), (0, 0, 0.4, 1.5, 0, 0), 13)]
SILENT = Context(("No", " days", " here"), (0.0, 0.0, 0.0), 14)


def test_prompt_has_system_two_worked_examples_and_the_marked_contexts() -> None:
    messages = explanation_messages([*TOP, *BAND])
    assert [m.role for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Explanation:" in messages[0].content
    assert all(m.content.startswith("Explanation: ") for m in messages if m.role == "assistant")
    final = messages[-1].content.splitlines()
    assert final == [
        "Example 1: I will call you on<< Tuesday>> morning.",
        "Marked: Tuesday (10)",  # the feature max over the shown examples is 5.0
        "Example 2: The market opens on<< Saturday>> and<< Sunday>>.",
        "Marked: Saturday (8), Sunday (7)",
        # The band example: 0.4 < 0.3 * 1.5 stays unmarked; the newline is escaped onto the line.
        "Example 3: We left on<< Thursday>>\\nnight",
        "Marked: Thursday (3)",
    ]


def test_values_are_relative_to_the_given_feature_max_and_a_marked_token_shows_at_least_1() -> None:
    final = explanation_messages(TOP, max_value=50.0)[-1].content
    # 5.0 / 50 -> 1; 4.0 and 3.5 / 50 -> floor 0, shown as 1 since they are marked (they fire).
    assert "Marked: Tuesday (1)" in final and "Marked: Saturday (1), Sunday (1)" in final


def test_non_activating_contexts_are_left_out_and_none_activating_is_an_error() -> None:
    final = explanation_messages([SILENT, *TOP])[-1].content
    assert "No days here" not in final and final.startswith("Example 1: I will call")
    with pytest.raises(ValueError, match="no activating context"):
        explanation_messages([SILENT])


def test_held_out_contexts_never_reach_the_explain_prompt() -> None:
    contexts = [Context(("word", f" n{i}", " end"), (0.0, float(i + 1), 0.0), example_id=100 + i) for i in range(9)]
    shown, held = hold_out(contexts, rng_seed=0)
    prompt = "\n".join(m.content for m in explanation_messages(shown))
    for c in held:
        assert render(c.tokens) not in prompt.replace("<<", "").replace(">>", "")
        assert f" n{c.example_id - 100} " not in prompt and f"n{c.example_id - 100} (" not in prompt
    for c in shown:
        assert f"<< n{c.example_id - 100}>>" in prompt


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("smol_explain_days", 'no verb tense is used in the past tense of the verb "call"'),
        ("smol_explain_water", "water from the river and the stream is cold"),
        ("smol_explain_random", "the book of HAMLET is read by the audience"),
        ("gemma_explain_days", "the 1st 3 days of the week"),  # a base model goes on with the next example
        ("gemma_explain_water", 'the word "water" is not in the sentence'),
    ],
)
def test_parse_recorded_small_model_answers(key: str, expected: str) -> None:
    assert parse_explanation(RECORDED[key]) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Explanation: names of days of the week", "names of days of the week"),
        ("explanation - **the word 'if'**.", "the word 'if'"),
        ('  \nExplanation: "the word if".', "the word if"),  # the whole answer quoted
        ('Explanation: the verb "call"', 'the verb "call"'),
        ("Days of the week.", "Days of the week"),  # no marker: the first line
        ("Explanation: days of the week. They appear in dates. More text", "days of the week"),
        ("Explanation: weekdays, e.g. Monday and Tuesday", "weekdays, e.g. Monday and Tuesday"),
        ("Explanation: years like 1990-2000 or 1,000,000", "years like 1990-2000 or 1,000,000"),
    ],
)
def test_parse_good_answers(text: str, expected: str) -> None:
    assert parse_explanation(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Explanation:   \n\n", "empty"),
        (RECORDED["gemma_explain_bos"], "echoes"),
        ("Explanation: Example 1: I will call you on<< Tuesday>>", "echoes"),
        ("Explanation: <your explanation>", "echoes"),
        ("Explanation: I'm sorry, but I cannot determine a pattern.", "refusal"),
        ("I don't know.", "refusal"),
        ("Explanation: there is no clear pattern", "refusal"),
        ("Explanation: 10, 9, 7", "no words"),
        # What a tiny random chat model writes: undecodable bytes and control characters.
        ("h\ufffd\ufffd\x16di\ufffd\x16di\ufffdowO\ufffd\x16eat\x14in", "not text"),
        ("Explanation: ab{}$%^&*()[]!!", "not text"),
        ("Explanation: " + " ".join(["word"] * (MAX_WORDS + 1)), "over"),
    ],
)
def test_parse_bad_answers_raise_with_the_raw_text(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason) as info:
        parse_explanation(text)
    assert info.value.raw == text


def test_explain_returns_the_explanation_or_a_failed_attempt() -> None:
    good_prompt = explanation_messages(TOP)[-1].content
    bad_prompt = explanation_messages(BAND)[-1].content
    backend = RecordedAnswers({good_prompt: RECORDED["gemma_explain_days"], bad_prompt: RECORDED["gemma_explain_bos"]})
    ok = asyncio.run(explain(backend, [SILENT, *TOP]))
    assert ok.text == "the 1st 3 days of the week" and ok.error is None
    assert ok.raw == RECORDED["gemma_explain_days"]
    assert ok.example_ids == (11, 12) and ok.llm == "recorded" and ok.prompt_version == PROMPT_VERSION
    assert ok.messages[-1].content == good_prompt
    failed = asyncio.run(explain(backend, BAND))
    assert failed.text is None and failed.error is not None and "echoes" in failed.error
    assert failed.raw == RECORDED["gemma_explain_bos"]
    assert backend.calls[0]["temperature"] == 0.0


def test_explain_lets_a_backend_error_through() -> None:
    prompt = explanation_messages(TOP)[-1].content
    with pytest.raises(LLMError, match="down"):
        asyncio.run(explain(RecordedAnswers({}, down=[prompt]), TOP))
