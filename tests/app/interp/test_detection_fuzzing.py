"""Detection and fuzzing: the balanced items, the prompts, the 0/1 list parser on what small models
write, and balanced accuracy over the answered batches (app.interp.scoring.detection, .fuzzing)."""

from __future__ import annotations

import asyncio

import pytest

from app.interp.errors import ParseError
from app.interp.examples import Context, marked_positions, render
from app.interp.llm.base import LLMError
from app.interp.scoring.classify import parse_labels
from app.interp.scoring.detection import (
    PROMPT_VERSION as DETECTION_VERSION,
)
from app.interp.scoring.detection import (
    detection_items,
    detection_messages,
    score_detection,
)
from app.interp.scoring.fuzzing import PROMPT_VERSION as FUZZING_VERSION
from app.interp.scoring.fuzzing import fuzzing_items, fuzzing_messages, score_fuzzing
from tests.app.interp.recorded import RECORDED, RecordedAnswers

ACTIVE = [
    Context(("See", " you", " on", " Monday", " at", " noon"), (0, 0, 0, 3.0, 0, 0), 1),
    Context(("Closed", " every", " Sunday", " and", " Saturday"), (0, 0, 2.0, 0, 1.5), 2),
    Context(("It", " rained", " on", " Friday"), (0, 0, 0.5, 2.5), 3),
    Context(("Back", " by", " Tuesday", " night"), (0, 0, 4.0, 0), 4),
]
SILENT = [
    Context(("The", " cat", " sat"), (0, 0, 0), 10),
    Context(("Green", " apples"), (0, 0), 11),
    Context(("A", " loud", " dog"), (0, 0, 0), 12),
    Context(("He", " ran"), (0, 0), 13),
    Context(("Rain", " again"), (0, 0), 14),
]


def unmark(text: str, tokens: tuple[str, ...]) -> set[int]:
    """The positions a rendered line marks (the inverse of `render` for these plain tokens)."""
    marked: set[int] = set()
    pos, inside = 0, False
    for i, token in enumerate(tokens):
        if text.startswith("<<", pos):
            inside, pos = True, pos + 2
        assert text.startswith(token, pos)
        pos += len(token)
        if inside:
            marked.add(i)
        if text.startswith(">>", pos):
            inside, pos = False, pos + 2
    assert pos == len(text)
    return marked


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("[1, 0, 1, 0]", 4, (True, False, True, False)),
        (RECORDED["smol_fuzz"], 4, (True, False, True, False)),
        (RECORDED["gemma_detect"], 4, (True, False, True, False)),  # a base model goes on with a new prompt
        (RECORDED["gemma_fuzz"], 4, (True, False, True, False)),
        ("Answer: [true, false, 'yes']", 3, (True, False, True)),
        ("Example 1: 1\nExample 2: 0.\nExample 3: yes", 3, (True, False, True)),
        ("1 0 0\n", 3, (True, False, False)),
        ("[space] is not an answer; [0,1]", 2, (False, True)),
    ],
)
def test_parse_labels(text: str, n: int, expected: tuple[bool, ...]) -> None:
    assert parse_labels(text, n) == expected


@pytest.mark.parametrize(
    ("text", "n", "reason"),
    [
        (RECORDED["smol_detect"], 4, "misaligned: 10 answers for 4"),  # a list that never closes
        ("[1, 0]", 3, "misaligned: 2 answers for 3"),
        ("Example 1: 1\nExample 3: 0", 3, "answers for examples [1, 3] but 3 were shown"),
        ("Example 1: No one came.\nExample 2: Yes, we did.", 2, "no list"),  # examples echoed, not answered
        ("I think example 2 is about cats.", 2, "no list"),
        ("", 1, "no list"),
    ],
)
def test_parse_labels_failures(text: str, n: int, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_labels(text, n)
    assert reason in info.value.reason
    assert info.value.raw == text


def test_detection_items_are_balanced_shuffled_plain_and_seeded() -> None:
    items = detection_items([*ACTIVE, *SILENT], rng_seed=1)
    assert sum(it.truth for it in items) == 4 and sum(not it.truth for it in items) == 4
    assert all("<<" not in it.text for it in items)
    by_id = {c.example_id: c for c in [*ACTIVE, *SILENT]}
    assert all(it.text == render(by_id[it.example_id].tokens) for it in items)
    assert all(it.truth == by_id[it.example_id].is_activating for it in items)
    assert len({it.example_id for it in items}) == 8
    assert detection_items([*ACTIVE, *SILENT], rng_seed=1) == items
    orders = {tuple(it.example_id for it in detection_items([*ACTIVE, *SILENT], rng_seed=s)) for s in range(10)}
    assert len(orders) > 1
    assert detection_items(ACTIVE, rng_seed=0) == []  # no non-activating context: nothing to balance


def test_fuzzing_items_mark_half_right_and_half_at_silent_tokens() -> None:
    contexts = [*ACTIVE, *SILENT]  # the silent ones are not used
    items = fuzzing_items(contexts, rng_seed=5)
    by_id = {c.example_id: c for c in ACTIVE}
    assert sorted(it.example_id for it in items) == [1, 2, 3, 4]
    assert sum(it.truth for it in items) == 2
    for it in items:
        c = by_id[it.example_id]
        marks = unmark(it.text, c.tokens)
        right = set(marked_positions(c))
        if it.truth:
            assert marks == right
        else:
            assert len(marks) == len(right) and all(c.values[i] == 0 for i in marks)
    # A context that fires on every token cannot be marked wrongly: it is dropped.
    full = Context(("a", "b"), (1.0, 1.0), 20)
    runs = [fuzzing_items([ACTIVE[0], full], rng_seed=s) for s in range(20)]
    assert all(it.truth for run in runs for it in run if it.example_id == 20)
    assert any(len(run) == 1 for run in runs) and any(len(run) == 2 for run in runs)


def test_prompts_show_the_explanation_and_numbered_examples() -> None:
    texts = ["one line", "two<< lines>>"]
    detection = detection_messages("days\nof the week", texts)
    fuzzing = fuzzing_messages("days of the week", texts)
    for messages in (detection, fuzzing):
        assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[2].content == "[1, 0, 1, 0]"
        assert messages[-1].content == "Explanation: days of the week\nExample 1: one line\nExample 2: two<< lines>>"
    assert "<<" in fuzzing[0].content and "<<" not in detection[0].content


def test_detection_scores_answered_batches_and_records_unparsable_ones() -> None:
    explanation = "days of the week"
    contexts = [*ACTIVE, *SILENT]
    items = detection_items(contexts, rng_seed=2)
    batches = [items[:3], items[3:6], items[6:]]
    prompt = [detection_messages(explanation, [it.text for it in b])[-1].content for b in batches]
    # Batch 1 answered right; batch 2 answered "yes" everywhere; batch 3 unparsable.
    first = "[" + ", ".join(str(int(it.truth)) for it in batches[0]) + "]"
    backend = RecordedAnswers({prompt[0]: first, prompt[1]: "[1, 1, 1]", prompt[2]: RECORDED["smol_detect"]})
    result = asyncio.run(score_detection(backend, explanation, contexts, rng_seed=2, batch_size=3))
    answered = [it.truth for it in items[:6]]
    predicted = answered[:3] + [True] * 3
    pos = sum(answered)
    neg = 6 - pos
    tp = sum(t and p for t, p in zip(answered, predicted, strict=True))
    tn = sum(not t and not p for t, p in zip(answered, predicted, strict=True))
    assert result.score == pytest.approx((tp / pos + tn / neg) / 2)
    assert result.n == 6
    assert result.predicted == (*predicted, None, None)
    assert [(f.call, f.raw) for f in result.failures] == [(2, RECORDED["smol_detect"])]
    assert result.example_ids == tuple(it.example_id for it in items)
    assert result.truth == tuple(it.truth for it in items) and result.shown == tuple(it.text for it in items)
    assert result.kind == "detection" and result.prompt_version == DETECTION_VERSION and result.llm == "recorded"
    assert result.raw == (first, "[1, 1, 1]", RECORDED["smol_detect"])


def test_fuzzing_perfect_answers_score_1_and_no_answers_score_none() -> None:
    explanation = "days of the week"
    items = fuzzing_items(ACTIVE, rng_seed=0)
    prompt = fuzzing_messages(explanation, [it.text for it in items])[-1].content
    right = "[" + ", ".join(str(int(it.truth)) for it in items) + "]"
    result = asyncio.run(score_fuzzing(RecordedAnswers({prompt: right}), explanation, ACTIVE, rng_seed=0))
    assert result.score == 1.0 and result.n == 4 and not result.failures
    assert result.kind == "fuzzing" and result.prompt_version == FUZZING_VERSION
    garbage = asyncio.run(score_fuzzing(RecordedAnswers({prompt: "I am not sure."}), explanation, ACTIVE, rng_seed=0))
    assert garbage.score is None and garbage.n == 0 and garbage.failures[0].raw == "I am not sure."
    empty = asyncio.run(score_fuzzing(RecordedAnswers({}), explanation, ACTIVE[:1], rng_seed=0))
    assert empty.score is None and empty.n == 0 and empty.raw == ()


def test_backend_errors_propagate_and_bad_batch_sizes_are_refused() -> None:
    explanation = "days of the week"
    items = detection_items([*ACTIVE, *SILENT], rng_seed=0)
    first = detection_messages(explanation, [it.text for it in items[:5]])[-1].content
    second = detection_messages(explanation, [it.text for it in items[5:]])[-1].content
    backend = RecordedAnswers({second: "[0, 0, 0]"}, down=[first])
    with pytest.raises(LLMError, match="down"):
        asyncio.run(score_detection(backend, explanation, [*ACTIVE, *SILENT], rng_seed=0))
    assert backend.cancelled == 1
    with pytest.raises(ValueError, match="batch_size"):
        asyncio.run(score_detection(backend, explanation, [*ACTIVE, *SILENT], rng_seed=0, batch_size=0))
