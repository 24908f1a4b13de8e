"""The training loop: warm-ups, decoder constraint, checkpoints, metrics, DDP.

One optimiser step (jumprelu.md §3, DL's update order):
    x <- batch / C;  loss <- mse + lambda_t * sparsity (+ aux);  backward
    project each W_dec row's gradient off the row;  (optional clip);  Adam at lr_t
    renormalise W_dec rows;  clamp raw thresholds > 0
Under torchrun every rank reads the same global batch stream and trains on its slice;
DDP averages the gradients, so the run matches one process on the same global batch.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from trainer.atomic import atomic_write_bytes, atomic_write_text
from trainer.data.activations import ActivationSource, EpochShuffle, ShuffleBuffer, batches, take_tokens
from trainer.formats.native import SAEMetadata, save_native
from trainer.saes import registry
from trainer.saes.base import SAE, StepOutput
from trainer.saes.config import SAEConfig
from trainer.saes.registry import build_sae
from trainer.training.config import TrainConfig, lr_at, sparsity_at, sparsity_coeff
from trainer.training.data_init import QUANTILE_TOKENS, data_directions, fit_encoder_scale, quantile_thresholds
from trainer.training.distributed import DistContext, all_reduce_sum, barrier, setup, teardown
from trainer.training.malloc import keep_freed_memory
from trainer.training.massive_tokens import clip_token_norms, norm_limit
from trainer.training.resample import resample_dead, seed_newly_dead
from trainer.training.update_clip import clip_to_second_moments

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TRAIN_CONFIG = "train_config.json"


class TrainingInterrupted(Exception):
    """Ctrl-C during training: a checkpoint of the last complete step was written."""


class TrainResult(NamedTuple):
    """What `Trainer.fit` hands back."""

    sae: SAE
    """The inference-form SAE (normalisation folded in), as saved."""
    out_dir: Path
    """The native SAE folder (with metrics.jsonl and checkpoint.pt)."""
    scale: float
    """The normalisation scale C."""
    steps: int
    """Optimiser steps taken in total (including before a resume)."""


class _Step(nn.Module):
    """Routes DDP's forward to SAE.training_step, so DDP's gradient hooks see the call."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: Tensor, coeff: float, sparse: bool = False) -> StepOutput:
        if sparse:
            return self.sae.sparse_training_step(x, coeff)
        return self.sae.training_step(x, coeff)


AUTO_SPARSE_MAX_DENSITY = {"cpu": 1 / 20, "cuda": 1 / 64}
"""`step="auto"` takes the sparse step once the last step's L0 is at most this fraction of d_sae, by
device type. Measured (README, Benchmarks): on 2 CPU cores the sparse step is 1.3-1.5x the dense one
at 6% density (L0 246 of 4,096, 985 of 16,384) and breaks even near 10%; on an H200 in fp32 it is
1.5x at 1.6% (L0 256 of 16,384) and, extrapolated, breaks even near 3%."""


def auto_sparse_max_density(device: torch.device) -> float:
    """The largest L0 / d_sae at which `step="auto"` takes the sparse step on this device."""
    return AUTO_SPARSE_MAX_DENSITY.get(device.type, min(AUTO_SPARSE_MAX_DENSITY.values()))


def active_count(active: Tensor) -> int:
    """Entries of a (B, d_sae) bool mask that are True (count_nonzero: ~15x a bool sum() on a CPU)."""
    return int(torch.count_nonzero(active))


def fired_latents(active: Tensor) -> Tensor:
    """(d_sae,) bool: the latents that fired on any row of a (B, d_sae) bool mask (a max over the
    bytes: ~10x any(0) on a CPU)."""
    return active.view(torch.uint8).amax(0).bool()


def estimate_scale(sample: Tensor) -> float:
    """C = sqrt(mean ||x||^2), so that x / C has unit mean squared norm (GS §3.1)."""
    # per-token squared norms in float32, 65,536 tokens at a time, summed in float64 (no float64 copy)
    total = sum(float(part.float().pow(2).sum(-1).sum(dtype=torch.float64)) for part in sample.split(65_536))
    mean_sq = total / max(1, sample.shape[0])
    if not math.isfinite(mean_sq) or mean_sq <= 0:
        raise ValueError(f"cannot normalise: the mean squared norm of the activations is {mean_sq}")
    return math.sqrt(mean_sq)


class Trainer:
    """Train one SAE from an activation source into a native SAE folder."""

    def __init__(
        self,
        sae_cfg: SAEConfig,
        train_cfg: TrainConfig,
        source: ActivationSource,
        out_dir: str | Path,
        *,
        meta: SAEMetadata | None = None,
        progress: bool = True,
        on_step: Callable[[int, SAE], None] | None = None,
    ) -> None:
        if source.d_in != sae_cfg.d_in:
            raise ValueError(
                f"d_in mismatch: the activations are {source.d_in} wide but the SAE expects d_in={sae_cfg.d_in}"
            )
        self.sae_cfg = sae_cfg
        self.cfg = train_cfg
        self.source = source
        self.out_dir = Path(out_dir)
        self.meta = meta or SAEMetadata(dataset=source.description)
        self.progress = progress
        self.on_step = on_step
        """Called after every optimiser step with (steps done, training-form SAE)."""
        self._stop_requested = False
        self._epochs: EpochShuffle | None = None
        """The data set held in memory for whole-epoch shuffles (set by fit when it fits)."""
        self._last_l0: float | None = None
        """Mean L0 of the last step (step="auto" chooses the next step by it; kept in checkpoints)."""
        self._norm_limit: float | None = None
        """max_norm_ratio's limit on a training token's norm, in normalised units (kept in checkpoints)."""

    # -- data -----------------------------------------------------------------------------
    def _in_memory(self) -> EpochShuffle | None:
        """The whole data set in memory, when it is finite and fits the shuffle buffer (else None)."""
        n_tokens = getattr(self.source, "n_tokens", None)  # a finite data set's size (a cache's)
        if n_tokens is not None and 0 < n_tokens <= self.cfg.shuffle_buffer:
            return EpochShuffle(self.source, n_tokens, seed=self.cfg.seed)
        return None

    def _stream(self, ctx: DistContext) -> Iterator[Tensor]:
        """This rank's slice of every global batch, in a deterministic order."""
        chunks: Any = self.source
        if self._epochs is not None:
            chunks = self._epochs  # it all fits: shuffle whole epochs
        elif self.cfg.shuffle_buffer > 0:
            chunks = ShuffleBuffer(chunks, self.cfg.shuffle_buffer, seed=self.cfg.seed)
        per_rank = self.cfg.batch_size // ctx.world_size
        lo = ctx.rank * per_rank
        for batch in batches(chunks, self.cfg.batch_size):
            yield batch[lo : lo + per_rank]

    # -- initialisation -------------------------------------------------------------------
    def _init_from_data(self, sae: SAE, sample: Tensor, device: torch.device) -> None:
        """The data-driven starts (trainer.training.data_init), on sample (N, d_in) in normalised units;
        the same on every rank (the same sample and seed)."""
        cfg = self.cfg
        if cfg.decoder_init == "random" and cfg.threshold_init_rate is None:
            return  # the paper's start
        probe = sample[:QUANTILE_TOKENS].to(device).float()  # (N, d_in)
        with torch.no_grad():
            if cfg.decoder_init == "data":
                gen = torch.Generator().manual_seed(cfg.seed)
                rows = data_directions(sample, sample.mean(0), self.sae_cfg.d_sae, gen)  # (d_sae, d_in)
                sae.init_directions(rows.to(device))
                fit_encoder_scale(sae, probe)
            if cfg.threshold_init_rate is not None:
                pre = sae.pre_acts(probe)  # (N, d_sae)
                sae.init_thresholds(quantile_thresholds(pre, cfg.threshold_init_rate))

    # -- checkpoints ----------------------------------------------------------------------
    def _save_checkpoint(self, sae: SAE, optimizer: torch.optim.Optimizer, step: int, scale: float) -> None:
        state = {
            "step": step,
            "scale": scale,
            "sae": sae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sae_cfg": asdict(self.sae_cfg),
            "last_l0": self._last_l0,
            "norm_limit": self._norm_limit,
            "max_norm_ratio": self.cfg.max_norm_ratio,
        }
        atomic_write_bytes(self.out_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def _load_checkpoint(self, sae: SAE, optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[int, float]:
        path = self.out_dir / CHECKPOINT
        state = torch.load(path, map_location=device, weights_only=True)
        if state["sae_cfg"] != asdict(self.sae_cfg):
            raise ValueError(f"{path} was written for a different SAE config: {state['sae_cfg']}")
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        last_l0 = state.get("last_l0")  # the auto step's choice resumes where it was
        self._last_l0 = None if last_l0 is None else float(last_l0)
        if state.get("max_norm_ratio") != self.cfg.max_norm_ratio:
            raise ValueError(
                f"{path} was written with max_norm_ratio {state.get('max_norm_ratio')}, not "
                f"{self.cfg.max_norm_ratio}: resume with the same, or start again"
            )
        limit = state.get("norm_limit")
        self._norm_limit = None if limit is None else float(limit)
        return int(state["step"]), float(state["scale"])

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from."""
        path = self.out_dir / METRICS
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    # -- the loop -------------------------------------------------------------------------
    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def request_stop(self) -> None:
        """Stop at the next step with a checkpoint (TrainingInterrupted); safe from another thread."""
        self._stop_requested = True

    def fit(self, resume: bool = False) -> TrainResult:
        """Train for cfg.tokens tokens; with resume, continue from out_dir/checkpoint.pt."""
        ctx = setup(self.cfg.device)
        try:
            return self._fit(ctx, resume)
        finally:
            teardown(ctx)

    def _fit(self, ctx: DistContext, resume: bool) -> TrainResult:
        cfg = self.cfg
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {ctx.world_size} processes")
        if resume and not (self.out_dir / CHECKPOINT).exists():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {self.out_dir}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.keep_freed_memory:
            keep_freed_memory()
        torch.manual_seed(cfg.seed)
        sae = build_sae(self.sae_cfg).to(ctx.device)
        sae.dead_tokens = cfg.dead_tokens
        fused = ctx.device.type in ("cpu", "cuda")
        thresholds = sae.threshold_parameters()
        if cfg.threshold_lr_scale != 1.0 and not thresholds:
            raise ValueError(f"threshold_lr_scale: {self.sae_cfg.architecture} SAEs have no thresholds")
        if cfg.threshold_init_rate is not None and not thresholds:
            raise ValueError(f"threshold_init_rate: {self.sae_cfg.architecture} SAEs have no thresholds")
        rest = [p for p in sae.parameters() if all(p is not t for t in thresholds)]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if thresholds:
            groups.append({"params": thresholds, "lr_scale": cfg.threshold_lr_scale})
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=fused)
        coeff = sparsity_coeff(self.sae_cfg, cfg)
        total = cfg.total_steps
        if cfg.step == "sparse" and not sae.has_sparse_step:
            raise ValueError(
                f"{self.sae_cfg.architecture} SAEs have no sparse training step yet: use --step dense or auto"
            )
        # Under bf16 autocast on a GPU the dense step's tensor-core matmuls beat the sparse step's fp32
        # gather and scatter (README, "On a GPU"), so auto stays dense there; --step sparse still runs it.
        autocast_on = cfg.autocast_bf16 and ctx.device.type == "cuda"
        auto_sparse = cfg.step == "auto" and sae.has_sparse_step and not autocast_on
        self._last_l0 = None
        self._norm_limit = None

        self._epochs = self._in_memory()
        if resume:
            start, scale = self._load_checkpoint(sae, optimizer, ctx.device)
            if ctx.is_main:
                self._trim_metrics(start)
        else:
            start = 0
            # the first norm_tokens of the source (read once: from memory when the data set is held there)
            held = self._epochs
            sample = held.data[: cfg.norm_tokens] if held is not None else take_tokens(self.source, cfg.norm_tokens)
            scale = estimate_scale(sample) if cfg.normalize else 1.0
            if cfg.max_norm_ratio is not None:
                self._norm_limit = norm_limit(sample, cfg.max_norm_ratio) / scale
            if (cfg.b_dec_init or sae.b_dec_init) == "mean":
                with torch.no_grad():  # start b_dec at the data's centre (Gao et al. for TopK)
                    sae.b_dec.copy_((sample.mean(0) / scale).to(ctx.device))
            self._init_from_data(sae, sample / scale, ctx.device)
            if ctx.is_main:
                (self.out_dir / METRICS).unlink(missing_ok=True)
                atomic_write_text(
                    self.out_dir / TRAIN_CONFIG,
                    json.dumps(
                        {"sae": asdict(self.sae_cfg), "train": asdict(cfg), "world_size": ctx.world_size}, indent=2
                    )
                    + "\n",
                )

        model: nn.Module = _Step(sae)
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

        if cfg.resample_every and ctx.distributed:
            raise ValueError("resample_every is for one process: it is not supported under torchrun yet")
        # an auxiliary loss on dead latents: JumpReLU's dead_aux, or TopK's AuxK (no penalty: coeff is AuxK's)
        topk_aux = registry.get(self.sae_cfg.architecture).penalty == "none" and coeff > 0
        dead_aux_on = self.sae_cfg.dead_aux > 0 or topk_aux
        seed_dead = cfg.seed_dead_moments and dead_aux_on
        resample_until = cfg.resample_every and total - cfg.lr_decay_steps  # resample until the decay starts
        stream = self._stream(ctx)
        for _ in range(start):  # replay the deterministic stream to where we stopped
            next(stream)

        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C handling stays with the caller
            previous = None
        metrics_file = open(self.out_dir / METRICS, "a") if ctx.is_main else None  # noqa: SIM115
        bar = tqdm(
            total=total * cfg.batch_size,
            initial=start * cfg.batch_size,
            unit="tok",
            unit_scale=True,
            disable=not (self.progress and ctx.is_main),
            desc=f"train {self.sae_cfg.architecture}",
        )
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.autocast_bf16 and ctx.device.type == "cuda")
        step = start
        window_start, window_tokens = time.perf_counter(), 0
        try:
            for step in range(start, total):
                if self._stop_requested:
                    raise TrainingInterrupted
                try:
                    x = next(stream)
                except StopIteration:
                    raise ValueError(
                        f"the activation source ran out after {step} steps ({step * cfg.batch_size} tokens); "
                        f"--tokens asks for {total * cfg.batch_size}"
                    ) from None
                x = x.to(ctx.device, non_blocking=True) / scale  # (B_rank, d_in)
                unclipped = x
                if self._norm_limit is not None:  # massive activations scaled down (massive_tokens.py)
                    x = clip_token_norms(x, self._norm_limit)
                lam = sparsity_at(step, coeff, cfg, self.sae_cfg.architecture)
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                sparse = cfg.step == "sparse" or (
                    auto_sparse
                    and self._last_l0 is not None
                    and self._last_l0 <= self.sae_cfg.d_sae * auto_sparse_max_density(ctx.device)
                )
                with autocast:  # the sparse step runs its encoder matmul in bf16 under autocast, the rest in fp32
                    out: StepOutput = model(x, lam, sparse)
                if auto_sparse:
                    self._last_l0 = active_count(out.active) / out.active.shape[0]
                out.loss.backward()
                sae.project_decoder_grad()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
                done = step + 1
                logs = done % cfg.log_every == 0 or done == total  # this step writes a metrics line
                if cfg.update_clip is not None:  # each element within its own history (update_clip.py)
                    clipped_updates = clip_to_second_moments(optimizer, cfg.update_clip, count=logs)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sae.normalize_decoder()
                sae.after_step()
                fired = all_reduce_sum(fired_latents(out.active).to(torch.int32), ctx) > 0  # (d_sae,)
                was_dead = sae.tokens_since_fired >= sae.dead_tokens if seed_dead else None  # (d_sae,)
                sae.update_dead(fired, cfg.batch_size)
                if was_dead is not None:  # before dead_aux's first gradient reaches them (resample.py)
                    seed_newly_dead(sae, optimizer, was_dead)
                if resample_until and (step + 1) % cfg.resample_every == 0 and step + 1 < resample_until:
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # by step: resumes the same
                    resample_dead(sae, optimizer, x, out.x_hat, active_count(out.active) / x.shape[0], gen)
                if self.on_step is not None:
                    self.on_step(step + 1, sae)

                window_tokens += cfg.batch_size
                bar.update(cfg.batch_size)
                if logs:
                    now = time.perf_counter()
                    row = self._metrics_row(done, out, x, lam, lr, window_tokens / (now - window_start), sae, ctx)
                    row["sparse_step"] = sparse  # which step produced this line's step
                    if self._norm_limit is not None:  # tokens of this line's global batch scaled down
                        over = torch.count_nonzero(unclipped.norm(dim=1) > self._norm_limit).to(torch.int64)
                        row["clipped_tokens"] = int(all_reduce_sum(over, ctx))
                    if cfg.update_clip is not None:  # gradient elements clipped at this line's step
                        row["clipped_updates"] = int(clipped_updates)
                    window_start, window_tokens = now, 0
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(row) + "\n")
                        metrics_file.flush()
                    bar.set_postfix(l0=f"{row['l0']:.1f}", fvu=f"{row['fvu']:.3f}")
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
                    if ctx.is_main:
                        self._save_checkpoint(sae, optimizer, done, scale)
                    barrier(ctx)
            step = total
        except TrainingInterrupted:
            if ctx.is_main:
                self._save_checkpoint(sae, optimizer, step, scale)
            raise
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

        folded = sae.fold(scale).cpu()
        if ctx.is_main:
            self._save_checkpoint(sae, optimizer, total, scale)
            self.meta.normalization_scale = scale
            self.meta.tokens_trained = total * cfg.batch_size
            self.meta.extra = {
                **self.meta.extra,
                "training": {
                    "threshold_param": self.sae_cfg.threshold_param,
                    "bandwidth": self.sae_cfg.bandwidth,
                    "sparsity_coeff": coeff,
                    "recipe": cfg.recipe,
                    "lr": cfg.lr,
                    "batch_size": cfg.batch_size,
                    "steps": total,
                    "seed": cfg.seed,
                    "world_size": ctx.world_size,
                },
            }
            save_native(self.out_dir, folded, self.meta)
        barrier(ctx)
        return TrainResult(folded, self.out_dir, scale, total)

    @torch.no_grad()
    def _metrics_row(
        self,
        step: int,
        out: StepOutput,
        x: Tensor,
        lam: float,
        lr: float,
        tokens_per_s: float,
        sae: SAE,
        ctx: DistContext,
    ) -> dict[str, Any]:
        """One metrics.jsonl line, summed over ranks (per-token means over the global batch)."""
        err = (out.x_hat.float() - x.float()).pow(2).sum()
        centred = (x.float() - x.float().mean(0)).pow(2).sum()
        n = torch.tensor(float(x.shape[0]), device=x.device)
        sums = torch.stack(
            [
                out.loss.detach() * n,
                out.mse.detach() * n,
                out.sparsity.detach() * n,
                out.aux.detach() * n,
                torch.count_nonzero(out.active).float(),
                err,
                centred,
                n,
            ]
        )
        loss, mse, sparsity, aux, l0, err_s, centred_s, n_all = all_reduce_sum(sums, ctx).tolist()
        dead = float((sae.tokens_since_fired >= self.cfg.dead_tokens).float().mean())
        return {
            "step": step,
            "tokens": step * self.cfg.batch_size,
            "loss": loss / n_all,
            "mse": mse / n_all,
            "l0": l0 / n_all,
            "fvu": err_s / max(centred_s, 1e-12),
            "sparsity": sparsity / n_all,
            "aux": aux / n_all,
            "lambda": lam,
            "lr": lr,
            "dead_fraction": dead,
            "tokens/s": tokens_per_s,
        }
