"""app.catalog.vocab: every token id's text, decoded fast and the same as the tokenizer's batch_decode."""

from __future__ import annotations

from pathlib import Path

from app.catalog.vocab import token_strings
from trainer.lm.models import load_model


def test_token_strings_equal_batch_decode_on_the_tiny_tokenizer(tiny_model_dir: Path) -> None:
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    every = [[i] for i in range(len(tokenizer))]
    assert token_strings(tokenizer) == tokenizer.batch_decode(every, skip_special_tokens=False)


def test_a_tokenizer_that_cleans_up_decoded_text_goes_through_batch_decode(tiny_model_dir: Path) -> None:
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    tokenizer.clean_up_tokenization_spaces = True  # the backend's decode would skip the clean-up
    every = [[i] for i in range(len(tokenizer))]
    assert token_strings(tokenizer) == tokenizer.batch_decode(every, skip_special_tokens=False)
