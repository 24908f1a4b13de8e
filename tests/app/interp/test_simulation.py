"""The simulation score: its prompt, the parser on good and bad answers, expected values from
logprobs, and the pooled Pearson score (app.interp.scoring.simulation)."""

from __future__ import annotations

import asyncio
import math

import pytest

from app.interp.errors import ParseError
from app.interp.examples import Context
from app.interp.llm.base import ChatReply, LLMError
from app.interp.scoring.simulation import (
    PROMPT_VERSION,
    digit_probabilities,
    expected_predictions,
    parse_simulation,
    score_simulation,
    simulation_messages,
)
from tests.app.interp.recorded import RECORDED, RecordedAnswers, reply_with_logprobs

FRIDAY = ("She", " arrived", " on", " Friday", " evening", ".")
"""The tokens the recorded small-model answers were given."""


def ln(p: float) -> float:
    return math.log(p)


def test_prompt_lists_the_tokens_one_per_line_after_a_worked_example() -> None:
    c = Context(("Hello", "\n", " world", " "), (0.0, 0.0, 1.0, 0.0))
    messages = simulation_messages("the word\n world", c)
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert "tab" in messages[0].content and "0" in messages[0].content and "10" in messages[0].content
    assert messages[2].content.splitlines()[3] == " Monday\t10"
    assert messages[-1].content == "Explanation: the word world\nTokens:\nHello\n\\n\n world\n[space]"


def test_parse_tab_lines() -> None:
    text = "She\t0\n arrived\t0\n on\t1\n Friday\t10\n evening\t2\n.\t0"
    parsed = parse_simulation(text, FRIDAY)
    assert parsed.values == (0, 0, 1, 10, 2, 0)
    assert [text[o : o + 2] for o in parsed.offsets] == ["0\n", "0\n", "1\n", "10", "2\n", "0"]


def test_parse_skips_a_preamble_and_what_follows_the_last_token() -> None:
    text = (
        'Here are the activations:\nShe\t0\narrived\t0\n  on  \t 0\n"Friday"\t9\nEVENING\t0\n.\t0\n\n'
        "Explanation: names of months\nTokens:\nJune\t10"
    )
    assert parse_simulation(text, FRIDAY).values == (0, 0, 0, 9, 0, 0)


def test_parse_escaped_and_blank_tokens_as_the_prompt_shows_them() -> None:
    tokens = ("Hello", "\n", " ", " world")
    assert parse_simulation("Hello\t0\n\\n\t3\n[space]\t0\n world\t7", tokens).values == (0, 3, 0, 7)


@pytest.mark.parametrize(
    "text", ["0, 0, 0, 10, 0, 0", "[0 0 0 10 0 0]", "0\n0\n0\n10\n0\n0\n", "0 0 0 10 0 0\n\nExplanation: more"]
)
def test_parse_a_list_of_numbers_in_token_order(text: str) -> None:
    parsed = parse_simulation(text, FRIDAY)
    assert parsed.values == (0, 0, 0, 10, 0, 0)
    assert text[parsed.offsets[3] : parsed.offsets[3] + 2] == "10"


def test_parse_token_colon_number_lines() -> None:
    assert parse_simulation("She: 0\narrived: 0\non: 0\nFriday: 8\nevening: 0\n. 0", FRIDAY).values == (
        0,
        0,
        0,
        8,
        0,
        0,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (RECORDED["smol_simulate"], "answered 1 of 6 tokens; no line for token ' arrived'"),
        (RECORDED["gemma_simulate"], "no predictions found"),  # the tokens, no numbers
        (RECORDED["smol_simulate_list"], "misaligned: 25 numbers for 6 tokens"),
        (RECORDED["gemma_simulate_list"], "misaligned: 7 numbers for 6 tokens"),
        ("She\t0\n arrived\t0\n on\t0\n Friday\t15\n evening\t0\n.\t0", "15 is outside 0-10"),
        ("She\t0\n on\t0\n Friday\t10\n evening\t0\n.\t0", "answered 1 of 6"),  # a skipped token
        ("I think the feature fires on Friday.", "no predictions found"),
        ("", "no predictions found"),
    ],
)
def test_parse_bad_answers(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_simulation(text, FRIDAY)
    assert reason in info.value.reason
    assert info.value.raw == text


def test_digit_probabilities_from_a_logprob_table() -> None:
    top = {"0": ln(0.5), " 5": ln(0.2), "5": ln(0.05), "10": ln(0.125), "a": ln(0.1)}
    probs = digit_probabilities(top, chosen="0")
    assert probs == pytest.approx({0: 0.5, 5: 0.25, 10: 0.125})
    # A "1" the model continued with "0" is a 10; the other "1"-like alternatives stay 1.
    assert digit_probabilities({"1": ln(0.6), "0": ln(0.3), " 1": ln(0.1)}, chosen="1", ten=True) == pytest.approx(
        {10: 0.6, 0: 0.3, 1: 0.1}
    )


def test_expected_predictions_read_the_logprobs_at_each_number() -> None:
    tokens = ("On", " Monday")
    reply = reply_with_logprobs(
        [
            ("On", {"On": 0.0}),
            ("\t", {"\t": 0.0}),
            ("0", {"0": ln(0.8), "2": ln(0.2)}),  # EV 0.4
            ("\n", {"\n": 0.0}),
            (" Monday", {" Monday": 0.0}),
            ("\t", {"\t": 0.0}),
            ("1", {"1": ln(0.5), "8": ln(0.25), "x": ln(0.25)}),  # "1" then "0": EV (10 * .5 + 8 * .25) / .75
            ("0", {"0": 0.0}),
        ]
    )
    parsed = parse_simulation(reply.text, tokens)
    assert parsed.values == (0, 10)
    values, used = expected_predictions(reply, parsed, tokens)
    assert used == 2
    assert values == pytest.approx((0.4, 7.0 / 0.75))


def test_expected_predictions_fall_back_to_parsed_numbers() -> None:
    tokens = ("On", " Monday")
    plain = ChatReply(text="On\t0\n Monday\t9", model="m")
    assert expected_predictions(plain, parse_simulation(plain.text, tokens), tokens) == ((0, 9), 0)
    # Token texts that do not join into the reply text are parsed again: same numbers, so they are used.
    shifted = reply_with_logprobs([("On\t", {}), ("3", {"3": ln(0.5), "5": ln(0.5)}), ("\n Monday\t9", {})])
    reply = ChatReply(text=" " + shifted.text, model="m", tokens=shifted.tokens)
    values, used = expected_predictions(reply, parse_simulation(reply.text, tokens), tokens)
    assert values == (4.0, 9) and used == 1  # "\n Monday\t9" is not a bare digit: parsed value kept


CONTEXTS = [
    Context(("On", " Monday", " we", " rest"), (0.0, 4.0, 0.0, 1.0), example_id=1),
    Context(("The", " cat", " sat"), (0.0, 0.0, 0.0), example_id=2),
    Context(("Sunday", " again"), (2.0, 0.0), example_id=3),
]


def test_score_pools_all_tokens_and_keeps_failures_with_their_raw_text() -> None:
    explanation = "days of the week"
    answers = {
        simulation_messages(explanation, CONTEXTS[0])[-1].content: "On\t0\n Monday\t10\n we\t0\n rest\t0",
        simulation_messages(explanation, CONTEXTS[1])[-1].content: "The\t0\n cat\t1\n sat\t0",
        simulation_messages(explanation, CONTEXTS[2])[-1].content: "Sunday\tten\n again\t0",
    }
    backend = RecordedAnswers(answers)
    result = asyncio.run(score_simulation(backend, explanation, CONTEXTS, logprobs=5))
    # Pooled over the two parsed contexts: predicted 0 10 0 0 0 1 0, true 0 4 0 1 0 0 0.
    # sum pt = 40, sum p = 11, sum t = 5, sum p^2 = 101, sum t^2 = 17, n = 7:
    # sxy = 40 - 55/7 = 225/7, sxx = 101 - 121/7 = 586/7, syy = 17 - 25/7 = 94/7.
    assert result.score == pytest.approx(225 / math.sqrt(586 * 94))
    assert result.n == 7
    assert result.kind == "simulation" and result.prompt_version == PROMPT_VERSION and result.llm == "recorded"
    assert result.example_ids == (1, 2, 3)
    assert result.predictions == ((0, 10, 0, 0), (0, 1, 0), None)
    assert [(f.call, f.raw) for f in result.failures] == [(2, "Sunday\tten\n again\t0")]
    assert "answered 0 of 2" in result.failures[0].reason
    assert result.raw == tuple(answers.values())
    # Per context: r([0 10 0 0], [0 4 0 1]) = 27.5 / sqrt(75 * 10.75); the never-firing context has none.
    assert result.per_context[0] == pytest.approx(27.5 / math.sqrt(75 * 10.75))
    assert result.per_context[1:] == (None, None)
    assert result.per_context_mean == result.per_context[0]
    assert result.from_logprobs == 0
    assert {c["logprobs"] for c in backend.calls} == {5} and {c["temperature"] for c in backend.calls} == {0.0}
    assert [c["max_tokens"] for c in backend.calls] == [8 * 4 + 16, 8 * 3 + 16, 8 * 2 + 16]


def test_score_is_none_when_every_answer_fails_or_the_prediction_is_constant() -> None:
    explanation = "days of the week"
    garbage = {simulation_messages(explanation, c)[-1].content: RECORDED["smol_simulate"] for c in CONTEXTS}
    failed = asyncio.run(score_simulation(RecordedAnswers(garbage), explanation, CONTEXTS))
    assert failed.score is None and failed.n == 0 and len(failed.failures) == 3
    assert all(f.raw == RECORDED["smol_simulate"] for f in failed.failures)
    zeros = {simulation_messages(explanation, c)[-1].content: "\n".join(f"{t}\t0" for t in c.tokens) for c in CONTEXTS}
    flat = asyncio.run(score_simulation(RecordedAnswers(zeros), explanation, CONTEXTS))
    assert flat.score is None and flat.n == 9 and not flat.failures


def test_a_backend_error_propagates_and_cancels_the_other_calls() -> None:
    explanation = "days of the week"
    keys = [simulation_messages(explanation, c)[-1].content for c in CONTEXTS]
    backend = RecordedAnswers({k: "x" for k in keys[1:]}, down=[keys[0]])
    with pytest.raises(LLMError, match="down"):
        asyncio.run(score_simulation(backend, explanation, CONTEXTS))
    assert backend.cancelled == 2
