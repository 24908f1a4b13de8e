"""One prepared GPU check: training-step, encoding and indexing throughput, and sparse == dense on CUDA.

Run it once, from the repository root, on a machine with one NVIDIA GPU (torch, transformers and
tokenizers installed; jumpscope need not be installed, the checkout is put on sys.path):

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json          # everything, at most --budget-s + ~1 min
    python3 benchmarks/gpu_check.py --sections 1,2                     # a subset
    python3 benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json   # CPU-sized shapes, ~15 s (a smoke test)

It needs no network: the data are synthetic, the language model is a randomly initialised Gemma 2
of the real 2B shapes built in memory, and its tokenizer is the offline byte-level BPE of
trainer/lm/tiny_model.py. It writes every figure to --out (default $OUT/gpu_check.json when OUT is
set, else ./gpu_check.json) after every section and every timed configuration, so a run cut short
still leaves its results, and prints a table at the end. An exception in one section (or one
configuration) is recorded there as {"error": ..., "traceback": ...} and the run goes on.
--budget-s (default 330 s) caps the run: a section starts no new configuration once the time left
is what the later sections need, and records the configurations it skipped.

Sections (shapes of the full run; --tiny: d_in 64, widths 256 / 1024, B 256, a 2-layer tiny Gemma 2):

1. Training step, dense vs sparse, fp32 and bf16 autocast: d_in 2304, widths 16,384 and 65,536,
   B 4096, for every registered architecture whose SAE class has `has_sparse_step` (found at run
   time). Per (width, L0 in 16 / 64 / 256, mode, step): the trainer's whole step (x / C, forward
   through `training_step` or `sparse_training_step`, backward, decoder-gradient projection, fused
   Adam, decoder renormalisation, after_step, dead-latent update), warm-up steps, then the median of
   about 10 steps timed with torch.cuda.synchronize. Before every step (untimed) the SAE is set so
   that about L0 latents fire (JumpReLU: per-latent quantile thresholds, as benchmarks/train_step.py;
   architectures with knob k: k = L0; others: b_enc shifted by the same quantiles); the L0 seen is
   reported. Also the dense matmul rate of the step's five matmuls on this device (fp32 as the
   default TF32 setting leaves it, fp32 with TF32, bf16) and the effective fraction
   10 * d_in * d_sae * tokens/s / matmul rate. The trainer runs the sparse step in fp32 even under
   autocast; the sparse step is timed under bf16 autocast too, and recorded as an error if it fails.
2. Sparse == dense on this device (fp32): d_in 2304, width 16,384, B 1024, each sparse architecture
   (JumpReLU with log and raw thresholds), with and without the pre-encoder bias: loss and every
   parameter gradient (max abs / relative difference, pass at rtol 1e-4, atol 1e-5), and the weights
   after 20 Adam steps of each step kind (pass at rtol 1e-4, atol 1e-4, as the CPU test).
3. Encoding: `SAE.encode` tokens/s for every registered architecture, widths 16,384 and 65,536,
   B 4096, fp32 and bf16 autocast.
4. Index statistics: `FeatureStats(16384, StatsConfig(), device).update` with SAE-encoded synthetic
   activations (B 8 x S 1024 x F 16,384, L0 about 64), 20 batches: tokens/s, state size and peak GPU
   memory; the same on the CPU for 2 batches, and the ratio.
5. A randomly initialised Gemma 2 2B (hidden 2304, intermediate 9216, 8 heads, 4 KV heads, head_dim
   256, vocab 256,000, eager attention), bf16, only the 13 layers up to the hooked layer 12:
   harvest tokens/s (`trainer.lm.sites.harvest`, 8 x 1024 tokens per batch), harvest + encode +
   FeatureStats.update by hand, and `trainer.analysis.index_pass.run_index_pass` with a 16,384-wide
   JumpReLU SAE on synthetic documents (the packaged corpus needs gensim; the tokenizer is the tiny
   512-token BPE, so token ids use only the first 512 rows of the real-size embedding).
6. Whole training runs: `Trainer.fit` with --recipe short and step auto, width 16,384, B 4096, 300
   steps on 262k synthetic tokens (looped), dead after two silent batches, JumpReLU with dead_aux 1/32
   in fp32 and bf16 autocast and TopK (k 8, AuxK) in fp32 with and without seed_dead_moments, so
   that the data-start initialisation, the dead-latent bookkeeping, the Adam-moment seeding of newly
   dead latents (fused Adam's state on the device), the recipe's per-element bound on Adam's steps
   (update_clip 3, reading fused Adam's second moments on the device) and JumpReLU's beta1 0.9, and
   the auto switch to the sparse step all run on CUDA; tokens/s of the whole fit, the last training
   line, and FVU / L0 on as many held-out tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: `benchmarks` and `trainer`
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; never wait on a hub that cannot be reached
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from benchmarks.train_step import calibrated_threshold, synthetic_activations
from trainer.analysis.feature_stats import FeatureStats, StatsConfig
from trainer.data.documents import Document
from trainer.saes import registry
from trainer.saes.base import SAE, StepOutput
from trainer.saes.config import SAEConfig
from trainer.saes.jumprelu import JumpReLUSAE
from trainer.training.config import TrainConfig, lr_at, sparsity_at, sparsity_coeff
from trainer.training.malloc import keep_freed_memory
from trainer.training.trainer import estimate_scale

SECTIONS = {
    1: "train_step",
    2: "same_results",
    3: "encode",
    4: "feature_stats",
    5: "lm_index_pass",
    6: "short_recipe_fit",
}
MODES = ("fp32", "bf16")
"""fp32: no autocast; bf16: torch.autocast(bfloat16) around the forward, as TrainConfig.autocast_bf16."""


# -- shapes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shapes:
    d_in: int
    widths: tuple[int, ...]
    batch: int
    l0s: tuple[int, ...]
    warmup: int
    steps: int
    """Timed steps per configuration (fewer when one step is slow, see step_seconds)."""
    step_seconds: float
    """Time the timed steps of one configuration may take together (at least 3 steps)."""
    pool: int
    """Distinct synthetic batches cycled through."""
    check_width: int
    check_batch: int
    check_steps: int
    check_l0: int
    encode_iters: int
    stats_b: int
    stats_s: int
    stats_f: int
    stats_batches: int
    stats_cpu_batches: int
    stats_l0: int
    lm_layers: int
    """Decoder layers built (the hooked layer is the last)."""
    lm_full_layers: int
    """Layers of the real model."""
    lm_context: int
    lm_seqs: int
    lm_batches: int
    index_width: int
    index_l0: int
    fit_width: int
    """Section 6: width of the whole training runs."""
    fit_steps: int
    """Section 6: optimiser steps of each run (batch `batch`)."""
    fit_pool_tokens: int
    """Section 6: distinct synthetic tokens the runs loop over (plus as many held out for evaluation)."""


FULL = Shapes(
    d_in=2304, widths=(16_384, 65_536), batch=4096, l0s=(16, 64, 256), warmup=3, steps=10, step_seconds=2.5,
    pool=4, check_width=16_384, check_batch=1024, check_steps=20, check_l0=64, encode_iters=20,
    stats_b=8, stats_s=1024, stats_f=16_384, stats_batches=20, stats_cpu_batches=2, stats_l0=64,
    lm_layers=13, lm_full_layers=26, lm_context=1024, lm_seqs=8, lm_batches=10, index_width=16_384, index_l0=64,
    fit_width=16_384, fit_steps=300, fit_pool_tokens=262_144,
)  # fmt: skip
TINY = Shapes(
    d_in=64, widths=(256, 1024), batch=256, l0s=(4, 16, 64), warmup=1, steps=2, step_seconds=1.0,
    pool=2, check_width=256, check_batch=128, check_steps=20, check_l0=16, encode_iters=3,
    stats_b=2, stats_s=128, stats_f=256, stats_batches=3, stats_cpu_batches=2, stats_l0=16,
    lm_layers=2, lm_full_layers=2, lm_context=128, lm_seqs=8, lm_batches=2, index_width=256, index_l0=16,
    fit_width=1024, fit_steps=40, fit_pool_tokens=8192,
)  # fmt: skip

SECTION_RESERVE_S = {1: 0.0, 2: 25.0, 3: 20.0, 4: 40.0, 5: 70.0, 6: 60.0}
"""Seconds a section is expected to need (full shapes): earlier sections leave this much for later ones."""


# -- context: device, data, results, time budget -----------------------------------------------
class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.shapes = TINY if args.tiny else FULL
        self.out = Path(args.out)
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget_s
        self.sections: list[int] = args.sections
        self.results: dict[str, Any] = {"meta": meta(self), "sections": {}}
        self._pools: dict[tuple[int, int, int], list[Tensor]] = {}
        self._scales: dict[int, float] = {}

    # time
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reserve_after(self, section: int) -> float:
        """Seconds the selected sections after this one are expected to need."""
        if self.args.tiny:
            return 0.0
        return sum(SECTION_RESERVE_S[s] for s in self.sections if s > section)

    def out_of_time(self, section: int) -> bool:
        """Whether the section should start no new configuration."""
        return time.perf_counter() > self.deadline - self.reserve_after(section)

    # data
    def pool(self, d_in: int, batch: int, n: int) -> list[Tensor]:
        """n distinct (batch, d_in) raw synthetic LM-like batches on the device (fp32)."""
        key = (d_in, batch, n)
        if key not in self._pools:
            raw = synthetic_activations(d_in, batch * n, seed=self.args.seed)
            self._pools[key] = [b.to(self.device) for b in raw.split(batch)]
            self._scales.setdefault(d_in, estimate_scale(raw))
        return self._pools[key]

    def scale(self, d_in: int) -> float:
        """The trainer's normalisation C = sqrt(mean ||x||^2) of the synthetic data."""
        if d_in not in self._scales:
            self.pool(d_in, 1024, 1)
        return self._scales[d_in]

    def drop_pools(self) -> None:
        self._pools.clear()
        free_memory(self.device, collect=True)

    # results
    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=_json_default) + "\n")
        tmp.replace(self.out)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def meta(ctx: Ctx) -> dict[str, Any]:
    import transformers

    dev = ctx.device
    info: dict[str, Any] = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor()})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "tiny": ctx.args.tiny,
        "shapes": asdict(ctx.shapes),
        "sections": [SECTIONS[s] for s in ctx.sections],
        "budget_s": ctx.args.budget_s,
        "architectures": {name: _has_sparse_step(name) for name in registry.names()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device, collect: bool = False) -> None:
    """Return cached device memory; collect=True also runs the garbage collector (0.2 s with transformers loaded)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def error_entry(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-6000:]}


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager[Any]:
    if mode == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# -- SAEs ---------------------------------------------------------------------------------------
def _has_sparse_step(name: str) -> bool:
    return bool(registry.get(name).sae_class().has_sparse_step)


def sparse_architectures() -> list[str]:
    """Every registered architecture whose SAE class has a sparse training step (decided at run time)."""
    return [name for name in registry.names() if _has_sparse_step(name)]


def make_sae(ctx: Ctx, arch: str, d_sae: int, target_l0: int, **overrides: Any) -> SAE:
    """A fresh training-form SAE on the device, initialised there (seeded); knob-k architectures get k = L0."""
    fields: dict[str, Any] = {"d_in": ctx.shapes.d_in, "d_sae": d_sae, "architecture": arch, **overrides}
    if registry.get(arch).knob == "k":
        fields["k"] = target_l0
    torch.manual_seed(ctx.args.seed)
    with ctx.device:
        sae = registry.build_sae(SAEConfig(**fields))
    sae.dead_tokens = TrainConfig().dead_tokens
    return sae


def set_threshold(sae: JumpReLUSAE, threshold: Tensor) -> None:
    with torch.no_grad():
        if sae.cfg.threshold_param == "log":
            sae.log_threshold.copy_(threshold.log())
        else:
            sae.raw_threshold.copy_(threshold)


@torch.no_grad()
def calibrate(sae: SAE, x: Tensor, target_l0: int) -> None:
    """Set the SAE so that about target_l0 latents fire per token of x (normalised units).

    JumpReLU: per-latent thresholds at the quantile of the pre-activations that target_l0 / d_sae of
    the tokens exceed (benchmarks/train_step.py). Knob-k architectures: nothing (k = L0 already).
    Others (ReLU, Gated, later ones): b_enc lowered by the same per-latent quantile, so that the
    pre-activation (or gate) is positive for about that fraction of the tokens.
    """
    if registry.get(sae.cfg.architecture).knob == "k":
        return
    pre = sae.pre_acts(x.float())  # (B, d_sae)
    if isinstance(sae, JumpReLUSAE):
        set_threshold(sae, calibrated_threshold(pre, target_l0))
        return
    n, d_sae = pre.shape
    keep = max(1, min(n - 1, round(n * target_l0 / d_sae)))
    sae.b_enc.sub_(pre.kthvalue(n - keep, dim=0).values)


def make_optimizer(sae: SAE, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam as Trainer._fit builds it (fused on CPU and CUDA)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=fused)


def train_step(
    sae: SAE,
    optimizer: torch.optim.Optimizer,
    raw: Tensor,
    scale: float,
    step: int,
    cfg: TrainConfig,
    coeff: float,
    kind: str,
    mode: str,
) -> StepOutput:
    """One optimiser step, as the inner loop of Trainer._fit does it (one process, no clip)."""
    x = raw / scale  # (B, d_in): the batch is already on the device (see h2d_copy_ms)
    lam = sparsity_at(step, coeff, cfg, sae.cfg.architecture)
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(raw.device, mode):
        out = sae.sparse_training_step(x, lam) if kind == "sparse" else sae.training_step(x, lam)
    out.loss.backward()
    sae.project_decoder_grad()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.normalize_decoder()
    sae.after_step()
    fired = out.active.any(0).to(torch.int32) > 0  # (d_sae,); all_reduce_sum is a no-op in one process
    sae.update_dead(fired, raw.shape[0])
    return out


# -- matmul rates -------------------------------------------------------------------------------
def matmul_rates(ctx: Ctx, d_sae: int, dtype: torch.dtype, tf32: bool | None = None) -> dict[str, Any]:
    """FLOP/s of the five dense matmuls of an SAE step (the layouts autograd uses), best of 3 rounds."""
    dev, b, d_in = ctx.device, ctx.shapes.batch, ctx.shapes.d_in
    g = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, device=dev, dtype=dtype)

    x, w_enc, w_dec, f, g_out = rand(b, d_in), rand(d_in, d_sae), rand(d_sae, d_in), rand(b, d_sae), rand(b, d_in)
    ops: dict[str, Callable[[], Tensor]] = {
        "x @ W_enc": lambda: x @ w_enc,
        "f @ W_dec": lambda: f @ w_dec,
        "g @ W_dec^T": lambda: g_out @ w_dec.T,
        "f^T @ g": lambda: f.T @ g_out,
        "x^T @ g_pre": lambda: x.T @ f,
    }
    flops = 2.0 * b * d_in * d_sae
    reps = 1 if ctx.args.tiny else 5
    previous = torch.backends.cuda.matmul.allow_tf32
    best: dict[str, float] = {}
    try:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        for name, op in ops.items():
            op()
            sync(dev)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(reps):
                    op()
                sync(dev)
                times.append((time.perf_counter() - t0) / reps)
            best[name] = min(times)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return {
        "combined_flops": 5 * flops / sum(best.values()),
        "per_op_flops": {name: flops / t for name, t in best.items()},
    }


# -- section 1: the training step ---------------------------------------------------------------
def section_train_step(ctx: Ctx, out: dict[str, Any]) -> None:
    sh, dev = ctx.shapes, ctx.device
    archs = sparse_architectures()
    out["architectures"] = archs
    out["not_timed"] = [a for a in registry.names() if a not in archs]
    out["notes"] = (
        "tokens/s of the whole trainer step with the batch already on the device (h2d_copy_ms is the extra "
        "cost of a pageable host batch); frac = 10 * d_in * d_sae * tokens/s / the combined matmul rate of "
        "the mode's dtype (fp32 rate at the default TF32 setting); ratio = sparse tokens/s / dense tokens/s "
        "in the same mode; the trainer runs the sparse step in fp32 even under autocast."
    )
    pool = ctx.pool(sh.d_in, sh.batch, sh.pool)
    scale = ctx.scale(sh.d_in)
    out["scale"] = scale
    out["h2d_copy_ms"] = h2d_copy_ms(ctx, pool[0])
    rates: dict[str, Any] = out.setdefault("matmul", {})
    rows: list[dict[str, Any]] = out.setdefault("rows", [])
    skipped: list[str] = out.setdefault("skipped", [])
    for d_sae in sh.widths:
        if ctx.out_of_time(1):
            skipped.append(f"matmul rates d_sae={d_sae}")
        else:
            entry: dict[str, Any] = {}
            for label, dtype, tf32 in (
                ("fp32", torch.float32, None),
                ("fp32_tf32", torch.float32, True),
                ("bf16", torch.bfloat16, None),
            ):
                if label == "fp32_tf32" and dev.type != "cuda":
                    continue
                try:
                    entry[label] = matmul_rates(ctx, d_sae, dtype, tf32)
                except Exception as exc:
                    entry[label] = error_entry(exc)
                free_memory(dev)
            rates[str(d_sae)] = entry
            print(
                f"  matmul rate d_sae={d_sae}: "
                + ", ".join(
                    f"{k} {v['combined_flops'] / 1e12:.1f} TFLOP/s" for k, v in entry.items() if "error" not in v
                ),
                flush=True,
            )
            ctx.save()
    # JumpReLU first, at every width, so that a tight budget still measures the paper's SAE everywhere.
    for arch in sorted(archs, key=lambda a: a != "jumprelu"):
        for d_sae in sh.widths:
            for l0 in sh.l0s:
                if l0 >= d_sae:
                    continue
                group: list[dict[str, Any]] = []
                for mode in MODES:
                    for kind in ("dense", "sparse"):
                        label = f"{arch} d_sae={d_sae} L0={l0} {mode} {kind}"
                        if ctx.out_of_time(1):
                            skipped.append(label)
                            continue
                        row = time_config(ctx, arch, d_sae, l0, mode, kind, pool, scale)
                        _add_fractions(row, rates.get(str(d_sae), {}), sh.d_in, d_sae)
                        _add_ratios([*group, row])
                        group.append(row)
                        rows.append(row)
                        print("  " + _step_line(row), flush=True)
                        ctx.save()
    if skipped:
        print(f"  skipped for time: {len(skipped)} configurations", flush=True)


def h2d_copy_ms(ctx: Ctx, batch: Tensor) -> dict[str, float] | None:
    """Median ms to copy one (B, d_in) fp32 batch from pageable and from pinned host memory."""
    if ctx.device.type != "cuda":
        return None
    host = batch.cpu()
    result: dict[str, float] = {}
    for label, src in (("pageable", host), ("pinned", host.pin_memory())):
        times = []
        for _ in range(5):
            sync(ctx.device)
            t0 = time.perf_counter()
            src.to(ctx.device, non_blocking=True)
            sync(ctx.device)
            times.append(time.perf_counter() - t0)
        result[label] = statistics.median(times) * 1e3
    return result


def time_config(
    ctx: Ctx, arch: str, d_sae: int, l0: int, mode: str, kind: str, pool: list[Tensor], scale: float
) -> dict[str, Any]:
    sh, dev = ctx.shapes, ctx.device
    row: dict[str, Any] = {"arch": arch, "d_sae": d_sae, "target_l0": l0, "mode": mode, "step": kind}
    sae: SAE | None = None
    optimizer: torch.optim.Optimizer | None = None
    out: StepOutput | None = None
    try:
        free_memory(dev)
        reset_peak(dev)
        sae = make_sae(ctx, arch, d_sae, l0)
        cfg = TrainConfig(batch_size=sh.batch)
        if sae.b_dec_init == "mean":  # as the trainer starts b_dec for TopK
            with torch.no_grad():
                sae.b_dec.copy_(torch.cat(pool).mean(0) / scale)
        optimizer = make_optimizer(sae, cfg, dev)
        coeff = sparsity_coeff(sae.cfg, cfg)
        step = 0
        warm_times = []
        for _ in range(sh.warmup):
            raw = pool[step % len(pool)]
            calibrate(sae, raw / scale, l0)
            sync(dev)
            t0 = time.perf_counter()
            out = train_step(sae, optimizer, raw, scale, step, cfg, coeff, kind, mode)
            sync(dev)
            warm_times.append(time.perf_counter() - t0)
            step += 1
            if len(warm_times) >= 2 and sum(warm_times) > sh.step_seconds:
                break  # a slow step: two warm-up steps are enough
        last = warm_times[-1] if warm_times else 0.0
        n_timed = max(1 if ctx.args.tiny else 3, min(sh.steps, int(sh.step_seconds / max(last, 1e-9))))
        times, l0s = [], []
        for _ in range(n_timed):
            raw = pool[step % len(pool)]
            calibrate(sae, raw / scale, l0)  # untimed: pin L0 near the target
            sync(dev)
            t0 = time.perf_counter()
            out = train_step(sae, optimizer, raw, scale, step, cfg, coeff, kind, mode)
            sync(dev)
            times.append(time.perf_counter() - t0)
            l0s.append(float(out.active.sum()) / raw.shape[0])
            step += 1
        median = statistics.median(times)
        row.update(
            ms=median * 1e3,
            ms_min=min(times) * 1e3,
            ms_all=[round(t * 1e3, 3) for t in times],
            first_warmup_ms=warm_times[0] * 1e3 if warm_times else None,
            tokens_per_s=sh.batch / median,
            l0=statistics.fmean(l0s),
            loss=float(out.loss.detach()) if out is not None else None,
            peak_gib=peak_gib(dev),
        )
    except Exception as exc:
        row.update(error_entry(exc))
    finally:
        del sae, optimizer, out
        free_memory(dev)
    return row


def _add_fractions(row: dict[str, Any], rates: dict[str, Any], d_in: int, d_sae: int) -> None:
    if "tokens_per_s" not in row:
        return
    achieved = 10.0 * d_in * d_sae * row["tokens_per_s"]
    for label in ("fp32", "bf16", "fp32_tf32"):
        rate = rates.get(label, {}).get("combined_flops")
        if rate:
            row[f"frac_vs_{label}"] = achieved / rate
    row["frac"] = row.get(f"frac_vs_{row['mode']}")


def _add_ratios(group: list[dict[str, Any]]) -> None:
    """Sparse rows of one (arch, d_sae, L0): tokens/s over the dense step's in the same mode (ratio) and
    over the dense bf16 step's (ratio_vs_dense_bf16: the trainer's other choice under autocast)."""
    dense = {r["mode"]: r["tokens_per_s"] for r in group if r["step"] == "dense" and "tokens_per_s" in r}
    for row in group:
        if row["step"] != "sparse" or "tokens_per_s" not in row:
            continue
        if row["mode"] in dense:
            row["ratio"] = row["tokens_per_s"] / dense[row["mode"]]
        if "bf16" in dense:
            row["ratio_vs_dense_bf16"] = row["tokens_per_s"] / dense["bf16"]


def _fmt(value: Any, spec: str, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}{spec}}"


def _step_line(row: dict[str, Any]) -> str:
    head = f"{row['arch']:<9}{row['d_sae']:>7} L0 {row['target_l0']:>4} {row['mode']:<5}{row['step']:<7}"
    if "error" in row:
        return head + " ERROR " + row["error"].splitlines()[0][:150]
    return (
        head
        + f"{row['ms']:>9.2f} ms {row['tokens_per_s']:>12,.0f} tok/s  L0 {row['l0']:>7.1f}  frac "
        + _fmt(row.get("frac"), ".3f", 6)
        + "  ratio "
        + _fmt(row.get("ratio"), ".2f", 5)
    )


# -- section 2: sparse == dense on this device --------------------------------------------------
def _diff(a: Tensor, b: Tensor, rtol: float, atol: float) -> dict[str, Any]:
    """a (sparse) against b (dense): max abs diff, max abs diff over max |b|, elementwise allclose."""
    a, b = a.double(), b.double()
    abs_diff = (a - b).abs()
    bound = atol + rtol * b.abs()
    return {
        "max_abs": float(abs_diff.max()) if abs_diff.numel() else 0.0,
        "max_rel": float(abs_diff.max() / b.abs().max().clamp_min(1e-30)) if abs_diff.numel() else 0.0,
        "violations": int((abs_diff > bound).sum()),
        "pass": bool((abs_diff <= bound).all()),
    }


def _loss_and_grads(sae: SAE, x: Tensor, kind: str, coeff: float) -> tuple[Tensor, dict[str, Tensor]]:
    sae.zero_grad(set_to_none=True)
    out = sae.sparse_training_step(x, coeff) if kind == "sparse" else sae.training_step(x, coeff)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in sae.named_parameters() if p.grad is not None}
    sae.zero_grad(set_to_none=True)
    return out.loss.detach(), grads


def section_same_results(ctx: Ctx, out: dict[str, Any]) -> None:
    sh, dev = ctx.shapes, ctx.device
    archs = sparse_architectures()
    out["architectures"] = archs
    out["shape"] = {"d_in": sh.d_in, "d_sae": sh.check_width, "batch": sh.check_batch, "dtype": "fp32"}
    out["tolerance"] = {"grads": {"rtol": 1e-4, "atol": 1e-5}, "weights_after_steps": {"rtol": 1e-4, "atol": 1e-4}}
    pool = [b[: sh.check_batch] for b in ctx.pool(sh.d_in, sh.batch, sh.pool)]
    scale = ctx.scale(sh.d_in)
    rows: list[dict[str, Any]] = out.setdefault("rows", [])
    for pre_enc_bias in (True, False):  # every architecture's default first, should time run short
        for arch in archs:
            variants: list[dict[str, Any]] = [{}]
            if issubclass(registry.get(arch).sae_class(), JumpReLUSAE):
                variants.append({"threshold_param": "raw"})
            for variant in variants:
                label = f"{arch} {variant or ''} pre_enc_bias={pre_enc_bias}"
                if ctx.out_of_time(2):
                    out.setdefault("skipped", []).append(label)
                    continue
                row: dict[str, Any] = {"arch": arch, "variant": variant, "use_pre_enc_bias": pre_enc_bias}
                try:
                    check_variant(ctx, row, arch, {**variant, "use_pre_enc_bias": pre_enc_bias}, pool, scale)
                except Exception as exc:
                    row.update(error_entry(exc))
                free_memory(dev)
                rows.append(row)
                print("  " + _check_line(row), flush=True)
                ctx.save()
    out["all_pass"] = all(r.get("pass") for r in rows) if rows else None


def check_variant(
    ctx: Ctx, row: dict[str, Any], arch: str, overrides: dict[str, Any], pool: list[Tensor], scale: float
) -> None:
    sh, dev = ctx.shapes, ctx.device
    sae = make_sae(ctx, arch, sh.check_width, sh.check_l0, **overrides)
    x = pool[0] / scale  # (B, d_in)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1 * float(x.std()))
        sae.b_enc.normal_(0, 0.1 * float(sae.pre_acts(x).std()))
    calibrate(sae, x, sh.check_l0)
    coeff = 0.01  # as tests/trainer/saes/test_sparse_step.py
    with torch.no_grad():
        probe = sae.training_step(x, coeff)
        row["l0"] = float(probe.active.sum()) / x.shape[0]
        if isinstance(sae, JumpReLUSAE):
            pre = sae.pre_acts(x)
            row["bandwidth"] = sae.cfg.bandwidth
            row["in_window"] = int(((pre - sae.threshold).abs() < sae.cfg.bandwidth / 2).sum())
    dense_loss, dense = _loss_and_grads(sae, x, "dense", coeff)
    sparse_loss, sparse = _loss_and_grads(sae, x, "sparse", coeff)
    row["loss"] = {
        "dense": float(dense_loss),
        "sparse": float(sparse_loss),
        **_diff(sparse_loss, dense_loss, 1e-4, 1e-5),
    }
    grads: dict[str, Any] = {}
    for name in sorted(dense.keys() | sparse.keys()):
        if name not in dense or name not in sparse:
            grads[name] = {
                "pass": False,
                "error": f"gradient only in the {'dense' if name in dense else 'sparse'} step",
            }
            continue
        grads[name] = _diff(sparse[name], dense[name], 1e-4, 1e-5)
    row["grads"] = grads
    row["grads_pass"] = row["loss"]["pass"] and all(g["pass"] for g in grads.values())
    del dense, sparse

    # 20 optimiser steps of each kind from the same start on the same batches (the CPU test's recipe)
    cfg = TrainConfig(batch_size=sh.check_batch, lr=1e-3, lr_warmup_steps=5, sparsity_warmup_steps=5)
    weights: dict[str, dict[str, Tensor]] = {}
    losses: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    # "dense-nudged": the dense step on the data times (1 + 1e-6), the yardstick of how far float noise alone
    # carries 20 steps (entries cross thresholds and top-k boundaries, Adam turns tiny gradients into full steps).
    for kind in ("dense", "dense-nudged", "sparse"):
        model = copy.deepcopy(sae)
        optimizer = make_optimizer(model, cfg, dev)
        losses[kind] = []
        sync(dev)
        t0 = time.perf_counter()
        nudge = 1 + 1e-6 if kind == "dense-nudged" else 1.0
        for step in range(sh.check_steps):
            batch = pool[step % len(pool)] * nudge
            out = train_step(model, optimizer, batch, scale, step, cfg, coeff, kind.split("-")[0], "fp32")
            losses[kind].append(float(out.loss.detach()))
        seconds[kind] = time.perf_counter() - t0
        weights[kind] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        del model, optimizer
    after = {
        name: _diff(weights["sparse"][name].float(), weights["dense"][name].float(), 1e-4, 1e-4)
        for name in weights["dense"]
        if weights["dense"][name].is_floating_point()
    }
    dense = weights["dense"]

    def norm_rel(kind: str) -> float:
        """The largest per-parameter ||w_kind - w_dense|| / ||w_dense||."""
        return max(
            float((weights[kind][n].double() - dense[n].double()).norm() / dense[n].double().norm().clamp_min(1e-30))
            for n in dense
            if dense[n].is_floating_point()
        )

    sparse_rel, nudged_rel = norm_rel("sparse"), norm_rel("dense-nudged")
    row["after_steps"] = {
        "steps": sh.check_steps,
        "params": after,
        "max_rel": max(d["max_rel"] for d in after.values()),
        "elementwise_pass": all(d["pass"] for d in after.values()),
        "norm_rel_sparse": sparse_rel,
        "norm_rel_dense_nudged": nudged_rel,
        # exact within tolerance, or closer to the dense run than float noise (a 1e-6 nudge) takes it
        "pass": all(d["pass"] for d in after.values()) or sparse_rel <= nudged_rel,
        "final_loss": {k: v[-1] for k, v in losses.items()},
        "seconds": seconds,
    }
    row["pass"] = row["grads_pass"] and row["after_steps"]["pass"]


def _check_line(row: dict[str, Any]) -> str:
    variant = json.dumps(row["variant"]) if row["variant"] else ""
    head = f"{row['arch']:<9}{variant:<28}pre_enc_bias={row['use_pre_enc_bias']!s:<6}"
    if "error" in row:
        return head + "ERROR " + row["error"].splitlines()[0][:150]
    name, worst = max(row["grads"].items(), key=lambda kv: kv[1].get("max_rel", math.inf))
    return (
        head
        + f"{'PASS' if row['pass'] else 'FAIL'}  L0 {row['l0']:.1f}  loss rel {row['loss']['max_rel']:.1e}  "
        + f"worst grad {name} abs {worst.get('max_abs', math.nan):.1e} rel {worst.get('max_rel', math.nan):.1e}  "
        + f"weights after {row['after_steps']['steps']} steps rel {row['after_steps']['max_rel']:.1e} "
        + f"(norm {row['after_steps']['norm_rel_sparse']:.1e}; a 1e-6 nudge: "
        + f"{row['after_steps']['norm_rel_dense_nudged']:.1e})"
    )


# -- section 3: encoding ------------------------------------------------------------------------
def section_encode(ctx: Ctx, out: dict[str, Any]) -> None:
    sh, dev = ctx.shapes, ctx.device
    pool = ctx.pool(sh.d_in, sh.batch, sh.pool)
    scale = ctx.scale(sh.d_in)
    rows: list[dict[str, Any]] = out.setdefault("rows", [])
    out["notes"] = (
        "SAE.encode under torch.no_grad on normalised input; L0 about 64; frac = 2 d_in d_sae tok/s / matmul rate"
    )
    rates = ctx.results["sections"].get(SECTIONS[1], {}).get("matmul", {})
    l0 = sh.l0s[1]
    for d_sae in sh.widths:
        for arch in registry.names():
            for mode in MODES:
                if ctx.out_of_time(3):
                    out.setdefault("skipped", []).append(f"{arch} {d_sae} {mode}")
                    continue
                row: dict[str, Any] = {"arch": arch, "d_sae": d_sae, "mode": mode}
                sae: SAE | None = None
                try:
                    sae = make_sae(ctx, arch, d_sae, l0)
                    calibrate(sae, pool[0] / scale, l0)
                    xs = [b / scale for b in pool]
                    times = []
                    with torch.no_grad(), autocast(dev, mode):
                        f = sae.encode(xs[0])
                        row["l0"] = float((f > 0).sum()) / f.shape[0]
                        row["out_dtype"] = str(f.dtype)
                        del f
                        sync(dev)
                        for i in range(sh.encode_iters):
                            t0 = time.perf_counter()
                            sae.encode(xs[i % len(xs)])
                            sync(dev)
                            times.append(time.perf_counter() - t0)
                    median = statistics.median(times)
                    row.update(ms=median * 1e3, tokens_per_s=sh.batch / median)
                    rate = rates.get(str(d_sae), {}).get(mode, {}).get("per_op_flops", {}).get("x @ W_enc")
                    if rate:
                        row["frac"] = 2.0 * sh.d_in * d_sae * row["tokens_per_s"] / rate
                except Exception as exc:
                    row.update(error_entry(exc))
                finally:
                    del sae
                    free_memory(dev)
                rows.append(row)
                print("  " + _encode_line(row), flush=True)
        ctx.save()


def _encode_line(row: dict[str, Any]) -> str:
    head = f"{row['arch']:<9}{row['d_sae']:>7} {row['mode']:<5}"
    if "error" in row:
        return head + " ERROR " + row["error"].splitlines()[0][:150]
    return (
        head
        + f"{row['ms']:>9.3f} ms {row['tokens_per_s']:>14,.0f} tok/s  L0 {row['l0']:>6.1f}  frac "
        + _fmt(row.get("frac"), ".3f", 6)
    )


# -- section 4: FeatureStats --------------------------------------------------------------------
def stats_batch_meta(
    b: int, s: int, batch_index: int, vocab: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """(token_ids, doc_ids, special), each (B, S): documents of 300 tokens, BOS at 0 and EOS ending each document."""
    g = torch.Generator().manual_seed(batch_index)
    token_ids = torch.randint(0, vocab, (b, s), generator=g)
    pos = torch.arange(b * s).view(b, s) + batch_index * b * s
    doc_ids = pos // 300
    special = (pos % 300) == 299
    special[:, 0] = True
    return token_ids.to(device), doc_ids.to(device), special.to(device)


def section_feature_stats(ctx: Ctx, out: dict[str, Any]) -> None:
    sh, dev = ctx.shapes, ctx.device
    b, s, f_width = sh.stats_b, sh.stats_s, sh.stats_f
    out["shape"] = {"B": b, "S": s, "F": f_width, "batches": sh.stats_batches, "cpu_batches": sh.stats_cpu_batches}
    out["stats_config"] = asdict(StatsConfig())
    raw_pool = ctx.pool(sh.d_in, b * s, 2)
    scale = ctx.scale(sh.d_in)
    sae = make_sae(ctx, "jumprelu", f_width, sh.stats_l0)
    calibrate(sae, raw_pool[0] / scale, sh.stats_l0)
    with torch.no_grad():
        acts = [sae.encode(r / scale).view(b, s, f_width) for r in raw_pool]  # (B, S, F) fp32 each
    del sae
    out["l0"] = float((acts[0] > 0).sum()) / (b * s)
    metas = [stats_batch_meta(b, s, i, 256_000, dev) for i in range(max(sh.stats_batches, 2))]

    # warm-up (kernels, allocator) on a throw-away instance
    warm = FeatureStats(f_width, StatsConfig(), dev)
    warm.update(acts[0], *metas[0])
    sync(dev)
    del warm
    free_memory(dev)
    reset_peak(dev)
    base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    stats = FeatureStats(f_width, StatsConfig(), dev)
    out["state_gib"] = stats.nbytes() / 2**30
    sync(dev)
    t0 = time.perf_counter()
    n = 0
    for i in range(sh.stats_batches):
        stats.update(acts[i % 2], *metas[i])
        n += 1
        if ctx.out_of_time(4) and i >= 2:
            out["cut_short"] = True
            break
    sync(dev)
    seconds = time.perf_counter() - t0
    out["device_batches"] = n
    out["device_tokens_per_s"] = n * b * s / seconds
    out["device_ms_per_batch"] = seconds / n * 1e3
    if dev.type == "cuda":
        out["peak_gib"] = peak_gib(dev)
        out["peak_above_inputs_gib"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**30
    t0 = time.perf_counter()
    stats.result()
    out["result_s"] = time.perf_counter() - t0
    print(
        f"  {dev.type}: {out['device_tokens_per_s']:,.0f} tok/s ({out['device_ms_per_batch']:.1f} ms/batch), "
        f"state {out['state_gib']:.3f} GiB, peak {out.get('peak_gib')} GiB, L0 {out['l0']:.1f}",
        flush=True,
    )
    del stats
    free_memory(dev)
    ctx.save()

    # the same on the CPU
    acts_cpu = [a.cpu() for a in acts]
    del acts
    free_memory(dev)
    metas_cpu = [tuple(t.cpu() for t in m) for m in metas[: sh.stats_cpu_batches]]
    cpu_stats = FeatureStats(f_width, StatsConfig(), "cpu")
    t0 = time.perf_counter()
    for i, (tok, doc, special) in enumerate(metas_cpu):
        cpu_stats.update(acts_cpu[i % 2], tok, doc, special)
    seconds = time.perf_counter() - t0
    out["cpu_threads"] = torch.get_num_threads()
    out["cpu_tokens_per_s"] = len(metas_cpu) * b * s / seconds
    out["cpu_ms_per_batch"] = seconds / len(metas_cpu) * 1e3
    out["device_over_cpu"] = out["device_tokens_per_s"] / out["cpu_tokens_per_s"]
    print(
        f"  cpu ({out['cpu_threads']} threads): {out['cpu_tokens_per_s']:,.0f} tok/s; "
        f"{dev.type} / cpu = {out['device_over_cpu']:.1f}x",
        flush=True,
    )


# -- section 5: a random Gemma 2 2B: harvest and the index pass ---------------------------------
def gemma2_config(sh: Shapes, vocab_size: int) -> Any:
    """Gemma 2 2B's shapes (hidden 2304, ...) with sh.lm_layers layers; the tiny test model's with --tiny."""
    from trainer.lm.tiny_model import tiny_gemma2_config

    if sh is TINY:
        return tiny_gemma2_config(vocab_size, num_hidden_layers=sh.lm_layers)
    from transformers import Gemma2Config

    fields: dict[str, Any] = dict(
        vocab_size=256_000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=sh.lm_layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        max_position_embeddings=8192,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    return Gemma2Config(**fields)


WORDS_TEXT = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out up who them some into "
    "time only other new about over also such two could first than after may these its well any then between model "
    "sparse feature language layer token river north music church field water school history city war small people "
    "Beautiful better ugly explicit implicit simple complex flat nested dense readability errors silently ambiguity"
)
WORDS = WORDS_TEXT.split()


def synthetic_iter_documents(
    dataset: str | None = None, *, text_column: str = "text", split: str = "train"
) -> Iterator[Document]:
    """An endless, deterministic stream of word-salad documents (stands in for trainer.data.text.iter_documents)."""
    rng = random.Random(0)
    i = 0
    while True:
        n = rng.randint(100, 1500)
        text = " ".join(rng.choice(WORDS) for _ in range(n)) + "."
        yield Document(f"synthetic:{i}", text)
        i += 1


def section_lm_index_pass(ctx: Ctx, out: dict[str, Any]) -> None:
    from transformers import Gemma2ForCausalLM

    from trainer.analysis import index_pass
    from trainer.analysis.index_pass import IndexPassConfig, run_index_pass
    from trainer.lm.models import LoadedModel
    from trainer.lm.sites import harvest
    from trainer.lm.tiny_model import build_tokenizer

    sh, dev = ctx.shapes, ctx.device
    ctx.drop_pools()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tokenizer = build_tokenizer()
    config = gemma2_config(sh, len(tokenizer))
    layer = sh.lm_layers - 1
    out["model"] = {
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "layers_built": sh.lm_layers,
        "layers_of_the_real_model": sh.lm_full_layers,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab": config.vocab_size,
        "dtype": str(dtype),
        "attention": "eager",
        "hooked": f"resid of layer {layer}",
        "tokenizer": f"trainer.lm.tiny_model.build_tokenizer(): byte-level BPE, {len(tokenizer)} tokens",
    }
    t0 = time.perf_counter()
    torch.manual_seed(ctx.args.seed)
    with dev:
        model: Any = Gemma2ForCausalLM(config)
    model.to(dtype).eval().requires_grad_(False)
    sync(dev)
    out["build_s"] = time.perf_counter() - t0
    out["params"] = sum(p.numel() for p in model.parameters())
    print(
        f"  built a random {sh.lm_layers}-layer Gemma 2 ({out['params'] / 1e9:.2f} B params) in {out['build_s']:.1f} s"
    )
    b, s = sh.lm_seqs, sh.lm_context
    ids = torch.randint(0, config.vocab_size, (b, s), device=dev)
    mask = torch.ones(b, s, dtype=torch.long, device=dev)

    # harvest alone
    acts = harvest(model, ids, mask, layer, "resid")
    sync(dev)
    out["harvest_shape"] = list(acts.shape)
    out["harvest_dtype"] = str(acts.dtype)
    out["harvest_finite"] = bool(torch.isfinite(acts).all())
    times = []
    for _ in range(sh.lm_batches):
        t0 = time.perf_counter()
        harvest(model, ids, mask, layer, "resid")
        sync(dev)
        times.append(time.perf_counter() - t0)
    out["harvest_ms_per_batch"] = statistics.median(times) * 1e3
    out["harvest_tokens_per_s"] = b * s / statistics.median(times)
    print(f"  harvest: {out['harvest_tokens_per_s']:,.0f} tok/s ({out['harvest_ms_per_batch']:.1f} ms per {b}x{s})")
    ctx.save()

    # the SAE, with thresholds set on harvested activations (raw units, as the index pass feeds it)
    sae = make_sae(ctx, "jumprelu", sh.index_width, sh.index_l0, d_in=config.hidden_size)
    calibrate(sae, acts.reshape(b * s, -1).float(), sh.index_l0)
    sae.eval()

    # harvest + encode + FeatureStats.update by hand
    stats = FeatureStats(sh.index_width, StatsConfig(), dev)
    doc = torch.arange(b * s, device=dev).view(b, s) // 300
    special = torch.zeros(b, s, dtype=torch.bool, device=dev)
    special[:, 0] = True
    times, l0s = [], []
    with torch.no_grad():
        for i in range(sh.lm_batches + 1):
            sync(dev)
            t0 = time.perf_counter()
            a = harvest(model, ids, mask, layer, "resid")
            f = sae.encode(a.reshape(b * s, -1).float()).view(b, s, -1)
            stats.update(f, ids, doc + i * b * s, special)
            sync(dev)
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - t0)
            l0s.append(float((f > 0).sum()) / (b * s))
    del stats, a, f
    free_memory(dev)
    out["by_hand_l0"] = statistics.fmean(l0s)
    out["by_hand_ms_per_batch"] = statistics.median(times) * 1e3
    out["by_hand_tokens_per_s"] = b * s / statistics.median(times)
    print(
        f"  harvest + encode + FeatureStats.update: {out['by_hand_tokens_per_s']:,.0f} tok/s, "
        f"L0 {out['by_hand_l0']:.1f}"
    )
    ctx.save()

    # run_index_pass itself, on synthetic documents (iter_documents patched: no corpus packages needed)
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=f"random-gemma2-{sh.lm_layers}-layers",
        source="random init (benchmarks/gpu_check.py)",
        model_type="gemma2",
        n_layers=sh.lm_layers,
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        vocab_size=config.vocab_size,
        device=dev,
        dtype=dtype,
    )
    out["index_pass_documents"] = "synthetic word-salad documents (trainer.analysis.index_pass.iter_documents patched)"
    with mock.patch.object(index_pass, "iter_documents", synthetic_iter_documents):
        warm_cfg = IndexPassConfig(tokens=1, context_size=s, batch_sequences=b)
        run_index_pass(lm, sae, layer=layer, site="resid", cfg=warm_cfg)  # warm-up: one batch
        sync(dev)
        free_memory(dev)
        reset_peak(dev)
        cfg = IndexPassConfig(tokens=sh.lm_batches * b * (s - 1), context_size=s, batch_sequences=b)
        t0 = time.perf_counter()
        result = run_index_pass(lm, sae, layer=layer, site="resid", cfg=cfg)
        sync(dev)
        wall = time.perf_counter() - t0
    seqs = result.stats.n_sequences
    out["index_pass"] = {
        "sequences": seqs,
        "tokens_seen": result.stats.tokens_seen,
        "streaming_s": result.seconds,
        "wall_s": wall,
        "after_streaming_s": wall - result.seconds,
        "tokens_per_s": seqs * s / result.seconds,
        "non_special_tokens_per_s": result.stats.tokens_seen / result.seconds,
        "mean_l0": float(result.stats.fire_count.sum()) / max(1, result.stats.tokens_seen),
        "peak_gib": peak_gib(dev),
    }
    ip = out["index_pass"]
    print(
        f"  run_index_pass: {ip['tokens_per_s']:,.0f} tok/s streaming ({seqs} x {s} tokens in {result.seconds:.2f} s), "
        f"{ip['after_streaming_s']:.2f} s for output tokens and similar features, L0 {ip['mean_l0']:.1f}"
    )
    del model, lm, sae, result, acts
    free_memory(dev)


# -- section 6: whole short-recipe training runs -------------------------------------------------
FIT_RUNS: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("jumprelu", "fp32", {"dead_aux": 1 / 32}, True),
    ("jumprelu", "bf16", {"dead_aux": 1 / 32}, True),
    ("topk", "fp32", {"k": 8}, True),
    ("topk", "fp32", {"k": 8}, False),
)
"""(architecture, mode, SAEConfig overrides, seed_dead_moments): JumpReLU with its dead_aux option and
TopK with AuxK, so that the short recipe's moment seeding runs on the device's fused Adam (a latent
counts as dead after two silent batches, so that many do), and TopK once without it."""


class DeathCounter:
    """A Trainer on_step callback: how many times a latent became dead (tokens_since_fired reached
    dead_tokens), over the whole run."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.dead = torch.zeros(d_sae, dtype=torch.bool, device=device)  # (d_sae,)
        self.count = 0

    def __call__(self, done: int, sae: SAE) -> None:
        dead = sae.tokens_since_fired >= sae.dead_tokens  # (d_sae,)
        self.count += int((dead & ~self.dead).sum())
        self.dead.copy_(dead)


def section_short_recipe_fit(ctx: Ctx, out: dict[str, Any]) -> None:
    """`Trainer.fit` end to end on the device with --recipe short, step auto: data-start decoder and
    thresholds, b_dec at the mean, fused Adam, dead-latent bookkeeping and moment seeding, the auto
    switch to the sparse step; then `evaluate` on held-out synthetic tokens on the device."""
    import tempfile

    from trainer.data.activations import TensorSource
    from trainer.evaluation.metrics import evaluate
    from trainer.training.config import resolve_recipe
    from trainer.training.trainer import Trainer

    sh, dev = ctx.shapes, ctx.device
    raw = synthetic_activations(sh.d_in, 2 * sh.fit_pool_tokens, seed=ctx.args.seed + 6)
    train, held = raw[: sh.fit_pool_tokens], raw[sh.fit_pool_tokens :]
    out["shape"] = {"d_in": sh.d_in, "d_sae": sh.fit_width, "batch": sh.batch, "steps": sh.fit_steps}
    rows: list[dict[str, Any]] = []
    out["rows"] = rows
    for arch, mode, overrides, seeded in FIT_RUNS:
        if ctx.out_of_time(6):
            out.setdefault("skipped", []).append(f"{arch} {mode} seeded={seeded}")
            continue
        row: dict[str, Any] = {"architecture": arch, "mode": mode, **overrides, "seed_dead_moments": seeded}
        rows.append(row)
        try:
            sae_cfg = SAEConfig(d_in=sh.d_in, d_sae=sh.fit_width, architecture=arch, **overrides)
            train_cfg = TrainConfig(
                tokens=sh.fit_steps * sh.batch, batch_size=sh.batch, recipe="short",
                device="cuda" if dev.type == "cuda" else "cpu",
                autocast_bf16=mode == "bf16", norm_tokens=min(65_536, sh.fit_pool_tokens),
                dead_tokens=2 * sh.batch, seed_dead_moments=seeded, checkpoint_every=0, log_every=10,
                shuffle_buffer=sh.fit_pool_tokens,
            )  # fmt: skip
            resolve_recipe(sae_cfg, train_cfg, {"dead_tokens", "seed_dead_moments"})
            deaths = DeathCounter(sh.fit_width, dev)

            source = TensorSource(train, loop=True, description="synthetic")
            with tempfile.TemporaryDirectory() as folder:
                reset_peak(dev)
                sync(dev)
                t0 = time.perf_counter()
                trainer = Trainer(sae_cfg, train_cfg, source, folder, progress=False, on_step=deaths)
                result = trainer.fit()
                sync(dev)
                row["fit_s"] = time.perf_counter() - t0
                lines = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
            row["peak_gib"] = peak_gib(dev)
            row["tokens_per_s"] = sh.fit_steps * sh.batch / row["fit_s"]
            row["sparse_steps_logged"] = sum(1 for line in lines if line.get("sparse_step"))
            row["lines_logged"] = len(lines)
            last = lines[-1]
            row["train"] = {k: last.get(k) for k in ("fvu", "l0", "dead_fraction", "tokens/s")}
            row["train_fvu_max_after_warmup"] = max(line["fvu"] for line in lines[len(lines) // 5 :])
            row["newly_dead_events"] = deaths.count
            ev = evaluate(result.sae, TensorSource(held), held.shape[0], batch_size=sh.batch, device=dev)
            row["eval"] = {"fvu": ev.fvu, "l0": ev.l0, "dead_fraction": ev.dead_fraction}
            row["finite"] = all(math.isfinite(float(v)) for v in (ev.fvu, ev.l0))
            print("  " + _fit_line(row), flush=True)
        except Exception as exc:
            row.update(error_entry(exc))
            print(f"  {arch} {mode}: ERROR {row['error']}", flush=True)
        ctx.save()
        free_memory(dev, collect=True)


def _fit_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['architecture']} {row['mode']}: ERROR {row['error'].splitlines()[0][:100]}"
    tr, ev = row["train"], row["eval"]
    return (
        f"{row['architecture']:>8} {row['mode']} seeded={row['seed_dead_moments']!s:5}: "
        f"{row['tokens_per_s']:,.0f} tok/s whole fit ({row['fit_s']:.1f} s, "
        f"{row['sparse_steps_logged']}/{row['lines_logged']} logged steps sparse, peak {row['peak_gib']} GiB); "
        f"{row['newly_dead_events']:,} times a latent became dead; train FVU {tr['fvu']:.3f} "
        f"(max {row['train_fvu_max_after_warmup']:.3f} after the first fifth) L0 {tr['l0']:.1f} "
        f"dead {tr['dead_fraction']:.0%}; "
        f"held-out FVU {ev['fvu']:.3f} L0 {ev['l0']:.1f} never fired {ev['dead_fraction']:.0%}"
    )


# -- driver -------------------------------------------------------------------------------------
RUNNERS: dict[int, Callable[[Ctx, dict[str, Any]], None]] = {
    1: section_train_step,
    2: section_same_results,
    3: section_encode,
    4: section_feature_stats,
    5: section_lm_index_pass,
    6: section_short_recipe_fit,
}


def run_section(ctx: Ctx, number: int) -> None:
    name = SECTIONS[number]
    print(f"\n== {number}. {name} ({ctx.elapsed():.0f} s elapsed) ==", flush=True)
    out: dict[str, Any] = {}
    ctx.results["sections"][name] = out
    t0 = time.perf_counter()
    try:
        RUNNERS[number](ctx, out)
    except Exception as exc:
        out.update(error_entry(exc))
        print(f"  SECTION ERROR: {out['error']}\n{out['traceback']}", flush=True)
    finally:
        out["seconds"] = time.perf_counter() - t0
        free_memory(ctx.device, collect=True)
        ctx.save()


def print_summary(ctx: Ctx) -> None:
    res = ctx.results
    print("\n" + "=" * 100)
    print(f"SUMMARY  {res['meta']['device_name']}  torch {res['meta']['torch']}  ({ctx.elapsed():.0f} s)")
    for name, sec in res["sections"].items():
        status = "ERROR: " + sec["error"].splitlines()[0][:120] if "error" in sec else "ok"
        print(f"\n-- {name}: {status} ({sec.get('seconds', 0):.1f} s)")
        if name == SECTIONS[1]:
            for d_sae, entry in sec.get("matmul", {}).items():
                rates = ", ".join(
                    f"{k} {v['combined_flops'] / 1e12:.1f}" for k, v in entry.items() if "combined_flops" in v
                )
                print(f"  matmul TFLOP/s d_sae={d_sae}: {rates}")
            for row in sec.get("rows", []):
                print("  " + _step_line(row))
            if sec.get("skipped"):
                print(f"  skipped for time: {len(sec['skipped'])} (listed in the JSON), first {sec['skipped'][0]}")
        elif name == SECTIONS[2]:
            for row in sec.get("rows", []):
                print("  " + _check_line(row))
            if "all_pass" in sec:
                print(f"  all pass: {sec['all_pass']}")
        elif name == SECTIONS[3]:
            for row in sec.get("rows", []):
                print("  " + _encode_line(row))
        elif name == SECTIONS[4] and "device_tokens_per_s" in sec:
            print(
                f"  {sec['shape']}: {sec['device_tokens_per_s']:,.0f} tok/s on {ctx.device.type}, "
                f"cpu {sec.get('cpu_tokens_per_s', math.nan):,.0f} tok/s, "
                f"ratio {sec.get('device_over_cpu', math.nan):.1f}x, "
                f"state {sec['state_gib']:.3f} GiB, peak {sec.get('peak_gib')} GiB"
            )
        elif name == SECTIONS[5]:
            for key in ("harvest_tokens_per_s", "by_hand_tokens_per_s"):
                if key in sec:
                    print(f"  {key}: {sec[key]:,.0f}")
            if "index_pass" in sec:
                ip = sec["index_pass"]
                print(
                    f"  run_index_pass: {ip['tokens_per_s']:,.0f} tok/s streaming, {ip['wall_s']:.1f} s wall "
                    f"({ip['sequences']} sequences), peak {ip['peak_gib']} GiB"
                )
        elif name == SECTIONS[6]:
            for row in sec.get("rows", []):
                print("  " + _fit_line(row))
    print(f"\nJSON: {ctx.out}")


def default_out() -> str:
    folder = os.environ.get("OUT")
    return str(Path(folder) / "gpu_check.json") if folder else "gpu_check.json"


def parse_sections(text: str) -> list[int]:
    try:
        numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sections takes numbers like 1,2,5, got {text!r}") from None
    if not numbers or any(n not in SECTIONS for n in numbers):
        raise argparse.ArgumentTypeError(f"--sections: choose among {', '.join(map(str, SECTIONS))}, got {text!r}")
    return numbers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="One prepared GPU check of jumpscope: step, encode and index throughput; sparse == dense.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=default_out(), help="JSON file written after every section")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--sections", type=parse_sections, default=list(SECTIONS), help="e.g. 1,2,5")
    p.add_argument("--tiny", action="store_true", help="CPU-sized shapes (d_in 64, widths 256/1024, B 256)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-time budget: later configurations are skipped")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows line by line, also through a pipe
    if args.tiny and torch.device(args.device).type == "cpu":
        torch.set_num_threads(1)  # tiny shapes gain nothing from threads, and a busy machine loses much
    keep_freed_memory()  # as Trainer._fit (TrainConfig.keep_freed_memory)
    ctx = Ctx(args)
    m = ctx.results["meta"]
    print(
        f"device: {m['device_name']} ({m['device']})  torch {m['torch']}  CUDA {m['cuda']}  "
        f"transformers {m['transformers']}"
    )
    print(
        f"allow_tf32 (matmul) {m['allow_tf32_matmul']}; sections {m['sections']}; "
        f"architectures (sparse step): {m['architectures']}; out {ctx.out}",
        flush=True,
    )
    if ctx.device.type == "cuda":  # CUDA context and cuBLAS warm-up before anything is timed
        t0 = time.perf_counter()
        a = torch.randn(1024, 1024, device=ctx.device)
        (a @ a).sum().item()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            (a @ a).sum().item()
        m["cuda_warmup_s"] = time.perf_counter() - t0
    ctx.save()
    for number in ctx.sections:
        run_section(ctx, number)
    print_summary(ctx)


if __name__ == "__main__":
    main()
