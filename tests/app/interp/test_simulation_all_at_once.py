"""The all-at-once simulator: LocalChat's one-pass next-token distributions against a token-by-token loop
(tiny random Llama chat model), the all-at-once prompt, and score_simulation choosing its method."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.interp.examples import Context
from app.interp.llm.base import ChatBackend, LLMError, Message, PrefillScorer
from app.interp.llm.local_hf import PLAIN_TRANSCRIPT, LocalChat, PromptRejected
from app.interp.llm.prefill import candidate_token_ids, prefix_token_ids
from app.interp.scoring.simulation import PROMPT_VERSION, score_simulation
from app.interp.scoring.simulation_all_at_once import (
    ALL_AT_ONCE_PROMPT_VERSION,
    CANDIDATES,
    TOP,
    UNKNOWN,
    all_at_once_prompt,
    expected_answer,
)
from tests.app.interp.llm_fixtures import build_chat_model
from tests.app.interp.recorded import RecordedAnswers

ASK = [Message("system", "You explain features."), Message("user", "The feature fires on the word after if.")]
PREFIX = "The\tunknown\n quick\tunknown\n fox\tunknown\n"
TABS = [i + 1 for i, ch in enumerate(PREFIX) if ch == "\t"]
DIGITS = [str(v) for v in range(10)]
FOX = Context(("The", " quick", " brown", " fox", "\n", " jumps"), (0.0, 0.0, 0.0, 3.0, 0.0, 0.5), example_id=7)
SILENT = Context(("Activation", " 0", " 1"), (0.0, 0.0, 0.0), example_id=8)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("tiny-chat"), context=4096)


@pytest.fixture(scope="module")
def chat(chat_dir: Path) -> LocalChat:
    return LocalChat(str(chat_dir), device="cpu", progress=False)


def reference(
    folder: Path, messages: list[Message], prefix_ids: list[list[int]], candidates: list[str]
) -> list[list[float]]:
    """Token by token: per read, a full forward pass over prompt + that read's prefix ids; the softmax over
    the whole vocabulary at the last position, then the candidates' first tokens renormalised."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, return_dict=False
    )
    first = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in candidates]
    out = []
    with torch.no_grad():
        for ids in prefix_ids:
            probs = torch.softmax(model(torch.tensor([list(prompt) + ids])).logits[0, -1], dim=-1)  # (vocab,)
            picked = probs[first]  # (C,)
            out.append((picked / picked.sum()).tolist())
    return out


def test_local_chat_is_a_prefill_scorer_and_a_recorded_backend_is_not(chat: LocalChat) -> None:
    assert isinstance(chat, PrefillScorer) and isinstance(chat, ChatBackend)
    assert not isinstance(RecordedAnswers({}), PrefillScorer)


def test_one_pass_distributions_equal_a_token_by_token_loop(chat: LocalChat, chat_dir: Path) -> None:
    positions = [0, *TABS, len(PREFIX)]
    got = asyncio.run(chat.next_token_distributions(ASK, PREFIX, positions, DIGITS))
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    # The natural reference: each read sees exactly the tokens of PREFIX[:p], tokenized on its own.
    heads = [tokenizer(PREFIX[:p], add_special_tokens=False)["input_ids"] if p else [] for p in positions]
    want = reference(chat_dir, ASK, heads, DIGITS)
    assert len(got) == len(positions)
    for dist, ref in zip(got, want, strict=True):
        assert list(dist) == DIGITS
        torch.testing.assert_close(torch.tensor(list(dist.values())), torch.tensor(ref), atol=1e-5, rtol=1e-4)
        assert math.fsum(dist.values()) == pytest.approx(1.0, abs=1e-6)
    assert got[1] != got[2]  # different contexts, different readings (not one row repeated)


def test_reads_come_back_in_the_order_asked_with_repeats(chat: LocalChat) -> None:
    forward = chat.next_token_distributions_sync(ASK, PREFIX, TABS, DIGITS)
    shuffled = chat.next_token_distributions_sync(ASK, PREFIX, [TABS[2], TABS[0], TABS[2]], DIGITS)
    for a, b in zip(shuffled, [forward[2], forward[0], forward[2]], strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


def test_an_offset_inside_a_token_is_read_after_the_pieces_before_it(chat: LocalChat, chat_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    inside = PREFIX.index("own") + 1  # 'o|w' of the tiny BPE's token 'ow': no boundary of the whole text here
    whole = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    head = tokenizer(PREFIX[:inside], add_special_tokens=False)["input_ids"]
    assert whole[: len(head)] != head  # the case under test: the whole text's tokens straddle the offset
    positions = [TABS[0], inside, TABS[2]]
    ids, starts = prefix_token_ids(tokenizer, PREFIX, positions)
    cuts = [0, *positions, len(PREFIX)]
    pieces = [tokenizer(PREFIX[a:b], add_special_tokens=False)["input_ids"] for a, b in itertools.pairwise(cuts)]
    assert ids == [i for piece in pieces for i in piece]
    assert starts == [sum(len(p) for p in pieces[: k + 1]) for k in range(3)]
    got = chat.next_token_distributions_sync(ASK, PREFIX, positions, DIGITS)
    want = reference(chat_dir, ASK, [ids[:s] for s in starts], DIGITS)
    for dist, ref in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(list(dist.values())), torch.tensor(ref), atol=1e-5, rtol=1e-4)


def test_a_candidate_sharing_an_earlier_candidates_first_token_is_left_out(chat: LocalChat, chat_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    assert candidate_token_ids(tokenizer, ["7", "7\t", "8"]) == {
        "7": tokenizer.convert_tokens_to_ids("7"),
        "8": tokenizer.convert_tokens_to_ids("8"),
    }
    (dist,) = chat.next_token_distributions_sync(ASK, PREFIX, [TABS[0]], ["7", "7\t", "8"])
    (digits,) = chat.next_token_distributions_sync(ASK, PREFIX, [TABS[0]], DIGITS)
    assert list(dist) == ["7", "8"]
    assert dist["7"] == pytest.approx(digits["7"] / (digits["7"] + digits["8"]), rel=1e-5)


def test_a_base_model_gets_a_plain_transcript_template(tmp_path: Path) -> None:
    folder = build_chat_model(tmp_path / "base", template=None)
    base = LocalChat(str(folder), device="cpu", progress=False, chat_template=PLAIN_TRANSCRIPT)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (
        base._prompt_ids(ASK)[0].tolist()
        == tokenizer(
            "System: You explain features.\n\nUser: The feature fires on the word after if.\n\nAssistant: ",
            add_special_tokens=False,
        )["input_ids"]
    )
    assert not getattr(tokenizer, "chat_template", None)  # kept by LocalChat, never written to the tokenizer
    (dist,) = base.next_token_distributions_sync(ASK, PREFIX, [TABS[1]], DIGITS)
    assert list(dist) == DIGITS and math.fsum(dist.values()) == pytest.approx(1.0)


def test_bad_reads_are_value_errors_and_an_overlong_prompt_is_rejected(chat: LocalChat, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the assistant prefix"):
        chat.next_token_distributions_sync(ASK, PREFIX, [len(PREFIX) + 1], DIGITS)
    with pytest.raises(ValueError, match="outside"):
        asyncio.run(chat.next_token_distributions(ASK, PREFIX, [-1], DIGITS))
    with pytest.raises(ValueError, match="at least one offset"):
        chat.next_token_distributions_sync(ASK, PREFIX, [], DIGITS)
    with pytest.raises(ValueError, match="candidate"):
        chat.next_token_distributions_sync(ASK, PREFIX, [0], [])
    with pytest.raises(ValueError, match="candidate"):
        chat.next_token_distributions_sync(ASK, PREFIX, [0], ["1", ""])
    short = LocalChat(str(build_chat_model(tmp_path / "short", context=64)), device="cpu", progress=False)
    with pytest.raises(PromptRejected, match="over the model's context of 64 tokens"):
        short.next_token_distributions_sync(ASK, PREFIX * 4, [3], DIGITS)
    asyncio.run(short.aclose())
    with pytest.raises(LLMError, match="closed"):
        asyncio.run(short.next_token_distributions(ASK, PREFIX, [3], DIGITS))


def test_the_prompt_reads_after_each_tokens_tab() -> None:
    prompt = all_at_once_prompt("the word\n fox", FOX)
    assert [m.role for m in prompt.messages] == ["system", *["user", "assistant"] * 3, "user"]
    assert prompt.messages[-1].content == "Explanation: the word fox"  # the tokens are in the answer's lines
    assert prompt.messages[3].content == 'Explanation: the word "cat"'
    assert prompt.messages[4].content.splitlines()[3:7] == [" dog\t0", " to\t0", " the\t0", " cat\t9"]
    assert f"0 (not at all) to {TOP}" in prompt.messages[0].content
    lines = prompt.assistant_prefix.splitlines()
    assert lines == [f"{t}\t{UNKNOWN}" for t in ("The", " quick", " brown", " fox", "\\n", " jumps")]
    assert len(prompt.positions) == len(FOX.tokens)
    line_starts = [0, *[i + 1 for i, c in enumerate(prompt.assistant_prefix) if c == "\n"][:-1]]
    for line, start, pos in zip(lines, line_starts, prompt.positions, strict=True):
        assert prompt.assistant_prefix[start:pos] == line.removesuffix(UNKNOWN)  # the token and its tab
        assert prompt.assistant_prefix[pos:].startswith(UNKNOWN + "\n")


def test_expected_answer_is_the_renormalised_mean() -> None:
    assert expected_answer({"0": 0.5, "9": 0.5}) == pytest.approx(4.5)
    assert expected_answer({"0": 0.1, "2": 0.3}) == pytest.approx(1.5)
    with pytest.raises(LLMError, match="no probability"):
        expected_answer({"0": 0.0, "1": 0.0})


def test_score_simulation_reads_a_prefill_scorer_all_at_once(chat: LocalChat) -> None:
    result = asyncio.run(score_simulation(chat, "the word fox", [FOX, Context((), ()), SILENT]))
    assert result.method == "all-at-once" and result.prompt_version == ALL_AT_ONCE_PROMPT_VERSION
    assert result.example_ids == (7, 8) and not result.failures and result.llm == chat.name
    assert result.n == 9 and result.from_logprobs == 9 and len(result.raw) == 2
    for context, values, raw in zip((FOX, SILENT), result.predictions, result.raw, strict=True):
        prompt = all_at_once_prompt("the word fox", context)
        dists = chat.next_token_distributions_sync(
            prompt.messages, prompt.assistant_prefix, prompt.positions, CANDIDATES
        )
        want = [math.fsum(int(k) * p for k, p in d.items()) * 10 / TOP for d in dists]
        assert values is not None and values == pytest.approx(want, abs=1e-5)
        assert all(0 <= v <= 10 for v in values)
        assert [line.split("\t")[1] for line in raw.splitlines()] == [f"{v:.3f}" for v in values]
    # Pooled over both contexts; the silent one's r is undefined (constant truth), so the mean is FOX's alone.
    assert result.per_context[1] is None and result.per_context_mean == result.per_context[0]
    assert result.score is not None and -1 <= result.score <= 1


def test_score_simulation_generates_with_a_backend_that_cannot_prefill() -> None:
    answers = RecordedAnswers({"Explanation: the word fox\nTokens:\nActivation\n 0\n 1": "Activation\t0\n 0\t0\n 1\t3"})
    result = asyncio.run(score_simulation(answers, "the word fox", [SILENT]))
    assert result.method == "generation" and result.prompt_version == PROMPT_VERSION
    assert result.predictions == ((0.0, 0.0, 3.0),) and result.from_logprobs == 0


def test_a_context_over_the_models_context_raises_and_nothing_is_scored(tmp_path: Path) -> None:
    # The tiny BPE spells the prompt out: about 570 tokens, plus 30 for SILENT's answer and 400 for LONG's.
    small = LocalChat(str(build_chat_model(tmp_path / "small", context=800)), device="cpu", progress=False)
    long = Context(tuple(" fox" for _ in range(40)), tuple(1.0 for _ in range(40)), example_id=9)
    assert asyncio.run(score_simulation(small, "the word fox", [SILENT, SILENT])).n == 6  # the short ones fit
    with pytest.raises(PromptRejected, match="over the model's context of 800 tokens"):
        asyncio.run(score_simulation(small, "the word fox", [SILENT, long, SILENT]))


# --- the packaged models on token-identity features of real text (slow) -------------------------------------------

WORDS = (  # (token, a wrong explanation): the right one is 'the word "<token>"'
    (" police", 'the word "king"'),
    (" water", 'the word "house"'),
    (" people", 'the word "children"'),
    (" heart", 'the word "police"'),
)


def token_feature(
    texts: list[list[str]], word: str, *, n_on: int = 6, n_off: int = 6, width: int = 12
) -> list[Context]:
    """Windows of real text for a feature that is 1 on the token `word` and 0 elsewhere: up to `n_on` windows
    where it occurs (past the first 4 tokens, and no other spelling of it), then `n_off` where it does not
    (" police" occurs in 3 windows of the held-out corpus, the other WORDS in more than 40)."""
    on: list[Context] = []
    off: list[Context] = []
    for tokens in texts:
        for start in range(0, len(tokens) - width, width):
            window = tokens[start : start + width]
            if word in window[4:] and len(on) < n_on and all(t == word or t.strip() != word.strip() for t in window):
                on.append(Context(tuple(window), tuple(1.0 if t == word else 0.0 for t in window), len(on)))
            elif word.strip() not in "".join(window) and len(off) < n_off and start % 7 == 0:
                off.append(Context(tuple(window), tuple(0.0 for _ in window), 100 + len(off)))
    assert len(on) >= 3 and len(off) == n_off
    return on + off


@pytest.fixture(scope="module")
def corpus_tokens() -> list[list[str]]:
    """The packaged corpus's held-out documents as Gemma 3 token strings (the demo SAE's model), 4000 per document."""
    from trainer.data.corpus import packaged_corpus
    from trainer.lm.gemma3_gguf import gemma3_270m_folder

    tokenizer = AutoTokenizer.from_pretrained(gemma3_270m_folder(progress=False))
    texts: list[list[str]] = []
    for doc in packaged_corpus("heldout"):
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"][:4000]
        texts.append([str(tokenizer.decode([i])) for i in ids])
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma3-270m"])
def test_a_packaged_model_scores_the_right_explanation_of_a_token_feature_above_a_wrong_one(
    model: str, corpus_tokens: list[list[str]]
) -> None:
    # SmolLM2-135M-Instruct with its chat template; Gemma 3 270M is a base model: a plain transcript.
    template = PLAIN_TRANSCRIPT if model == "gemma3-270m" else None
    chat = LocalChat(model, device="cpu", progress=False, chat_template=template)

    async def scores(contexts: list[Context], right: str, wrong: str) -> tuple[float, float]:
        a = await score_simulation(chat, right, contexts)
        b = await score_simulation(chat, wrong, contexts)
        assert a.method == b.method == "all-at-once" and not a.failures and a.n == b.n == 12 * len(contexts)
        assert a.score is not None and b.score is not None  # generation gave None here: nothing parsed
        return a.score, b.score

    margins = []
    for word, wrong in WORDS:
        right_score, wrong_score = asyncio.run(
            scores(token_feature(corpus_tokens, word), f'the word "{word.strip()}"', wrong)
        )
        assert right_score > wrong_score, (word, right_score, wrong_score)
        margins.append(right_score - wrong_score)
    # Measured: SmolLM2 +0.07 to +0.23 (mean 0.15), Gemma 3 270M +0.10 to +0.30 (mean 0.20).
    assert sum(margins) / len(margins) > 0.08
