"""ChatBackend on an in-process Hugging Face chat model (the offline default, or any hub id / folder / GGUF).

The model runs one call at a time (a lock) in a worker thread, so the event loop stays free while it
generates. Prompts go through the tokenizer's chat template; greedy decoding at temperature 0,
plain temperature sampling otherwise (no top-k / top-p); per-token log-probabilities come from the
model's raw logits at each generated position (not from the temperature-scaled sampling scores).

LocalChat is also a PrefillScorer: `next_token_distributions` reads the next-token distribution at
many offsets of a teacher-forced assistant answer in one forward pass (the simulation's "all at
once" method). A base model without a chat template can be given one (`chat_template=`, e.g.
PLAIN_TRANSCRIPT).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from app.interp.llm.base import ChatReply, LLMError, Message, TokenLogprob
from app.interp.llm.packaged import DEFAULT_LLM, is_default, smollm2_folder
from app.interp.llm.prefill import candidate_token_ids, prefix_token_ids
from trainer.device import resolve_device
from trainer.lm.errors import ModelError, one_line

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
"""Alternatives per token a caller may ask for (the OpenAI API's limit)."""


PLAIN_TRANSCRIPT = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
"""A trivial chat template for a base model: the turns as a plain transcript ('User: ...', 'Assistant: ...')."""

_ALLOWED = (
    f"pass a chat model folder, a hub id (e.g. HuggingFaceTB/SmolLM2-360M-Instruct), a .gguf file, or nothing "
    f"for the offline default {DEFAULT_LLM!r}"
)


class PromptRejected(LLMError):
    """The messages cannot be answered as given: the chat template refuses them, or they do not fit the
    model's context (llm-serve answers 422)."""


class LocalChat:
    """A chat model loaded in this process (transformers), behind the ChatBackend interface.

    model: the offline default (None, '', 'smollm2'), a local model folder, a hub id, or a
    `.gguf` file (or pass `gguf_file=` with a folder or hub id). device: auto, cpu or cuda
    (trainer.device's rule). dtype: float32 on CPU; bfloat16 (default) or float32 on CUDA.
    chat_template: a Jinja chat template used instead of the tokenizer's own (a base model has
    none; PLAIN_TRANSCRIPT is a trivial one).
    The model loads now (seconds; converting the offline default the first time takes about 30 s).
    Raises ModelError (a ValueError) when the model cannot load or has no chat template.
    """

    def __init__(
        self,
        model: str | None = DEFAULT_LLM,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        gguf_file: str | None = None,
        progress: bool = True,
        chat_template: str | None = None,
    ) -> None:
        self.model_name = DEFAULT_LLM if is_default(model) else str(model)
        self.name = f"hf:{self.model_name}"
        self.concurrency = 1  # one model call at a time (self._lock)
        self.device = resolve_device(device) if device in ("auto", "cpu", "cuda") else _explicit_device(device)
        # Kept here, never set on the tokenizer: load_model may share one tokenizer between callers.
        self._chat_template = chat_template
        self._model, self._tokenizer = _load(
            model, gguf_file, self.device, dtype, progress=progress, need_template=chat_template is None
        )
        self._stop_ids = _stop_token_ids(self._model, self._tokenizer)
        self._lock = threading.Lock()  # one model call at a time, whichever thread or event loop asks
        self._queues: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self.context_length = int(getattr(self._model.config, "max_position_embeddings", 0) or 0)
        """Tokens of prompt plus answer the model takes (0 = not stated by its config)."""

    async def chat(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0, logprobs: int = 0
    ) -> ChatReply:
        """Answer `messages` (see ChatBackend.chat); logprobs <= 20 alternatives per generated token."""
        return await self.complete(
            messages, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs > 0, top_logprobs=logprobs
        )

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> ChatReply:
        """`chat` with the OpenAI API's split: `logprobs` asks for the chosen tokens' log-probabilities,
        `top_logprobs` for that many alternatives each (llm-serve answers through this)."""
        _check_args(max_tokens, temperature, top_logprobs)
        if self._model is None:
            raise LLMError(f"{self.name} was closed (aclose): create a new LocalChat")
        # Calls queue here rather than each holding an executor thread while it waits for the model.
        async with self._queue():
            return await asyncio.to_thread(
                self._generate, list(messages), max_tokens, temperature, logprobs or top_logprobs > 0, top_logprobs
            )

    def complete_sync(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> ChatReply:
        """`complete` in the calling thread (blocking; one call at a time still holds)."""
        _check_args(max_tokens, temperature, top_logprobs)
        return self._generate(list(messages), max_tokens, temperature, logprobs or top_logprobs > 0, top_logprobs)

    async def next_token_distributions(
        self, messages: Sequence[Message], assistant_prefix: str, positions: Sequence[int], candidates: Sequence[str]
    ) -> list[dict[str, float]]:
        """The candidates' next-token probabilities at each offset of the assistant's partial answer, from
        one forward pass (see PrefillScorer). Raises PromptRejected when prompt and prefix exceed the context."""
        _check_prefill_args(assistant_prefix, positions, candidates)
        if self._model is None:
            raise LLMError(f"{self.name} was closed (aclose): create a new LocalChat")
        async with self._queue():
            return await asyncio.to_thread(
                self._distributions, list(messages), assistant_prefix, list(positions), list(candidates)
            )

    def next_token_distributions_sync(
        self, messages: Sequence[Message], assistant_prefix: str, positions: Sequence[int], candidates: Sequence[str]
    ) -> list[dict[str, float]]:
        """`next_token_distributions` in the calling thread (blocking)."""
        _check_prefill_args(assistant_prefix, positions, candidates)
        return self._distributions(list(messages), assistant_prefix, list(positions), list(candidates))

    async def aclose(self) -> None:
        """Drop the model (its memory is freed once no call holds it)."""
        with self._lock:
            self._model = None
            self._tokenizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _queue(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._queues:  # an asyncio primitive belongs to one loop
            self._queues = {k: v for k, v in self._queues.items() if not k.is_closed()}
            self._queues[loop] = asyncio.Semaphore(1)
        return self._queues[loop]

    def _prompt_ids(self, messages: list[Message]) -> torch.Tensor:
        """The chat-templated prompt with the assistant turn opened: (1, T) token ids."""
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            ids = _apply_template(self._tokenizer, conversation, self._chat_template)
        except Exception as exc:  # jinja2 raises TemplateError for e.g. "System role not supported"
            if messages and messages[0].role == "system" and len(messages) > 1:
                # Templates without a system role (Gemma): the instructions open the first user turn.
                merged = [{"role": messages[1].role, "content": f"{messages[0].content}\n\n{messages[1].content}"}]
                try:
                    ids = _apply_template(self._tokenizer, merged + conversation[2:], self._chat_template)
                except Exception as again:
                    raise PromptRejected(f"{self.name}: its chat template refused them: {one_line(again)}") from None
            else:
                raise PromptRejected(f"{self.name}: its chat template refused the messages: {one_line(exc)}") from None
        return torch.tensor([ids], dtype=torch.long)  # (1, T)

    def _distributions(
        self, messages: list[Message], prefix: str, positions: list[int], candidates: list[str]
    ) -> list[dict[str, float]]:
        with self._lock:
            model, tokenizer = self._model, self._tokenizer
            if model is None:
                raise LLMError(f"{self.name} was closed (aclose): create a new LocalChat")
            prompt = self._prompt_ids(messages)[0].tolist()
            prefix_ids, starts = prefix_token_ids(tokenizer, prefix, positions)
            ids = prompt + prefix_ids
            if self.context_length and len(ids) > self.context_length:
                raise PromptRejected(
                    f"{self.name}: the prompt and the answer so far have {len(ids)} tokens, over the model's context "
                    f"of {self.context_length} tokens: score shorter contexts"
                )
            chosen = candidate_token_ids(tokenizer, candidates)
            # Logits at sequence index t predict token t + 1: the read for a prefix token start s is at s - 1.
            rows = [len(prompt) + s - 1 for s in starts]
            if min(rows) < 0:
                raise PromptRejected(f"{self.name}: the chat template gives an empty prompt; nothing predicts offset 0")
            keep = torch.tensor(sorted(set(rows)), device=self.device)  # (K,) the read rows: vocab x T is big
            inputs = {
                "input_ids": torch.tensor([ids], device=self.device),  # (1, T)
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                "use_cache": False,
            }
            try:
                with torch.inference_mode():
                    try:
                        logits = model(**inputs, logits_to_keep=keep).logits[0]  # (K, vocab)
                    except TypeError:  # an architecture without logits_to_keep: every row, then the read ones
                        logits = model(**inputs).logits[0, keep]  # (K, vocab)
            except (RuntimeError, ValueError) as exc:  # out of memory, ...
                raise LLMError(f"{self.name}: the forward pass failed: {one_line(exc)}") from None
            logits = logits.float()
        at = {row: i for i, row in enumerate(keep.tolist())}
        picked = logits[[at[r] for r in rows]][:, list(chosen.values())]  # (P, C)
        # Renormalised over the candidates: softmax of their logits equals p_c / sum of the candidates' p.
        probs = torch.softmax(picked, dim=-1).tolist()  # (P, C)
        names = list(chosen)
        return [dict(zip(names, row, strict=True)) for row in probs]

    def _generate(
        self, messages: list[Message], max_tokens: int, temperature: float, want_logprobs: bool, top_n: int
    ) -> ChatReply:
        with self._lock:
            model, tokenizer = self._model, self._tokenizer
            if model is None:
                raise LLMError(f"{self.name} was closed (aclose): create a new LocalChat")
            prompt = self._prompt_ids(messages).to(self.device)  # (1, T)
            n_prompt = prompt.shape[1]
            if self.context_length and n_prompt + max_tokens > self.context_length:
                raise PromptRejected(
                    f"{self.name}: the prompt has {n_prompt} tokens and max_tokens is {max_tokens}, over the "
                    f"model's context of {self.context_length} tokens: shorten the prompt or lower max_tokens"
                )
            sampling: dict[str, Any] = (
                {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"do_sample": False}
            )
            try:
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=prompt,
                        attention_mask=torch.ones_like(prompt),
                        max_new_tokens=max_tokens,
                        eos_token_id=sorted(self._stop_ids) or None,
                        pad_token_id=_pad_id(tokenizer, self._stop_ids),
                        output_logits=want_logprobs,
                        return_dict_in_generate=True,
                        **sampling,
                    )
            except (RuntimeError, ValueError) as exc:  # out of memory, a bad generation config, ...
                raise LLMError(f"{self.name}: generation failed: {one_line(exc)}") from None
        new = out.sequences[0, n_prompt:].tolist()  # generated ids, the stop token included when reached
        stopped = bool(new) and new[-1] in self._stop_ids
        content = new[:-1] if stopped else new
        tokens = _token_logprobs(tokenizer, out.logits, new, top_n) if want_logprobs else None
        return ChatReply(
            text=tokenizer.decode(content, skip_special_tokens=True),
            model=self.model_name,
            tokens=tokens,
            finish_reason="stop" if stopped else "length",
            prompt_tokens=n_prompt,
            completion_tokens=len(new),
        )


def _check_args(max_tokens: int, temperature: float, top_logprobs: int) -> None:
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top_logprobs}")


def _check_prefill_args(prefix: str, positions: Sequence[int], candidates: Sequence[str]) -> None:
    if not positions:
        raise ValueError("positions: give at least one offset to read at")
    bad = [p for p in positions if not 0 <= p <= len(prefix)]
    if bad:
        raise ValueError(f"positions: offset {bad[0]} is outside the assistant prefix (0 to {len(prefix)})")
    if not candidates or any(not c for c in candidates):
        raise ValueError("candidates: give at least one non-empty candidate string")


def _apply_template(tokenizer: Any, conversation: list[dict[str, str]], template: str | None = None) -> list[int]:
    # sanitize_control_tokens: a feature example that contains "<|im_end|>" stays text, not a turn break.
    ids = tokenizer.apply_chat_template(
        conversation,
        chat_template=template,  # None: the tokenizer's own
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        sanitize_control_tokens=True,
    )
    if hasattr(ids, "input_ids"):  # a BatchEncoding on versions that ignore return_dict=False
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _token_logprobs(
    tokenizer: Any, logits: Sequence[torch.Tensor], ids: list[int], top_n: int
) -> tuple[TokenLogprob, ...]:
    """Per generated token: its logprob under the model and the top_n alternatives (the chosen included)."""
    out: list[TokenLogprob] = []
    for step, token_id in enumerate(ids):
        logp = torch.log_softmax(logits[step][0].float(), dim=-1)  # (vocab,)
        top: dict[str, float] = {}
        if top_n > 0:
            values, indices = logp.topk(top_n)  # (top_n,)
            texts = tokenizer.batch_decode([[i] for i in indices.tolist()])
            for text, value in zip(texts, values.tolist(), strict=True):
                top.setdefault(text, value)  # two ids may decode alike: keep the likelier
        text = tokenizer.decode([token_id])
        chosen = float(logp[token_id])
        if top_n > 0 and text not in top:  # sampling picked a token outside the top_n
            top[text] = chosen
        out.append(TokenLogprob(token=text, logprob=chosen, top=top))
    return tuple(out)


def _stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-turn ids: the model's generation config (e.g. Gemma's <end_of_turn>) and the tokenizer's EOS."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _pad_id(tokenizer: Any, stop_ids: frozenset[int]) -> int | None:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(stop_ids) if stop_ids else None


def _explicit_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return dev


def _load(
    model: str | None,
    gguf_file: str | None,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    progress: bool,
    need_template: bool = True,
) -> tuple[Any, Any]:
    """(model in eval mode on device, tokenizer); ModelError when it cannot load, or has no chat template
    and `need_template`."""
    if is_default(model) and gguf_file is None:
        source: str = str(smollm2_folder(progress=progress))
    else:
        source = str(model)
        path = Path(source).expanduser()
        if source.startswith(("/", ".", "~")) and not path.exists():
            raise ModelError(f"{source} does not exist: {_ALLOWED}")
        if path.suffix.lower() == ".gguf" and gguf_file is None:
            if not path.is_file():
                raise ModelError(f"{source} does not exist: {_ALLOWED}")
            source, gguf_file = str(path.parent), path.name
    if gguf_file is None:
        from trainer.lm.models import load_model

        loaded = load_model(source, device=device, dtype=dtype)
        hf_model, tokenizer = loaded.model, loaded.tokenizer
    else:
        hf_model, tokenizer = _load_gguf(source, gguf_file, device, dtype)
    if need_template and not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"{model or DEFAULT_LLM} has no chat template (no chat_template in its tokenizer files): use an "
            "instruction-tuned chat model, e.g. HuggingFaceTB/SmolLM2-360M-Instruct or the offline default"
        )
    return hf_model, tokenizer


def _load_gguf(source: str, gguf_file: str, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """A GGUF checkpoint dequantized by transformers (needs the gguf package) onto device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    where = f"{source} ({gguf_file})"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        hf_model: Any = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=dtype)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelError(f"{where} could not be loaded as a GGUF chat model: {one_line(exc)}") from None
    hf_model.to(device)
    hf_model.eval()
    hf_model.requires_grad_(False)
    return hf_model, tokenizer
