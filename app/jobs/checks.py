"""What a queued job may ask of the host that runs it: which local data it reads, how many tokens, how much memory.

Every rule is checked twice: when the job is queued (`POST /api/v1/jobs`, with the web server's
settings: a 422 naming the rule and the setting) and when a worker runs it (the runner, with the
worker's own settings, before it reads data or allocates the SAE), since web server and worker may
be different machines with different settings. Messages never name a host path.

Datasets. A job's `dataset` is `packaged` (the packaged corpus), a Hugging Face Hub name (`name` or
`owner/name`: letters, digits, `.`, `_`, `-`), or a local file or folder, which must lie inside
JUMPSCOPE_DATASETS_DIR (`Settings.datasets_dir`); a train job's `activations` (a cache folder) is
always local. A relative local path is taken inside that folder; an absolute one must resolve into
it. Paths are resolved with symlinks followed, so a link that leads out of the folder is refused, and
`..` is refused outright. A string is local when it names something inside the folder or does not
look like a Hub name (a leading `/`, `.` or `~`, a data-file suffix such as `.jsonl`, more than one
`/`); otherwise it is a Hub name. With JUMPSCOPE_DATASETS_DIR unset, jobs may use `packaged` and
Hub names only. At run time a Hub name that also names a file or folder in the worker's working
folder is refused: the data loader would read that instead (trainer.data.text).

Tokens. `tokens` (and a train job's `index_tokens`) at most `Settings.job_max_tokens`.

Memory. An estimate in bytes, float32 throughout, against `Settings.job_max_memory_bytes` (unset:
this machine's physical memory; on a GPU worker the same bound applies to the estimate):

- train: weights and optimiser state, WEIGHT_COPIES (parameters, gradients, Adam's two moments) x 2
  matrices (W_enc, W_dec) x width x d_in x 4 bytes; a batch's latents, ACTIVATION_COPIES x batch_size
  x width x 4 bytes; a batch's inputs, INPUT_COPIES x batch_size x d_in x 4 bytes; the shuffle
  buffer, tokens x d_in x 4 bytes. d_in is not known when the job is queued (the model or cache is
  on the worker), so the queue-time check counts only the terms without d_in (batch_size x width,
  the usual way to ask for terabytes), and the runner checks the whole estimate once the model or
  cache is open, before the SAE is built.
- index: the SAE's weights (2 x d_sae x d_in x 4 bytes), the per-feature examples the statistics
  keep (top_k and band samples, shown and held out, each a window of token ids and values, and the
  context reservoir's flags: trainer.analysis.feature_stats) and a batch of latents; d_in and d_sae
  come from the registered SAE, so both checks are complete.
  A train job that indexes afterwards (`index_tokens`) is checked for that too, with the default
  statistics (STATS_TOP_K, STATS_WINDOW) and width as d_sae; training and indexing run one after the
  other, so each estimate is checked on its own.
- explain: its LLM is the offline default, a model name (Hub id) or a model folder inside
  JUMPSCOPE_DATASETS_DIR, or an http(s) endpoint only if it is the one `Settings.llm_url` names (the API
  key is sent to it, so a job may not choose where). With `baseline: random` it also indexes a random SAE
  of the same shape with the options of the SAE's current index run, so that run's dataset (or harvest
  cache) must pass the dataset rule, its tokens the token limit and the index estimate the memory limit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from app.core.errors import InvalidInput
from app.core.settings import Settings
from app.core.tables import SAERow

PACKAGED = "packaged"
"""The packaged corpus (trainer.data.text.PACKAGED)."""

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_DATA_SUFFIXES = frozenset(
    {".txt", ".jsonl", ".json", ".parquet", ".csv", ".tsv", ".gz", ".zip", ".arrow", ".md", ".xml", ".bz2"}
)
"""Suffixes that make a string a local path (trainer.data.text treats them so)."""

FLOAT_BYTES = 4
WEIGHT_COPIES = 4
"""Training keeps each weight matrix 4 times: parameters, gradients, Adam's first and second moments."""
ACTIVATION_COPIES = 6
"""Per (token, latent) of a training batch: pre-activations, features, the threshold masks of the
straight-through estimator, and the gradients of the first two."""
INPUT_COPIES = 4
"""Per (token, d_in) of a batch: the input, the reconstruction, the error, its gradient."""
INDEX_BATCH_TOKENS = 8 * 1024
"""Tokens of one indexing batch at most (8 sequences of up to 1,024 tokens: app.features.indexer)."""
STATS_BANDS, STATS_BAND_SIZE, STATS_BINS = 5, 5, 50
"""trainer.analysis.feature_stats.StatsConfig's defaults, which index jobs use."""
STATS_TOP_K, STATS_WINDOW = 20, 64
"""StatsConfig's top_k and window, which the indexing after a train job uses."""
STATS_HELDOUT_TOP, STATS_HELDOUT_BAND, STATS_CONTEXTS = 10, 2, 128
"""StatsConfig's held-out examples and context reservoir, which index jobs keep besides."""

DATASET_RULE = (
    "give 'packaged', a Hugging Face Hub dataset name (owner/name) or a file or folder inside the folder "
    "JUMPSCOPE_DATASETS_DIR names (a relative path is taken inside it; '..' is not allowed and symlinks may "
    "not lead out of it)"
)


class JobRejected(InvalidInput):
    """A job that breaks one of the rules above: 422 when queued, a failed job when run."""


# -- datasets ---------------------------------------------------------------------------------------


def is_hub_name(value: str) -> bool:
    """Whether `value` has the form of a Hub dataset name (`name` or `owner/name`), not of a path."""
    return (
        bool(_HUB_NAME.match(value)) and ".." not in value and PurePosixPath(value).suffix.lower() not in _DATA_SUFFIXES
    )


def _has_parent_step(value: str) -> bool:
    return ".." in PurePosixPath(value).parts or ".." in PureWindowsPath(value).parts


def local_path(value: str, root: Path | None, field: str) -> Path:
    """`value` as a local path inside `root`, resolved (symlinks followed); JobRejected otherwise."""
    if root is None:
        raise JobRejected(
            f"params.{field}: local data is off on this server: JUMPSCOPE_DATASETS_DIR is not set "
            "(set it on the web server and the worker to the folder jobs may read, or use 'packaged' or a "
            "Hugging Face Hub dataset name)"
        )
    if _has_parent_step(value):
        raise JobRejected(f"params.{field}: '..' is not allowed in a local path; {DATASET_RULE}")
    try:
        real_root = root.expanduser().resolve()
        path = Path(value).expanduser()
        real = (path if path.is_absolute() else real_root / path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable folder
        raise JobRejected(f"params.{field}: not a usable local path; {DATASET_RULE}") from None
    if not real.is_relative_to(real_root):
        raise JobRejected(f"params.{field}: a local path must lie inside JUMPSCOPE_DATASETS_DIR; {DATASET_RULE}")
    return real


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def job_dataset(value: str | None, root: Path | None, *, at_run: bool = False) -> str | None:
    """What a job's `dataset` may be read as: None or 'packaged', a Hub name, or a resolved path inside root.

    JobRejected for anything else. at_run (in the worker): also refuse a Hub name that names a file or
    folder in the working folder, which the data loader would read instead.
    """
    if value is None or value == PACKAGED:
        return value
    inside_root = root is not None and not _has_parent_step(value) and _exists(root.expanduser() / value)
    if is_hub_name(value) and not inside_root:
        if at_run and _exists(Path(value)):
            raise JobRejected(
                f"params.dataset: {value!r} has the form of a Hub name, but the worker's working folder holds a "
                f"file or folder of that name, which a job may not read; {DATASET_RULE}"
            )
        return value
    return str(local_path(value, root, "dataset"))


def job_model(value: str, root: Path | None, *, at_run: bool = False) -> str:
    """What a train job's `model` may be loaded from: a model name ('gemma3-270m', a Hub id such as
    google/gemma-2-2b) or a model folder inside root, resolved; JobRejected otherwise (the same rule as
    datasets: a job reads no local files outside JUMPSCOPE_DATASETS_DIR)."""
    inside_root = root is not None and not _has_parent_step(value) and _exists(root.expanduser() / value)
    if is_hub_name(value) and not inside_root:
        if at_run and _exists(Path(value)):
            raise JobRejected(
                f"params.model: {value!r} has the form of a model name, but the worker's working folder holds a "
                "file or folder of that name, which a job may not read; give a Hub id or a folder inside "
                "JUMPSCOPE_DATASETS_DIR"
            )
        return value
    return str(local_path(value, root, "model"))


# -- sizes ------------------------------------------------------------------------------------------


def memory_limit(settings: Settings) -> int | None:
    """Settings.job_max_memory_bytes, else this machine's physical memory (None where unknown)."""
    if settings.job_max_memory_bytes is not None:
        return settings.job_max_memory_bytes
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        return None


def train_memory(width: int, batch_size: int, d_in: int | None = None, buffer_tokens: int = 0) -> int:
    """Bytes a training job needs by the estimate of the module docstring (d_in None: its d_in-free part)."""
    total = ACTIVATION_COPIES * FLOAT_BYTES * batch_size * width
    if d_in is not None:
        total += WEIGHT_COPIES * FLOAT_BYTES * (2 * width * d_in + 2 * width + d_in)  # W_enc, W_dec; b_enc, θ, b_dec
        total += INPUT_COPIES * FLOAT_BYTES * batch_size * d_in
        total += FLOAT_BYTES * buffer_tokens * d_in
    return total


def index_memory(d_in: int | None, d_sae: int, top_k: int, window: int) -> int:
    """Bytes an indexing job needs by the estimate of the module docstring (d_in None: its d_in-free part)."""
    example = window * 8 + 32  # window token ids (int32) and values (float32); value, sequence, document, place
    top = (top_k + STATS_HELDOUT_TOP) * example
    bands = (STATS_BANDS + 1) * (STATS_BAND_SIZE + STATS_HELDOUT_BAND) * example
    per_feature = top + bands + (STATS_BINS + 8) * 8 + STATS_CONTEXTS  # + one fired flag per context window
    weights = 2 * FLOAT_BYTES * d_sae * d_in if d_in is not None else 0
    latents = 2 * FLOAT_BYTES * INDEX_BATCH_TOKENS * d_sae
    return weights + d_sae * per_feature + latents


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(needed: int, settings: Settings, what: str, lower: str) -> None:
    """JobRejected when `needed` bytes are over the job memory limit; `lower` says which parameters to lower."""
    limit = memory_limit(settings)
    if limit is not None and needed > limit:
        raise JobRejected(
            f"params: {what} needs about {_size(needed)} of memory by its estimate, over this server's limit of "
            f"{_size(limit)} (JUMPSCOPE_JOB_MAX_MEMORY_BYTES; unset = the machine's memory): lower {lower}"
        )


def check_tokens(settings: Settings, **tokens: int) -> None:
    """JobRejected when a token count is over Settings.job_max_tokens (keyword = the parameter's name)."""
    for name, count in tokens.items():
        if count > settings.job_max_tokens:
            raise JobRejected(
                f"params.{name}: {count:,} tokens is over this server's limit of {settings.job_max_tokens:,} "
                "(JUMPSCOPE_JOB_MAX_TOKENS)"
            )


def check_train_queued(
    *, dataset: str | None, activations: str | None, model: str | None = None, tokens: int, index_tokens: int,
    width: int, batch_size: int, settings: Settings,
) -> None:  # fmt: skip
    """The queue-time checks of a train job (the d_in-free part of the memory estimate)."""
    if model is not None:
        job_model(model, settings.datasets_dir)
    job_dataset(dataset, settings.datasets_dir)
    if activations is not None:
        local_path(activations, settings.datasets_dir, "activations")
    check_tokens(settings, tokens=tokens, index_tokens=index_tokens)
    check_train_memory(settings, width=width, batch_size=batch_size, index_tokens=index_tokens)


def check_train_memory(
    settings: Settings, *, width: int, batch_size: int, index_tokens: int, d_in: int | None = None,
    buffer_tokens: int = 0,
) -> None:  # fmt: skip
    """A train job's memory estimates (d_in None: the parts without it), training and the indexing after it."""
    what = "training" if d_in is None else f"training on {d_in}-wide activations"
    check_memory(train_memory(width, batch_size, d_in, buffer_tokens), settings, what, "width or batch_size")
    if index_tokens:
        needed = index_memory(d_in, width, STATS_TOP_K, STATS_WINDOW)
        check_memory(needed, settings, "indexing the trained SAE", "width, or index_tokens to 0")


def check_index_queued(
    *, dataset: str | None, tokens: int, top_k: int, window: int, d_in: int, d_sae: int, settings: Settings
) -> None:
    """The queue-time checks of an index job (d_in and d_sae from the registered SAE)."""
    job_dataset(dataset, settings.datasets_dir)
    check_tokens(settings, tokens=tokens)
    check_memory(index_memory(d_in, d_sae, top_k, window), settings, "indexing this SAE", "top_k or window")


# -- explain jobs -----------------------------------------------------------------------------------


def job_llm(value: str | None, settings: Settings, *, at_run: bool = False) -> str | None:
    """What an explain job's `llm` may be: None (the offline default), the endpoint Settings.llm_url names,
    a model name or a model folder inside JUMPSCOPE_DATASETS_DIR (resolved); JobRejected otherwise."""
    if value is None:
        return None
    if value.lower().startswith(("http://", "https://")):
        if settings.llm_url is None or value.rstrip("/") != settings.llm_url.rstrip("/"):
            raise JobRejected(
                "params.llm: a queued job may name only the LLM endpoint this server is configured with "
                "(JUMPSCOPE_LLM_URL; unset here), since the API key is sent to it; leave llm out for the offline "
                "default, or run `jumpscope explain --llm URL` from the command line"
            )
        return value
    root = settings.datasets_dir
    inside_root = root is not None and not _has_parent_step(value) and _exists(root.expanduser() / value)
    if "://" not in value and is_hub_name(value) and not inside_root:
        if at_run and _exists(Path(value)):
            raise JobRejected(
                f"params.llm: {value!r} has the form of a model name, but the worker's working folder holds a "
                "file or folder of that name, which a job may not read; give a Hub id or a folder inside "
                "JUMPSCOPE_DATASETS_DIR"
            )
        return value
    return str(local_path(value, root, "llm"))


def check_explain_features(features: list[int] | None, d_sae: int) -> None:
    """JobRejected when a feature index is not one of the SAE's."""
    bad = [f for f in features or () if f >= d_sae]
    if bad:
        raise JobRejected(f"params.features: this SAE has features 0 to {d_sae - 1}; there is no feature {bad[0]}")


def check_baseline_index(
    *, run_dataset: str | None, run_params: dict[str, Any], run_tokens: int, d_in: int, d_sae: int,
    settings: Settings, at_run: bool = False,
) -> str | None:  # fmt: skip
    """The rules of indexing the random baseline like the SAE's index run: its dataset (or harvest cache),
    tokens and memory estimate; returns the dataset as the job may read it."""
    activations = run_params.get("activations")
    dataset = None
    if activations:
        local_path(str(activations), settings.datasets_dir, "activations")
    else:
        try:
            dataset = job_dataset(run_dataset, settings.datasets_dir, at_run=at_run)
        except JobRejected as err:
            raise JobRejected(
                f"the random baseline is indexed like this SAE's index, whose dataset a job may not read: {err}"
            ) from None
    check_tokens(settings, tokens=run_tokens)
    top_k, window = int(run_params.get("top_k", STATS_TOP_K)), int(run_params.get("window", STATS_WINDOW))
    check_memory(
        index_memory(d_in, d_sae, top_k, window), settings, "indexing the random baseline", "its index's top_k"
    )
    return dataset


def check_explain_queued(
    *, sae: SAERow, features: list[int] | None, llm: str | None, baseline: str | None, settings: Settings
) -> None:
    """The queue-time checks of an explain job: an indexed SAE, its feature range, the LLM rule and, with a
    random baseline, the rules of indexing it like the SAE's index run."""
    if sae.index_run is None:
        raise JobRejected(f"params.sae: {sae.name!r} is not indexed yet: index it first (an index job)")
    check_explain_features(features, sae.d_sae)
    job_llm(llm, settings)
    if baseline is not None:
        run = sae.index_run
        check_baseline_index(run_dataset=run.dataset, run_params=run.params or {}, run_tokens=run.tokens,
                             d_in=sae.d_in, d_sae=sae.d_sae, settings=settings)  # fmt: skip
