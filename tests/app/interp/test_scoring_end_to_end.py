"""Explain and score through real backends: the OpenAI-compatible client against a real HTTP server that
replays a recorded answer with logprobs (the expected values reach the score), an endpoint that is down,
and the in-process backend on a tiny random chat model, whose garbage answers become recorded failures."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from app.interp.examples import Context
from app.interp.explainer import explain
from app.interp.llm.base import LLMError
from app.interp.llm.local_hf import LocalChat
from app.interp.llm.openai_compat import OpenAIChat
from app.interp.scoring.detection import score_detection
from app.interp.scoring.fuzzing import score_fuzzing
from app.interp.scoring.simulation import score_simulation
from tests.app.interp.llm_fixtures import Reply, build_chat_model, completion, scripted_server

ACTIVE = [
    Context(("I", " will", " call", " you", " on", " Tuesday", " morning", "."), (0, 0, 0, 0, 0, 5.0, 0, 0), 1),
    Context(("The", " market", " opens", " on", " Saturday", " and", " Sunday", "."), (0, 0, 0, 0, 4.0, 0, 3.5, 0), 2),
    Context(("We", " left", " on", " Thursday", " night"), (0, 0, 0, 4.5, 0), 3),
    Context(("Back", " by", " Monday", "."), (0, 0, 2.0, 0), 4),
]
SILENT = [
    Context(("The", " cat", " sat", " down", "."), (0, 0, 0, 0, 0), 5),
    Context(("He", " likes", " green", " apples"), (0, 0, 0, 0), 6),
]


def with_logprobs(pieces: Sequence[tuple[str, dict[str, float]]]) -> dict[str, Any]:
    """An OpenAI chat.completion body generating `pieces` (token, its top alternatives), as vLLM sends it."""
    content = [
        {
            "token": token,
            "logprob": top.get(token, 0.0),
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()],
        }
        for token, top in pieces
    ]
    return completion("".join(t for t, _ in pieces), logprobs={"content": content})


def test_simulation_reads_expected_values_from_an_openai_endpoint() -> None:
    context = Context(("On", " Monday", " we", " rest"), (0.0, 4.0, 0.0, 1.0), example_id=8)
    ln = math.log
    pieces = [
        ("On", {}), ("\t", {}), ("0", {"0": ln(0.9), "1": ln(0.1)}), ("\n", {}),  # EV 0.1
        (" Monday", {}), ("\t", {}), ("9", {"9": ln(0.5), "10": ln(0.5)}), ("\n", {}),  # EV 9.5
        (" we", {}), ("\t", {}), ("0", {"0": 0.0}), ("\n", {}),  # EV 0
        (" rest", {}), ("\t", {}), ("1", {"1": ln(0.5), "2": ln(0.25), "0": ln(0.25), "\n": ln(0.01)}),  # EV 1
    ]  # fmt: skip
    with scripted_server([Reply(body=with_logprobs(pieces))]) as server:
        backend = OpenAIChat(server.base, "replayed", max_retries=0)
        result = asyncio.run(score_simulation(backend, "days of the week", [context], logprobs=5))
    sent = server.seen[0].body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5 and sent["temperature"] == 0
    assert sent["messages"][-1]["content"].endswith("Tokens:\nOn\n Monday\n we\n rest")
    assert result.from_logprobs == 4 and not result.failures
    assert result.predictions[0] == pytest.approx((0.1, 9.5, 0.0, 1.0))
    # Predicted mean 2.65, true mean 1.25: sxy = 39 - 4 * 2.65 * 1.25 = 25.75,
    # sxx = 91.26 - 4 * 2.65^2 = 63.17, syy = 17 - 4 * 1.25^2 = 10.75.
    assert result.score == pytest.approx(25.75 / math.sqrt(63.17 * 10.75))
    assert result.llm == backend.name and result.example_ids == (8,)


def test_an_endpoint_that_is_down_is_a_clear_error_not_a_score() -> None:
    down = [Reply(503, {"error": {"message": "overloaded"}}) for _ in range(4)]
    with scripted_server(down) as server:
        backend = OpenAIChat(server.base, "replayed", max_retries=0)
        with pytest.raises(LLMError, match="503"):
            asyncio.run(score_detection(backend, "days of the week", [*ACTIVE, *SILENT], rng_seed=0))
        with pytest.raises(LLMError, match="503"):
            asyncio.run(explain(backend, ACTIVE))


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> LocalChat:
    folder: Path = build_chat_model(tmp_path_factory.mktemp("tiny-chat"), context=4096)  # its tiny BPE spells words out
    return LocalChat(str(folder), device="cpu", progress=False)


def test_a_real_model_that_writes_garbage_gives_failed_attempts_not_exceptions(tiny_chat: LocalChat) -> None:
    async def run() -> tuple[Any, ...]:
        explained = await explain(tiny_chat, ACTIVE[:2])
        simulated = await score_simulation(tiny_chat, "days of the week", [ACTIVE[2], *SILENT], max_tokens_per_token=2)
        detected = await score_detection(tiny_chat, "days of the week", [*ACTIVE, *SILENT], rng_seed=0, batch_size=2)
        fuzzed = await score_fuzzing(tiny_chat, "days of the week", ACTIVE, rng_seed=0, batch_size=2)
        return explained, simulated, detected, fuzzed

    explained, simulated, detected, fuzzed = asyncio.run(run())
    # The explanation: a random model's bytes are no explanation; its answer is kept as written.
    assert explained.text is None and explained.error
    again = asyncio.run(tiny_chat.chat(list(explained.messages), max_tokens=48))
    assert explained.raw == again.text and explained.llm == tiny_chat.name
    # Simulation: one answer per context; each context either parsed or failed with its raw text.
    assert len(simulated.raw) == 3 and simulated.example_ids == (3, 5, 6)
    for i, prediction in enumerate(simulated.predictions):
        failed = [f for f in simulated.failures if f.call == i]
        assert (prediction is None) == bool(failed)
        assert all(f.raw == simulated.raw[i] and f.reason for f in failed)
    assert simulated.n == sum(len(p) for p in simulated.predictions if p is not None)
    # Detection and fuzzing: one answer per batch of 2; an unparsed batch leaves its contexts unanswered.
    for result, n_items in ((detected, 4), (fuzzed, 4)):
        assert len(result.raw) == n_items // 2 and len(result.predicted) == n_items
        failed_calls = {f.call for f in result.failures}
        for i, answer in enumerate(result.predicted):
            assert (answer is None) == (i // 2 in failed_calls)
        assert result.n == sum(p is not None for p in result.predicted)
        assert (result.score is None) or 0.0 <= result.score <= 1.0
