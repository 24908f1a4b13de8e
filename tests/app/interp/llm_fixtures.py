"""A tiny random Llama chat model (real transformers objects saved to a folder) and a scripted HTTP server.

The chat model has a byte-level BPE tokenizer of a few hundred entries with ChatML turn markers and a
chat template, so LocalChat and `jumpscope llm-serve` run on it in well under a second per answer.
The scripted server is a real HTTP server (http.server in a thread) that answers each request with the
next reply of a script and records what it was sent: garbage, errors, slow or rate-limited replies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""SmolLM2's turn format (ChatML) without its default system prompt."""

NO_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A template that refuses system messages, as Gemma's does."""

TEXT = (
    "The feature fires on the word after if. Explanation: conditional clauses. Activation 0 1 2 3 4 5 6 7 8 9 10. "
    "Sparse autoencoders find features in language models; the quick brown fox jumps over the lazy dog. "
)


def build_chat_model(folder: Path, *, template: str | None = CHATML, seed: int = 0, context: int = 512) -> Path:
    """Save a tiny random Llama (2 layers, width 32) and its ChatML tokenizer into `folder`."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXT] * 10, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    if template is not None:
        tokenizer.chat_template = template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.3,  # spread logits: no near-ties between greedy candidates across processes
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: Any = None
    """A dict/list (sent as JSON) or str / bytes (sent as is)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    """One request the scripted server received."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Scripted:
    """A running scripted server: its base URL, the replies still to give, and the requests it received."""

    base: str
    script: list[Reply]
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    """Requests being answered now."""
    max_in_flight: int = 0
    """The most requests it was answering at once."""


def completion(text: str = "hello", **extra: Any) -> dict[str, Any]:
    """A minimal OpenAI chat.completion body answering `text`."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}
    return {"id": "x", "object": "chat.completion", "model": "scripted", "choices": [choice]}


@contextmanager
def scripted_server(script: list[Reply]) -> Iterator[Scripted]:
    """A real HTTP server on a free loopback port answering POSTs with `script` in order (then 500s)."""
    state = Scripted("", list(script))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
            with lock:
                state.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply = state.script.pop(0) if state.script else Reply(500, {"error": {"message": "script ended"}})
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            time.sleep(reply.delay_s)
            with lock:
                state.in_flight -= 1
            payload = reply.body
            data = json.dumps(payload).encode() if isinstance(payload, dict | list) else payload
            data = data.encode() if isinstance(data, str) else (data or b"")
            try:
                self.send_response(reply.status)
                for key, value in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
