"""The in-process encoder: text -> model -> SAE -> per-token features, in this process.

`LocalEncoder` loads models and SAEs here (an LRU of at most `max_loaded` (model, SAE) pairs; SAEs
of the same model share one model) and runs forward passes in a single worker thread, so the
event loop stays free. Concurrent requests for the same SAE that arrive within `window_ms` of each
other are collected into one right-padded forward pass (app.encoding.batcher).

Tokenisation follows training exactly (`trainer.data.text`): the text is tokenised without special
tokens and with special-token strings split into ordinary tokens (a literal "<bos>" in user text
is text, as it was in the training corpus), then BOS is prepended once if the SAE was trained with
it. Activations are read with `trainer.lm.sites.harvest`, which stops the forward pass after the
SAE's layer; `encode_multi` reads the sites of several SAEs of one model in one forward pass
(`harvest_many`), stopped after the deepest of them. Errors are those of app.encoding.types.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from app.core.redact import redact_paths
from app.encoding.batcher import Batcher, EncodeJob
from app.encoding.types import EncodeError, EncoderUnavailable, SAETarget, TextEncoding
from trainer.formats.files import SAEFormatError
from trainer.formats.native import load_native
from trainer.lm.errors import ModelError
from trainer.lm.models import LoadedModel, load_model, special_token_ids
from trainer.lm.sites import SiteError, check_site, harvest, harvest_many, site_width
from trainer.saes.base import SAE

log = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_MAX_VALUES = 500_000
"""Values one request's encodings may hold by default (Settings.encode_max_values)."""


@dataclass
class _Entry:
    """A loaded (model, SAE) pair."""

    model: LoadedModel
    sae: SAE
    special_ids: frozenset[int]

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)


def _check_request(texts: list[str], top_k: int | None, features: list[int] | None, max_batch_texts: int) -> None:
    """Checks that need neither model nor SAE."""
    if not isinstance(texts, list) or not texts:
        raise EncodeError("no text given: send at least one non-empty text")
    if len(texts) > max_batch_texts:
        raise EncodeError(f"too many texts: {len(texts)} given, the limit is {max_batch_texts} per request")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EncodeError(f"text {i} is not a string")
        if not text:
            which = "the text" if len(texts) == 1 else f"text {i}"
            raise EncodeError(f"{which} is empty: send at least one character")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise EncodeError(f"top_k must be an integer, got {top_k!r}")
    if top_k is not None and top_k < 1:
        raise EncodeError(f"top_k must be at least 1, got {top_k}")
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in features)
    ):
        raise EncodeError("features must be a list of integer feature indices")


def _check_multi(targets: list[SAETarget]) -> None:
    """Several SAEs can share one forward pass only if they read the same model from the same tokens."""
    if not targets:
        raise EncodeError("no SAE given: name at least one")
    names = [t.name for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EncodeError(f"SAE {repeated[0]!r} is named twice: name each SAE once")
    first = targets[0]
    for t in targets[1:]:
        if t.model != first.model:
            raise EncodeError(
                f"SAEs {first.name!r} and {t.name!r} read different models ({redact_paths(first.model)} and "
                f"{redact_paths(t.model)}): compare SAEs of one model"
            )
        if t.prepend_bos != first.prepend_bos:
            raise EncodeError(
                f"SAEs {first.name!r} and {t.name!r} differ in whether a BOS token starts the text, so they cannot "
                "share one forward pass: compare them one at a time"
            )


def _active_lists(f: Tensor, top_k: int | None) -> list[list[tuple[int, float]]]:
    """(T, d_sae) activations -> per token its active (feature, value) pairs, highest first, at most top_k.

    Only the active entries become Python objects (their number is what the reply cap bounds): a
    dense (T, k) top-k with k the busiest token's count would turn, for one token where every
    feature fires, T x d_sae zeros into Python floats, seconds of work holding the interpreter lock
    and stalling the server's event loop.
    """
    rows, cols = torch.nonzero(f, as_tuple=True)  # (N,) each, row-major
    values = f[rows, cols]  # (N,)
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]  # by token, then by value, highest first
    rows, cols, values = rows[order], cols[order], values[order]
    counts = torch.bincount(rows, minlength=f.shape[0])  # (T,)
    if top_k is not None:
        starts = torch.cumsum(counts, 0) - counts  # (T,)
        keep = torch.arange(len(rows), device=f.device) - starts[rows] < top_k  # rank within the token's row
        cols, values, counts = cols[keep], values[keep], counts.clamp(max=top_k)
    flat = list(zip(cols.tolist(), values.tolist(), strict=True))
    out: list[list[tuple[int, float]]] = []
    start = 0
    for n in counts.tolist():
        out.append(flat[start : start + n])
        start += n
    return out


def _result(result: list[TextEncoding] | EncodeError) -> list[TextEncoding]:
    """A job's encodings, or its error raised."""
    if isinstance(result, EncodeError):
        raise result
    return result


class LocalEncoder:
    """Encodes text with SAEs loaded in this process; see the module docstring.

    max_loaded: (model, SAE) pairs kept loaded (least recently used evicted first; a model is
    dropped when no loaded SAE uses it). max_tokens: tokens per text, BOS included.
    max_batch_texts: texts per request and per forward pass. max_batch_tokens: padded tokens
    (texts x longest text) per forward pass; a larger group is split into several passes.
    min_fill: a text shares a forward pass only with texts at most 1/min_fill times its length (texts
    are taken longest first), so that padding is at most about half of a pass; 0 packs by count and
    token budget only. window_ms: how long the first request of a batch waits for others.
    batching: False runs every request in its own forward pass. device: auto, cpu, cuda or cuda:N.
    max_values: values one request's encodings may hold (over its texts: tokens x active features
    kept, plus tokens x `features` asked for densely); a request over it gets EncodeError, and
    nothing of it is built.
    """

    def __init__(
        self,
        *,
        max_loaded: int = 2,
        max_tokens: int = 1024,
        max_batch_texts: int = 32,
        window_ms: float = 10.0,
        device: str = "auto",
        batching: bool = True,
        max_batch_tokens: int = 16_384,
        min_fill: float = 0.5,
        max_values: int = DEFAULT_MAX_VALUES,
    ) -> None:
        if min(max_loaded, max_tokens, max_batch_texts, max_batch_tokens, max_values) < 1:
            raise ValueError(
                "max_loaded, max_tokens, max_batch_texts, max_batch_tokens and max_values must be at least 1"
            )
        if not 0 <= min_fill <= 1:
            raise ValueError(f"min_fill must be between 0 and 1, got {min_fill}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        self.max_loaded = max_loaded
        self.max_tokens = max_tokens
        self.max_batch_texts = max_batch_texts
        self.max_batch_tokens = max_batch_tokens
        self.max_values = max_values
        self.min_fill = min_fill
        self.window_ms = window_ms
        self.device = device
        self.batching = batching
        self.batches_run = 0
        """Forward passes run so far."""
        self.texts_run = 0
        """Texts encoded so far."""
        self.sae_loads = 0
        """SAE folders loaded so far (a reload after eviction counts again)."""
        self.model_loads = 0
        """Models loaded so far."""
        self._guard = threading.Lock()  # protects the dicts below and the counters
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()  # (path, model) -> pair, LRU order
        self._models: dict[str, LoadedModel] = {}
        self._models_in_flight: dict[str, int] = {}  # model name -> loads of SAEs using it in progress
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        # harvest() hooks the model: two forward passes on one model at once would see each
        # other's hooks, so every forward pass (worker thread or encode_sync) holds this lock.
        self._forward_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jumpscope-encoder")
        self._batcher = Batcher(window_ms=window_ms, max_batch_texts=max_batch_texts)

    # -- public API ---------------------------------------------------------------------------
    async def encode(
        self,
        target: SAETarget,
        texts: list[str],
        *,
        top_k: int | None = None,
        features: list[int] | None = None,
        include_bos: bool = True,
    ) -> list[TextEncoding]:
        """Encode each text with the target SAE: one TextEncoding per text, in order."""
        _check_request(texts, top_k, features, self.max_batch_texts)
        entry = self._peek(target)
        if entry is None:
            entry = await asyncio.to_thread(self._get, target)
        # Tokenising takes milliseconds to a second of CPU: never on the event loop.
        job = await asyncio.to_thread(self._prepare, entry, target, texts, top_k, features, include_bos)
        if not self.batching:
            return _result((await self._in_worker(entry, target, [job]))[0])

        async def run(jobs: list[EncodeJob]) -> list[list[TextEncoding] | EncodeError]:
            return await self._in_worker(entry, target, jobs)

        return await self._batcher.submit(target, job, run)

    async def encode_multi(
        self, targets: list[SAETarget], text: str, *, top_k: int | None = None, include_bos: bool = True
    ) -> list[TextEncoding]:
        """Encode one text with several SAEs of one model: one TextEncoding per target, in order.

        ONE forward pass serves them all, stopped right after the deepest hooked layer
        (trainer.lm.sites.harvest_many); it is not batched with other requests. The targets must
        share the model and the BOS rule (EncodeError otherwise); the reply cap (max_values) holds
        for all of them together. Comparing more SAEs than `max_loaded` works, but reloads SAEs.
        """
        _check_request([text], top_k, None, self.max_batch_texts)
        _check_multi(targets)
        entries: list[_Entry] = []
        for t in targets:
            entry = self._peek(t)
            entries.append(entry if entry is not None else await asyncio.to_thread(self._get, t))
        job = await asyncio.to_thread(self._prepare_multi, entries, targets, text, top_k, include_bos)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run_multi, entries, targets, job)
        except RuntimeError as err:
            if isinstance(err, EncoderUnavailable):
                raise
            raise EncoderUnavailable(f"the encoder is shut down: {err}") from err  # executor closed

    def encode_sync(
        self,
        target: SAETarget,
        texts: list[str],
        *,
        top_k: int | None = None,
        features: list[int] | None = None,
        include_bos: bool = True,
    ) -> list[TextEncoding]:
        """`encode` for scripts and tests: the same code path, run in the calling thread, no collection window."""
        _check_request(texts, top_k, features, self.max_batch_texts)
        entry = self._get(target)
        job = self._prepare(entry, target, texts, top_k, features, include_bos)
        return _result(self._run_jobs(entry, target, [job])[0])

    async def run_loaded(self, target: SAETarget, work: Callable[[LoadedModel, SAE], R]) -> R:
        """work(model, sae) on the target's loaded pair, in the encoder's worker thread under its forward lock:
        the model cache and thread of encoding, for other model work (steering and ablation, app.steering).

        work raises EncodeError for bad input; any other failure becomes EncoderUnavailable (503).
        """
        entry = self._peek(target)
        if entry is None:
            entry = await asyncio.to_thread(self._get, target)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run_work, entry, target, work)
        except RuntimeError as err:
            if isinstance(err, EncoderUnavailable):
                raise
            raise EncoderUnavailable(f"the encoder is shut down: {err}") from err  # executor closed

    def run_loaded_sync(self, target: SAETarget, work: Callable[[LoadedModel, SAE], R]) -> R:
        """`run_loaded` for scripts and tests: the same code path, run in the calling thread."""
        return self._run_work(self._get(target), target, work)

    def _run_work(self, entry: _Entry, target: SAETarget, work: Callable[[LoadedModel, SAE], R]) -> R:
        try:
            with self._forward_lock, torch.inference_mode():
                return work(entry.model, entry.sae)
        except (EncodeError, EncoderUnavailable):
            raise
        except Exception as err:  # out of memory, a model that fails on this input, ...: 503, never a 500
            log.exception("encoder: model work with SAE %s failed", target.name)
            raise EncoderUnavailable(
                f"running SAE {target.name!r} failed: {type(err).__name__}: {redact_paths(str(err))}"
            ) from err

    async def health(self) -> str:
        """'ok': a local encoder is always there (loading errors are per SAE)."""
        return "ok"

    def loaded(self) -> list[tuple[str, str]]:
        """(SAE path, model name) of the loaded pairs, least recently used first."""
        with self._guard:
            return list(self._entries)

    def loaded_models(self) -> list[str]:
        """Names of the loaded models."""
        with self._guard:
            return list(self._models)

    def close(self) -> None:
        """Stop the worker thread (after the forward pass it is running) and drop everything loaded."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._guard:
            self._entries.clear()
            self._models.clear()

    # -- loading ------------------------------------------------------------------------------
    @staticmethod
    def _key(target: SAETarget) -> tuple[str, str]:
        return (str(Path(target.path).expanduser()), target.model)

    def _peek(self, target: SAETarget) -> _Entry | None:
        """The loaded pair if there is one (never blocks on a load)."""
        key = self._key(target)
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def _get(self, target: SAETarget) -> _Entry:
        """The loaded pair for a target, loading it once (blocking; a lock per pair)."""
        key = self._key(target)
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            lock = self._key_locks.setdefault(key, threading.Lock())
            self._models_in_flight[target.model] = self._models_in_flight.get(target.model, 0) + 1
        try:
            with lock:
                entry = self._peek(target)
                if entry is not None:  # another thread loaded it while we waited
                    return entry
                model = self._get_model(target.model)
                sae = self._load_sae(target, model)
                entry = _Entry(model, sae, frozenset(special_token_ids(model.tokenizer)))
                with self._guard:
                    self._entries[key] = entry
                    self.sae_loads += 1
                    while len(self._entries) > self.max_loaded:
                        evicted, _ = self._entries.popitem(last=False)
                        log.info("encoder: evicted SAE %s (model %s)", *evicted)
        finally:
            with self._guard:
                self._models_in_flight[target.model] -= 1
                if not self._models_in_flight[target.model]:
                    del self._models_in_flight[target.model]
                self._prune_models()
        return entry

    def _prune_models(self) -> None:
        """Drop models no loaded SAE uses and no load in progress needs (caller holds _guard)."""
        used = {model for _, model in self._entries} | set(self._models_in_flight)
        unused = [name for name in self._models if name not in used]
        for name in unused:
            del self._models[name]
            log.info("encoder: unloaded model %s", name)
        if unused and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _get_model(self, name: str) -> LoadedModel:
        with self._guard:
            model = self._models.get(name)
            if model is not None:
                return model
            lock = self._model_locks.setdefault(name, threading.Lock())
        with lock:
            with self._guard:
                model = self._models.get(name)
                if model is not None:
                    return model
            try:
                model = load_model(name, device=self.device)
            except ModelError as err:
                raise EncoderUnavailable(f"cannot load model {redact_paths(name)}: {redact_paths(str(err))}") from err
            except Exception as err:  # a broken folder or out of memory: still 503, never a 500
                detail = f"{type(err).__name__}: {redact_paths(str(err))}"
                raise EncoderUnavailable(f"cannot load model {redact_paths(name)}: {detail}") from err
            with self._guard:
                self._models[name] = model
                self.model_loads += 1
            return model

    @staticmethod
    def _load_sae(target: SAETarget, model: LoadedModel) -> SAE:
        """Load and check an SAE against its model; EncoderUnavailable naming the SAE and the reason."""
        where = f"SAE {target.name!r}"  # never the folder: error texts reach callers, host paths must not
        try:
            sae = load_native(target.path, device=model.device).sae
        except SAEFormatError as err:
            raise EncoderUnavailable(f"cannot load {where}: {redact_paths(str(err))}") from err
        try:
            check_site(model.model, target.layer, target.site)
            width = site_width(model.model, target.site)
        except SiteError as err:
            raise EncoderUnavailable(f"{where} does not fit model {redact_paths(target.model)}: {err}") from err
        if sae.cfg.d_in != width:
            raise EncoderUnavailable(
                f"{where} does not fit model {redact_paths(target.model)}: the SAE reads {sae.cfg.d_in}-wide "
                f"activations, the {target.site} site is {width} wide"
            )
        sae.eval()
        sae.requires_grad_(False)
        return sae

    # -- tokenising and validation ------------------------------------------------------------
    def _prepare(
        self,
        entry: _Entry,
        target: SAETarget,
        texts: list[str],
        top_k: int | None,
        features: list[int] | None,
        include_bos: bool,
    ) -> EncodeJob:
        """Check what needs the SAE and tokenizer, and tokenise as in training (trainer.data.text)."""
        d_sae = entry.d_sae
        if top_k is not None and not 1 <= top_k <= d_sae:
            raise EncodeError(f"top_k must be between 1 and {d_sae} (the SAE's width), got {top_k}")
        if features is not None:
            bad = [i for i in features if not 0 <= i < d_sae]
            if bad:
                raise EncodeError(
                    f"feature index {bad[0]} is out of range: this SAE has {d_sae} features (0 to {d_sae - 1})"
                )
        tokenizer = entry.model.tokenizer
        bos_id = tokenizer.bos_token_id
        if target.prepend_bos and bos_id is None:
            raise EncoderUnavailable(
                f"SAE {target.name!r} was trained with BOS but the tokenizer of {redact_paths(target.model)} "
                "has no BOS token"
            )
        encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
        ids_list: list[list[int]] = []
        for i, raw in enumerate(encoded):
            ids = [int(t) for t in raw]
            if bos_id is not None and ids and ids[0] == bos_id:  # some tokenizers add it anyway: never twice
                ids = ids[1:]
            if target.prepend_bos:
                ids = [int(bos_id), *ids]
            which = "the text" if len(texts) == 1 else f"text {i}"
            if not ids:
                raise EncodeError(f"{which} has no tokens")
            if len(ids) > self.max_tokens:
                bos_note = " (BOS included)" if target.prepend_bos else ""
                raise EncodeError(
                    f"{which} has {len(ids)} tokens{bos_note}, over the limit of {self.max_tokens} tokens per text"
                )
            ids_list.append(ids)
        n_tokens = sum(len(ids) - (1 if target.prepend_bos and not include_bos else 0) for ids in ids_list)
        dense = n_tokens * len(features or ())
        if dense > self.max_values:
            raise EncodeError(
                f"the reply would hold {dense:,} dense values ({n_tokens:,} tokens x {len(features or ())} features), "
                f"over this server's limit of {self.max_values:,} values per request: ask for fewer features or texts"
            )
        return EncodeJob(ids_list, target.prepend_bos, top_k, None if features is None else list(features), include_bos,
                         max_values=self.max_values)  # fmt: skip

    def _prepare_multi(
        self, entries: list[_Entry], targets: list[SAETarget], text: str, top_k: int | None, include_bos: bool
    ) -> EncodeJob:
        """One job for all targets (they tokenise alike: same model, same BOS rule): top_k fits every SAE."""
        narrowest = min(entries, key=lambda e: e.d_sae)
        if top_k is not None and not 1 <= top_k <= narrowest.d_sae:
            raise EncodeError(f"top_k must be between 1 and {narrowest.d_sae} (the narrowest SAE's width), got {top_k}")
        return self._prepare(entries[0], targets[0], [text], top_k, None, include_bos)

    def _run_multi(self, entries: list[_Entry], targets: list[SAETarget], job: EncodeJob) -> list[TextEncoding]:
        """One forward pass for every target's site, then each SAE on its own activations (worker thread)."""
        try:
            ids = job.ids[0]
            model = entries[0].model
            input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, T)
            out: list[TextEncoding] = []
            with self._forward_lock, torch.inference_mode():
                xs = harvest_many(model.model, input_ids, None, [(t.layer, t.site) for t in targets])  # (1, T, d_in)
                for entry, x in zip(entries, xs, strict=True):
                    enc = self._encoding(entry, job, ids, x[0])
                    if enc is None:  # over the reply cap, counted over all the SAEs
                        break
                    out.append(enc)
                with self._guard:
                    self.batches_run += 1
                    self.texts_run += 1
        except (EncodeError, EncoderUnavailable):
            raise
        except Exception as err:  # out of memory, a model that fails on this input, ...: 503, never a 500
            names = ", ".join(t.name for t in targets)
            log.exception("encoder: encoding with SAEs %s failed", names)
            raise EncoderUnavailable(
                f"encoding with SAEs {names} failed: {type(err).__name__}: {redact_paths(str(err))}"
            ) from err
        if job.error is not None:
            raise job.error
        return out

    # -- batching (app.encoding.batcher) and the worker thread -------------------------------
    async def _in_worker(
        self, entry: _Entry, target: SAETarget, jobs: list[EncodeJob]
    ) -> list[list[TextEncoding] | EncodeError]:
        """_run_jobs in the worker thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run_jobs, entry, target, jobs)
        except RuntimeError as err:
            if isinstance(err, EncoderUnavailable):
                raise
            raise EncoderUnavailable(f"the encoder is shut down: {err}") from err  # executor closed

    # -- forward passes -----------------------------------------------------------------------
    def _run_jobs(
        self, entry: _Entry, target: SAETarget, jobs: list[EncodeJob]
    ) -> list[list[TextEncoding] | EncodeError]:
        """Encode every text of the jobs: longest first, in forward passes of bounded padded size.

        A job whose reply grows over max_values gets its EncodeError in its place; the others are not affected.
        """
        try:
            return self._run_jobs_unchecked(entry, target, jobs)
        except (EncodeError, EncoderUnavailable):
            raise
        except Exception as err:  # out of memory, a model that fails on this input, ...: 503, never a 500
            log.exception("encoder: encoding with SAE %s failed", target.name)
            raise EncoderUnavailable(
                f"encoding with SAE {target.name!r} failed: {type(err).__name__}: {redact_paths(str(err))}"
            ) from err

    def _run_jobs_unchecked(
        self, entry: _Entry, target: SAETarget, jobs: list[EncodeJob]
    ) -> list[list[TextEncoding] | EncodeError]:
        items = [(j, t) for j, job in enumerate(jobs) for t in range(len(job.ids))]

        def length(item: tuple[int, int]) -> int:
            return len(jobs[item[0]].ids[item[1]])

        items.sort(key=length, reverse=True)
        out: list[list[TextEncoding | None]] = [[None] * len(job.ids) for job in jobs]
        start = 0
        while start < len(items):
            longest = length(items[start])
            per_pass = max(1, min(self.max_batch_texts, self.max_batch_tokens // longest))
            end = start + 1
            while end < len(items) and end - start < per_pass and length(items[end]) >= self.min_fill * longest:
                end += 1
            chunk = items[start:end]
            start = end
            seqs = [jobs[j].ids[t] for j, t in chunk]
            with self._forward_lock, torch.inference_mode():
                x = self._forward(entry, target, seqs)  # (B, T, d_in)
                for row, (j, t) in enumerate(chunk):
                    if jobs[j].error is None:
                        out[j][t] = self._encoding(entry, jobs[j], seqs[row], x[row, : len(seqs[row])])
                with self._guard:
                    self.batches_run += 1
                    self.texts_run += len(chunk)
        return [
            job.error if job.error is not None else [enc for enc in row if enc is not None]
            for job, row in zip(jobs, out, strict=True)
        ]

    @staticmethod
    def _forward(entry: _Entry, target: SAETarget, seqs: list[list[int]]) -> Tensor:
        """Right-padded token ids -> (B, T, d_in) activations at the SAE's site (padding rows are junk)."""
        model = entry.model
        lengths = [len(s) for s in seqs]
        T = max(lengths)
        pad_id = model.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), T), int(pad_id) if pad_id is not None else 0, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        # Causal attention and right padding: a real token never sees a pad, so results do not depend
        # on the batch; without padding, no mask lets the model take its fastest causal path.
        attention = mask.to(model.device) if min(lengths) < T else None
        return harvest(model.model, input_ids.to(model.device), attention, target.layer, target.site)

    @staticmethod
    def _encoding(entry: _Entry, job: EncodeJob, ids: list[int], x: Tensor) -> TextEncoding | None:
        """(T, d_in) activations of one text -> its TextEncoding (reduced at once: never (B, T, d_sae)).

        None, with job.error set, when the job's reply would grow over its value budget.
        """
        sae = entry.sae
        f = sae.encode(x.to(sae.W_enc.dtype))  # (T, d_sae)
        if job.has_bos and not job.include_bos:
            ids, f = ids[1:], f[1:]
        n_active = torch.count_nonzero(f, dim=1)  # (T,)
        if job.top_k is not None:
            n_active = n_active.clamp(max=job.top_k)
        job.values += int(n_active.sum()) + len(ids) * len(job.features or ())
        if job.values > job.max_values:
            job.error = EncodeError(
                f"the reply would hold more than {job.max_values:,} values (this server's limit per request): "
                "ask for top_k (the strongest features per token), fewer texts or shorter ones"
            )
            return None
        activations = _active_lists(f, job.top_k)
        dense: dict[int, list[float]] | None = None
        if job.features is not None:
            cols = f[:, job.features].T.tolist() if job.features else []  # (F, T)
            dense = dict(zip(job.features, cols, strict=True))
        tokenizer: Any = entry.model.tokenizer
        return TextEncoding(
            tokens=list(tokenizer.batch_decode([[i] for i in ids])),
            token_ids=list(ids),
            special=[i in entry.special_ids for i in ids],
            activations=activations,
            dense=dense,
        )
