"""app.catalog.vocab: every token id's text, decoded fast and the same as the tokenizer's batch_decode."""

from __future__ import annotations

from pathlib import Path

from app.catalog.vocab import token_strings
from trainer.lm.models import load_model


def test_token_strings_equal_batch_decode_on_the_tiny_tokenizer(tiny_model_dir: Path) -> None:
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    every = [[i] for i in range(len(tokenizer))]
    assert token_strings(tokenizer) == tokenizer.batch_decode(every, skip_special_tokens=False)


def test_a_slow_tokenizer_goes_through_batch_decode() -> None:
    class Slow:
        is_fast = False
        clean_up_tokenization_spaces = True

        def __len__(self) -> int:
            return 3

        def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
            assert not skip_special_tokens
            return [f"<{i[0]}>" for i in ids]

    assert token_strings(Slow()) == ["<0>", "<1>", "<2>"]
