"""A tiny random Gemma 2 with an offline byte-level BPE tokenizer, saved like a hub model.

`load_model("tiny-gemma2")` builds it once into the user cache (`jumpscope demo --tiny`);
the tests build their own copy.

It goes through the same `from_pretrained` path as real models and exercises the real
Gemma 2 code (eager attention, soft-capping, sliding window, sqrt(d) embedding scale).
Sizes follow jumprelu.md §10 (larger variant: vocab 512, intermediate 256), with 3 layers and
head_dim 32 so that the attention site (4 x 32 = 128) is wider than d_model (64).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0, 1, 2, 3 as in Gemma

TEXT = (
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. "
    "Flat is better than nested. Sparse is better than dense. Readability counts. Errors should never "
    "pass silently. In the face of ambiguity, refuse the temptation to guess. Now is better than never."
    "\nThe quick brown fox jumps over the lazy dog. Sparse autoencoders find features in "
    "language models. A feature fires on some tokens and not on others. <script>alert('x')</script> "
    '"quoted" & <b>bold</b> text, numbers 0123456789, and more words: the, of, and, to, in.\n'
)


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer that prepends <bos>; lossless on any text."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXT] * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_gemma2_config(vocab_size: int = 512, **overrides: Any) -> Gemma2Config:
    """The test model's config; overrides replace single fields."""
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # heads * head_dim = 128 != hidden 64, as the attn site must handle
        query_pre_attn_scalar=32,
        max_position_embeddings=256,
        sliding_window=32,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    return Gemma2Config(**{**fields, **overrides})


def build_tiny_gemma2(folder: Path, seed: int = 0, train_steps: int = 150) -> Path:
    """Save a tiny Gemma 2 and its tokenizer into `folder` (created).

    The random model is first trained for a few steps on TEXT, so that its predictions
    depend on context (a purely random model is equally lost with or without its inputs,
    which would make delta-LM-loss tests meaningless).
    """
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(tiny_gemma2_config(len(tokenizer)))
    ids = tokenizer(TEXT * 4, return_tensors="pt").input_ids[0]
    windows = ids[: (len(ids) // 64) * 64].view(-1, 64)  # (n, 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _step in range(train_steps):
        batch = windows[torch.randint(len(windows), (8,))]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_gemma2_folder(cache_dir: Path) -> Path:
    """cache_dir/tiny-gemma2, built on first use (a few seconds) and moved into place atomically."""
    folder = cache_dir / "tiny-gemma2"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # half-written by an interrupted build
        shutil.rmtree(folder, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-gemma2.build-", dir=cache_dir))
    try:
        build_tiny_gemma2(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
