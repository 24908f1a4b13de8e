"""Throughput of one JumpReLU training step: jumpscope vs this machine's matmul rate and vs SAELens.

Run by hand from the repository root:

    .venv/bin/python benchmarks/train_step.py            # the full grid (~10 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/train_step.py --quick    # one small shape, few rounds
    .venv/bin/python benchmarks/train_step.py --profile  # torch.profiler breakdown of our step

For every (d_in, d_sae) it prints
  1. the dense fp32 matmul rate of the five matmuls of an SAE step in the layouts autograd
     uses (x @ W_enc, f @ W_dec, g @ W_dec^T, f^T @ g, x^T @ g_pre), measured in this run:
     best of all repeats after a warm-up call;
  2. tokens/s of one full jumpscope training step, exactly the per-step work of Trainer._fit
     (median of the timed steps);
  3. that step's achieved FLOP rate (10 * d_in * d_sae FLOPs per token) over the matmul rate;
  4. tokens/s of the SAELens JumpReLU training step (SAETrainer.step: training_forward_pass,
     its firing statistics, backward, clip_grad_norm_, Adam, schedulers) and the ratio.
Goals (from the issue): >= 0.6 of the matmul rate and >= 1.3x SAELens.

The matmul probes, our steps and SAELens's steps are interleaved round by round, so that load
from other processes on the machine slows all three alike. The data is synthetic but LM-like:
sparse non-negative combinations of a fixed dictionary (Zipf-distributed frequencies) on top
of a shared offset, plus noise. Before every timed step (untimed) each SAE's thresholds are
set to per-latent quantiles of its pre-activations on that step's batch, so that about
--target-l0 latents fire per token as in a trained SAE (the first Adam steps of a fresh SAE
move L0 by 10x); the L0 seen in the timed steps is reported. On CPU the cost hardly
depends on L0: every matmul is dense.

Minor page faults per step are reported too. With glibc's default malloc every big (B, d_sae)
temporary is a fresh mmap that the kernel faults in and zeroes page by page: about half of a
d_in=640 step, varying from run to run. The trainer therefore calls
trainer.training.malloc.keep_freed_memory() (TrainConfig.keep_freed_memory, on by default), and so
does this benchmark, for both libraries alike; --default-malloc leaves glibc as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.saes.config import SAEConfig
from trainer.saes.jumprelu import JumpReLUSAE
from trainer.saes.registry import build_sae, get
from trainer.training.config import TrainConfig, lr_at, sparsity_at
from trainer.training.malloc import keep_freed_memory
from trainer.training.trainer import estimate_scale

GOAL_FRACTION = 0.6
GOAL_RATIO = 1.3
SPARSE_GOAL = 2.5
"""The sparse step's goal: an effective fraction of the dense matmul rate (tokens/s x 10 d_in d_sae
FLOPs over the matmul rate) of at least this, at L0 <= 64 and width >= 16k."""


# -- data -------------------------------------------------------------------------------------
def synthetic_activations(d_in: int, n_tokens: int, seed: int, k: int = 32) -> Tensor:
    """(n_tokens, d_in) fp32 raw activations: ~k of 8*d_in dictionary atoms per token + offset + noise."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = 8 * d_in
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    freq = torch.arange(1, n_atoms + 1, dtype=torch.float64).pow(-0.8)  # Zipf-like
    idx = torch.multinomial(freq, n_tokens * k, replacement=True, generator=g).view(n_tokens, k)
    mags = torch.empty(n_tokens, k).exponential_(1.0, generator=g)
    x = F.embedding_bag(idx, atoms, per_sample_weights=mags, mode="sum")  # (n_tokens, d_in)
    offset = torch.randn(d_in, generator=g)
    x += offset * (2.0 * math.sqrt(k) / offset.norm())  # residual streams carry a large mean
    x += 0.3 * torch.randn(n_tokens, d_in, generator=g)
    return x.mul_(7.0)  # arbitrary raw units: each library's normalisation removes them


def data_pool(d_in: int, args: argparse.Namespace) -> list[Tensor]:
    """--pool distinct (B, d_in) batches from one distribution, cycled through."""
    return list(synthetic_activations(d_in, args.batch * args.pool, args.seed).split(args.batch))


def cycle(pool: list[Tensor]) -> Iterator[Tensor]:
    while True:
        yield from pool


@torch.no_grad()
def calibrated_threshold(pre: Tensor, target_l0: float) -> Tensor:
    """(d_sae,) per-latent threshold that about target_l0 / d_sae of the tokens in pre exceed."""
    n, d_sae = pre.shape
    keep = max(1, min(n - 1, round(n * target_l0 / d_sae)))
    return pre.kthvalue(n - keep, dim=0).values.clamp_min(1e-6)


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh big tensors are faulted in page by page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# -- 1. the matmul probe ----------------------------------------------------------------------
class MatmulProbe:
    """The five dense matmuls of an SAE step, in the layouts autograd uses, timed alone."""

    def __init__(self, batch: int, d_in: int, d_sae: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, d_in, generator=g)
        w_enc = torch.randn(d_in, d_sae, generator=g)
        w_dec = torch.randn(d_sae, d_in, generator=g)
        f = torch.randn(batch, d_sae, generator=g)
        g_out = torch.randn(batch, d_in, generator=g)
        self.ops: dict[str, Callable[[], Tensor]] = {
            "x @ W_enc    [B,din]@[din,dsae]": lambda: torch.matmul(x, w_enc),
            "f @ W_dec    [B,dsae]@[dsae,din]": lambda: torch.matmul(f, w_dec),
            "g @ W_dec^T  [B,din]@[dsae,din]^T": lambda: torch.matmul(g_out, w_dec.T),
            "f^T @ g      [B,dsae]^T@[B,din]": lambda: torch.matmul(f.T, g_out),
            "x^T @ g_pre  [B,din]^T@[B,dsae]": lambda: torch.matmul(x.T, f),
        }
        self.flops = 2.0 * batch * d_in * d_sae  # each of the five
        self.best = dict.fromkeys(self.ops, math.inf)
        for op in self.ops.values():
            op()  # warm-up: allocations, MKL dispatch

    def run(self, repeats: int) -> None:
        for name, op in self.ops.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                op()
                self.best[name] = min(self.best[name], time.perf_counter() - t0)

    def rate(self, name: str) -> float:
        return self.flops / self.best[name]

    @property
    def combined(self) -> float:
        """FLOP/s of the five together: their FLOPs over the sum of their best times."""
        return 5 * self.flops / sum(self.best.values())


def _no_mark(name: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


# -- 2. the jumpscope step --------------------------------------------------------------------
class JumpscopeRunner:
    """jumpscope's JumpReLU SAE and optimiser, set up as Trainer._fit does (paper recipe)."""

    def __init__(
        self, raw_pool: list[Tensor], d_in: int, d_sae: int, args: argparse.Namespace, *, sparse: bool = False
    ) -> None:
        self.sparse = sparse
        """Time SAE.sparse_training_step (f held at its active entries) instead of the dense step."""
        self.name = "sparse" if sparse else "jumpscope"
        self.batch = args.batch
        self.target_l0 = args.target_l0
        self.train_cfg = TrainConfig(batch_size=args.batch)  # the paper's lr, Adam (0, 0.999), eps, warm-ups
        self.coeff = get("jumprelu").default_coeff
        self.scale = estimate_scale(torch.cat(raw_pool))  # Trainer: C = sqrt(mean ||x||^2)
        torch.manual_seed(args.seed)
        sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae))  # jumprelu, log threshold, pre-encoder bias
        assert isinstance(sae, JumpReLUSAE)
        self.sae = sae
        # Trainer._fit: fused Adam on CPU and CUDA
        self.optimizer = torch.optim.Adam(
            sae.parameters(),
            lr=self.train_cfg.lr,
            betas=self.train_cfg.adam_betas,
            eps=self.train_cfg.adam_eps,
            fused=True,
        )
        self.n_steps = 0
        self.out: Any = None
        self.calibrate(raw_pool[0])

    @torch.no_grad()
    def calibrate(self, raw: Tensor) -> None:
        thr = calibrated_threshold(self.sae.pre_acts(raw / self.scale), self.target_l0)
        self.sae.log_threshold.copy_(thr.log())

    def step(self, raw: Tensor, mark: Callable[[str], contextlib.AbstractContextManager[Any]] = _no_mark) -> None:
        sae, optimizer, cfg, step = self.sae, self.optimizer, self.train_cfg, self.n_steps
        # ---- mirrors the inner loop of trainer/training/trainer.py Trainer._fit (one process, CPU, no clip) ----
        with mark("x / scale"):
            x = raw.to("cpu", non_blocking=True) / self.scale  # (B, d_in)
        lam = sparsity_at(step, self.coeff, cfg)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with mark("forward: training_step"):
            # what _Step.forward calls (autocast is CUDA-only)
            out = sae.sparse_training_step(x, lam) if self.sparse else sae.training_step(x, lam)
        with mark("backward"):
            out.loss.backward()
        with mark("project_decoder_grad"):
            sae.project_decoder_grad()
        # grad_clip is None in the paper's recipe: no clip_grad_norm_
        with mark("Adam step (fused)"):
            optimizer.step()
        with mark("zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        with mark("normalize_decoder"):
            sae.normalize_decoder()
        with mark("after_step"):
            sae.after_step()
        with mark("dead-latent update: any(0) + update_dead"):
            fired = out.active.any(0).to(torch.int32) > 0  # all_reduce_sum is a no-op in one process
            sae.update_dead(fired, self.batch)
        # ---- end of the mirrored step; metrics (every log_every = 10 steps) are not timed ----
        self.out = out
        self.n_steps += 1

    def l0(self) -> float:
        return float(self.out.active.sum()) / self.batch


# -- 4. the SAELens step ----------------------------------------------------------------------
class SAELensRunner:
    """SAELens's JumpReLUTrainingSAE driven by its own SAETrainer.step."""

    name = "sae-lens"

    def __init__(self, raw_pool: list[Tensor], d_in: int, d_sae: int, args: argparse.Namespace) -> None:
        from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        self.batch = args.batch
        self.target_l0 = args.target_l0
        train_cfg = TrainConfig(batch_size=args.batch)
        torch.manual_seed(args.seed)
        # SAELens defaults otherwise (decoder_init_norm 0.1, bandwidth 0.05, "step" L0 loss). Its
        # "expected_average_only_in" input scaling is the counterpart of our normalisation.
        self.sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                dtype="float32",
                device="cpu",
                normalize_activations="expected_average_only_in",
            )
        )
        self.trainer = SAETrainer(
            cfg=SAETrainerConfig(
                total_training_samples=args.batch * 1_000_000,
                train_batch_size_samples=args.batch,
                lr=train_cfg.lr,
                lr_end=train_cfg.lr / 10,  # what LanguageModelSAERunnerConfig fills in
                adam_beta1=train_cfg.adam_betas[0],
                adam_beta2=train_cfg.adam_betas[1],
                device="cpu",
                logger=LoggingConfig(log_to_wandb=False),
            ),
            sae=self.sae,
            data_provider=cycle(raw_pool),
        )
        # What ActivationScaler.estimate_scaling_factor would find: E||x|| -> sqrt(d_in).
        mean_norm = float(torch.cat(raw_pool).norm(dim=-1).mean())
        self.trainer.activation_scaler.scaling_factor = math.sqrt(d_in) / mean_norm
        self.sae.train()
        self.out: Any = None
        self.calibrate(raw_pool[0])

    @torch.no_grad()
    def calibrate(self, raw: Tensor) -> None:
        _, pre = self.sae.encode_with_hidden_pre(self.trainer.activation_scaler(raw))
        self.sae.threshold.copy_(calibrated_threshold(pre, self.target_l0))

    def step(self, raw: Tensor) -> None:
        # ---- mirrors SAETrainer.fit's loop body without wandb, checkpoints and progress bar ----
        self.trainer.maybe_reset_sparsity()
        self.out = self.trainer.step(raw)  # forward, firing stats, backward, clip 1.0, Adam, schedulers
        self.trainer.n_training_steps += 1

    def l0(self) -> float:
        return float((self.out.feature_acts > 0).sum()) / self.batch


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)
    l0s: list[float] = field(default_factory=list)
    faults: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def timed_step(runner: Any, raw: Tensor, timing: Timing) -> None:
    runner.calibrate(raw)  # untimed: Adam's first steps move L0 a lot, so pin it to --target-l0
    faults0 = minor_faults()
    t0 = time.perf_counter()
    runner.step(raw)
    timing.times.append(time.perf_counter() - t0)
    timing.faults += minor_faults() - faults0
    timing.l0s.append(runner.l0())  # outside the timed region


def bench_shape(d_in: int, d_sae: int, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== d_in={d_in} d_sae={d_sae} target L0 {args.target_l0:g} ==", flush=True)
    raw_pool = data_pool(d_in, args)
    runners: list[Any] = [JumpscopeRunner(raw_pool, d_in, d_sae, args)]
    if args.sparse:
        runners.append(JumpscopeRunner(raw_pool, d_in, d_sae, args, sparse=True))
    if not args.skip_saelens:
        runners.append(SAELensRunner(raw_pool, d_in, d_sae, args))
    stream = cycle(raw_pool)
    for runner in runners:  # untimed warm-up
        for _ in range(args.warmup):
            runner.step(next(stream))
    probe = MatmulProbe(args.batch, d_in, d_sae, args.seed)
    timings = {runner.name: Timing() for runner in runners}
    for _ in range(args.steps):  # interleaved rounds: probe, our step, their step
        probe.run(args.mm_repeats)
        raw = next(stream)
        for runner in runners:
            timed_step(runner, raw, timings[runner.name])
    for name in probe.ops:
        print(f"  matmul {name:<36} {probe.rate(name) / 1e9:8.1f} GFLOP/s")
    print(f"  matmul, all five (sum of best times)        {probe.combined / 1e9:8.1f} GFLOP/s")
    flops_per_token = 10.0 * d_in * d_sae
    row: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "target_l0": args.target_l0, "mm": probe.combined}
    for name, t in timings.items():
        tps = args.batch / t.median
        row[name] = {
            "tps": tps,
            "best_tps": args.batch / min(t.times),
            "l0": statistics.fmean(t.l0s),
            "frac": tps * flops_per_token / probe.combined,
        }
        print(
            f"  {name:<10} median {t.median * 1e3:6.0f} ms/step ({', '.join(f'{s * 1e3:.0f}' for s in t.times)}) "
            f"= {tps:,.0f} tok/s, L0 {row[name]['l0']:.1f}, {t.faults / len(t.times):,.0f} minor page faults/step",
            flush=True,
        )
    del runners, probe, raw_pool, stream
    gc.collect()
    return row


# -- profiling --------------------------------------------------------------------------------
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm")


def profile_jumpscope(d_in: int, d_sae: int, args: argparse.Namespace) -> None:
    """torch.profiler (CPU, record_shapes) over --profile-steps jumpscope steps, phases labelled."""
    from torch.profiler import ProfilerActivity, profile, record_function

    raw_pool = data_pool(d_in, args)
    runner = JumpscopeRunner(raw_pool, d_in, d_sae, args)
    stream = cycle(raw_pool)
    for _ in range(args.warmup):
        runner.step(next(stream))
    runner.calibrate(next(stream))

    def mark(name: str) -> contextlib.AbstractContextManager[Any]:
        return record_function("## " + name)

    n = args.profile_steps
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n):
            with record_function("## step"):
                runner.step(next(stream), mark)
    wall = (time.perf_counter() - t0) / n
    events = prof.key_averages()
    print(f"\n== torch.profiler: jumpscope step, d_in={d_in} d_sae={d_sae} B={args.batch}, {n} steps ==")
    print(f"wall time per profiled step: {wall * 1e3:.1f} ms (profiler overhead included), L0 {runner.l0():.1f}")
    step_us = next(e.cpu_time_total for e in events if e.key == "## step") / n

    print("\n-- phases (CPU total per step) --")
    for e in sorted(events, key=lambda e: -e.cpu_time_total):
        if e.key.startswith("## ") and e.key != "## step":
            us = e.cpu_time_total / n
            print(f"  {e.key[3:]:<42} {us / 1e3:9.1f} ms  {us / step_us:6.1%}")

    print("\n-- autograd backward nodes (CPU total per step) --")
    for e in sorted(events, key=lambda e: -e.cpu_time_total):
        if e.key.startswith("autograd::engine::evaluate_function") and e.cpu_time_total / n >= 100:
            us = e.cpu_time_total / n
            print(f"  {e.key.split(': ', 1)[-1]:<42} {us / 1e3:9.1f} ms  {us / step_us:6.1%}")

    big = d_in * d_sae  # the five big matmuls each have d_in * d_sae outputs or a K of d_in/d_sae
    shaped = prof.key_averages(group_by_input_shape=True)
    big_mm = [e for e in shaped if e.key in MATMUL_OPS and min(_dims(e.input_shapes)) >= min(d_in, args.batch)]
    big_us = sum(e.self_cpu_time_total for e in big_mm) / n
    all_mm_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / n
    print(
        f"\nthe {sum(e.count for e in big_mm) // n} big matmuls (forward addmm x2, backward mm x3; "
        f"{5 * 2 * args.batch * big / 1e9:.1f} GFLOP): {big_us / 1e3:.1f} ms/step self CPU = "
        f"{big_us / step_us:.1%} of the step; all addmm/mm {all_mm_us / 1e3:.1f} ms; "
        f"everything else {(step_us - big_us) / 1e3:.1f} ms"
    )
    print("\n-- top ops by self CPU time (all profiled steps) --")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    print("-- top ops by self CPU time, grouped by input shape --")
    print(shaped.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows, max_name_column_width=36))


def _dims(shapes: list[Any]) -> list[int]:
    """The sizes of the 2-d inputs among an op's input shapes."""
    return [d for s in shapes if isinstance(s, list | tuple) and len(s) == 2 for d in s] or [0]


# -- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokens/s of one jumpscope JumpReLU training step vs this machine's matmul rate and vs SAELens.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--d-in", type=int, nargs="+", default=[640, 2304], help="input widths")
    p.add_argument("--d-sae", type=int, nargs="+", default=[8192, 16384], help="dictionary widths")
    p.add_argument("--batch", type=int, default=4096, help="tokens per step")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each library before timing")
    p.add_argument("--steps", type=int, default=5, help="timed rounds (one step of each library; median reported)")
    p.add_argument("--mm-repeats", type=int, default=1, help="matmul repeats per round (best of all kept)")
    p.add_argument(
        "--target-l0", type=float, nargs="+", default=[64.0], help="latents per token the thresholds are set for"
    )
    p.add_argument(
        "--sparse", action="store_true", help="also time the sparse step (SAE.sparse_training_step) beside the dense"
    )
    p.add_argument("--pool", type=int, default=4, help="distinct synthetic batches cycled through")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-saelens", action="store_true", help="time jumpscope only")
    p.add_argument("--quick", action="store_true", help="first d_in x first d_sae only, warmup 1, 2 rounds")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="do not apply the trainer's keep_freed_memory() (glibc then re-faults every big temporary)",
    )
    p.add_argument("--profile", action="store_true", help="profile the jumpscope step (first shape) and exit")
    p.add_argument("--profile-steps", type=int, default=3, help="steps recorded by --profile")
    p.add_argument("--profile-rows", type=int, default=25, help="rows of the --profile tables")
    args = p.parse_args(argv)
    if args.quick:
        args.d_in, args.d_sae = [args.d_in[0]], [args.d_sae[0]]
        args.warmup, args.steps = 1, 2
    if min(args.steps, args.mm_repeats, args.batch, args.pool, args.profile_steps) < 1 or args.warmup < 0:
        p.error("--steps, --mm-repeats, --batch, --pool and --profile-steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # As Trainer._fit does (TrainConfig.keep_freed_memory defaults to True).
    kept = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    malloc = "keep_freed_memory (as the trainer)" if kept else "glibc default"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, batch {args.batch}, "
        f"warmup {args.warmup}, {args.steps} timed rounds (median), matmul best of {args.steps * args.mm_repeats}, "
        f"malloc {malloc}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if args.profile:
        profile_jumpscope(args.d_in[0], args.d_sae[0], args)
        return
    if not args.skip_saelens:
        import sae_lens

        print(f"sae-lens {sae_lens.__version__}")

    rows = [
        bench_shape(d_in, d_sae, argparse.Namespace(**{**vars(args), "target_l0": l0}))
        for d_in in args.d_in
        for d_sae in args.d_sae
        for l0 in args.target_l0
    ]

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other processes slow every column alike)")
    print("FLOPs counted: 10 * d_in * d_sae per token (2 forward + 3 backward matmuls) for both libraries.")
    print("matmul = the five step matmuls alone (their FLOPs / sum of best times); frac = step FLOP/s / matmul.")
    header = (
        f"{'d_in x d_sae':<14}{'matmul GF/s':>12}{'jumpscope tok/s':>17}{'L0':>7}{'frac':>7}"
        f"{'sae-lens tok/s':>16}{'L0':>7}{'frac':>7}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ours, theirs = r["jumpscope"], r.get("sae-lens")
        sl = (
            f"{theirs['tps']:>16,.0f}{theirs['l0']:>7.1f}{theirs['frac']:>7.2f}{ours['tps'] / theirs['tps']:>7.2f}x"
            if theirs
            else f"{'-':>16}{'-':>7}{'-':>7}{'-':>8}"
        )
        print(
            f"{r['d_in']:>5} x {r['d_sae']:<6}{r['mm'] / 1e9:>12.1f}{ours['tps']:>17,.0f}"
            f"{ours['l0']:>7.1f}{ours['frac']:>7.2f}{sl}"
        )
    print()
    for r in rows:
        ours, theirs = r["jumpscope"], r.get("sae-lens")
        line = (
            f"d_in={r['d_in']} d_sae={r['d_sae']}: jumpscope {ours['tps']:,.0f} tok/s = {ours['frac']:.3f} "
            f"of the matmul rate (goal {GOAL_FRACTION}: {'met' if ours['frac'] >= GOAL_FRACTION else 'NOT met'})"
        )
        if theirs:
            ratio = ours["tps"] / theirs["tps"]
            line += f"; {ratio:.3f}x sae-lens (goal {GOAL_RATIO}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'})"
        print(line)
    for r in rows:
        sparse, dense = r.get("sparse"), r["jumpscope"]
        if sparse is None:
            continue
        goal = r["target_l0"] <= 64 and r["d_sae"] >= 16_384
        verdict = f" (goal {SPARSE_GOAL}: {'met' if sparse['frac'] >= SPARSE_GOAL else 'NOT met'})" if goal else ""
        print(
            f"d_in={r['d_in']} d_sae={r['d_sae']} L0 {sparse['l0']:.0f}: sparse step {sparse['tps']:,.0f} tok/s = "
            f"{sparse['frac']:.2f} of the dense matmul rate{verdict}; "
            f"{sparse['tps'] / dense['tps']:.2f}x the dense step"
        )


if __name__ == "__main__":
    main()
