"""The typed, documented config of a training run, and the schedules it implies.

Every default is the JumpReLU paper's / Gemma Scope recipe (../shared/docs/jumprelu.md §3);
every deviation is a named field. `resolve_recipe` applies the named short-run recipe. The
SAE's own config is `trainer.saes.config.SAEConfig`; what differs per architecture (default
lambda, whether it warms up) comes from `trainer.saes.registry`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from trainer.device import Device
from trainer.saes import registry
from trainer.saes.config import BDecInit, SAEConfig

Recipe = Literal["paper", "short"]
DecoderInit = Literal["random", "data"]
"""Where decoder rows start: random directions (the paper) or centred training activations
(trainer/training/data_init.py)."""
StepKind = Literal["dense", "sparse", "auto"]
"""Which training step runs (see TrainConfig.step)."""


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's recipe (jumprelu.md §3)."""

    tokens: int = 4_000_000_000
    """Training tokens in total (Gemma Scope: 4B at width 16k)."""
    batch_size: int = 4096
    """Tokens per optimiser step (global, across all DDP ranks)."""
    lr: float = 7e-5
    """Adam learning rate eta."""
    adam_betas: tuple[float, float] = (0.0, 0.999)
    """Adam (beta1, beta2): beta1 = 0 as in the paper."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    lr_warmup_steps: int = 1000
    """Cosine warm-up of the learning rate from lr_warmup_start * lr to lr."""
    lr_warmup_start: float = 0.1
    """Fraction of lr the warm-up starts from."""
    lr_decay_steps: int = 0
    """Deviation: linear decay to zero over the last N steps (0 = none, as in the paper)."""
    sparsity_coeff: float | None = None
    """lambda of the sparsity penalty: L0 (jumprelu) or L1 (relu, gated). None = the architecture's
    default (its registry spec's default_coeff)."""
    sparsity_warmup_steps: int = 10_000
    """Linear warm-up of lambda from 0 over N steps (not used by topk)."""
    aux_coeff: float = 1 / 32
    """TopK: AuxK loss coefficient alpha (Gao et al. 2024)."""
    dead_tokens: int = 10_000_000
    """TopK: a latent that has not fired for this many tokens counts as dead for AuxK."""
    grad_clip: float | None = None
    """Deviation: clip the gradient norm (None, as in the paper; SAELens and DL use 1.0)."""
    normalize: bool = True
    """Scale inputs to unit mean squared norm; the scale is folded back into the saved SAE."""
    norm_tokens: int = 409_600
    """Tokens used to estimate the normalisation scale C (DL uses 100 batches)."""
    b_dec_init: BDecInit | None = None
    """Deviation for short runs: start b_dec at the data mean. None = the architecture's paper
    (its SAE class's b_dec_init): zeros (JumpReLU, ReLU, Gated), mean (TopK). Residual streams carry a large constant
    component that Adam needs thousands of steps to move a zero b_dec onto."""
    decoder_init: DecoderInit = "random"
    """Deviation for short runs: "data" starts each decoder row at a centred training activation (unit norm)
    and the encoder at its transpose, instead of the paper's random directions (trainer/training/data_init.py)."""
    threshold_init_rate: float | None = None
    """Deviation for short runs (JumpReLU): start each threshold at the (1 - p) quantile of its latent's
    pre-activations on the normalisation sample, so every latent fires on a fraction p of tokens at step 0
    (None: the SAE config's threshold_init for all, as the paper)."""
    threshold_lr_scale: float = 1.0
    """Deviation (JumpReLU): the thresholds' learning rate as a multiple of lr (1 = one rate, as the paper)."""
    resample_every: int = 0
    """Deviation for short runs: every N steps until the learning-rate decay, restart the latents that have not
    fired for dead_tokens at error directions of the batch (trainer/training/resample.py; 0 = never, as the
    paper). One process only (not under torchrun)."""
    seed_dead_moments: bool = False
    """Deviation (the short recipe's): when a latent becomes dead and an auxiliary loss will train it (TopK's
    AuxK, JumpReLU's dead_aux), give it an average live latent's Adam moments first, so that the first
    auxiliary gradients after its silence move it by about the learning rate, not 10-30x that
    (trainer/training/resample.py: seed_newly_dead). False: Adam as it is, as the paper and Gao et al."""
    max_norm_ratio: float | None = None
    """Deviation for small batches: scale every training activation whose norm exceeds this multiple of the
    median token norm (of the normalisation sample) down to that norm, direction kept, so that a rare
    massive activation cannot dominate one batch's gradient (trainer/training/massive_tokens.py). None:
    every activation as it is (the paper). Evaluation always sees the activations unclipped."""
    update_clip: float | None = None
    """Deviation for small batches: before each Adam step, clip every gradient element to this multiple of
    the root of its second moment, so no parameter moves by more than about this many learning rates in
    one step, while the activations stay as they are (trainer/training/update_clip.py). None: Adam as it
    is (the paper)."""
    shuffle_buffer: int = 0
    """Tokens held in the shuffle buffer (0 = no extra shuffling, e.g. for pre-shuffled data). When it can hold
    a whole finite source (a cache of at most this many activations), the data is read once into memory
    and every epoch is a fresh random permutation (trainer.data.activations.EpochShuffle)."""
    seed: int = 0
    """Seed for initialisation and shuffling."""
    device: Device = "auto"
    """auto = CUDA when present, else CPU."""
    autocast_bf16: bool = False
    """GPU only: bf16 autocast for the matmuls; master weights and thresholds stay fp32."""
    keep_freed_memory: bool = True
    """CPU speed: let glibc reuse freed large buffers instead of re-faulting them every step
    (about 2x at d_in=640; the process keeps its peak memory). See trainer/training/malloc.py."""
    checkpoint_every: int = 1000
    """Write an atomic checkpoint every N steps (0 = only at the end)."""
    log_every: int = 10
    """Append a metrics.jsonl line every N steps."""
    recipe: Recipe = "paper"
    """paper (defaults above) or short (jumprelu.md §3.3): see resolve_recipe."""
    step: StepKind = "auto"
    """dense: every matmul dense. sparse: f held at its active entries, so that decoding and the weight
    gradients cost B x L0 x d_in (SAE.sparse_training_step; the same training within float tolerance).
    auto: sparse once the last step's L0 is at most d_sae / 20 on a CPU, d_sae / 64 on a GPU
    (trainer.training.trainer.AUTO_SPARSE_MAX_DENSITY; dense early, while L0 is high), for
    architectures that have a sparse step, unless bf16 autocast is on (there the dense step's bf16
    matmuls are faster on the GPUs measured); dense otherwise. Under bf16 autocast the sparse step
    runs its one dense matmul (the encoder's) in bf16 and the sparse rest in fp32."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens ({self.tokens}) must be at least batch_size ({self.batch_size})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.step not in get_args(StepKind):
            raise ValueError(f"step must be dense, sparse or auto, got {self.step!r}")
        if self.recipe not in get_args(Recipe):
            raise ValueError(f"recipe must be paper or short, got {self.recipe!r}")
        if self.decoder_init not in get_args(DecoderInit):
            raise ValueError(f"decoder_init must be random or data, got {self.decoder_init!r}")
        if self.threshold_init_rate is not None and not 0 < self.threshold_init_rate < 1:
            raise ValueError(f"threshold_init_rate must be in (0, 1), got {self.threshold_init_rate}")
        if self.resample_every < 0:
            raise ValueError(f"resample_every must be 0 (never) or a number of steps, got {self.resample_every}")
        if self.update_clip is not None and not self.update_clip > 0:
            raise ValueError(f"update_clip must be positive (or None: Adam as it is), got {self.update_clip}")
        if self.max_norm_ratio is not None and not self.max_norm_ratio > 0:
            raise ValueError(f"max_norm_ratio must be positive (or None: no clipping), got {self.max_norm_ratio}")
        if self.threshold_lr_scale <= 0:
            raise ValueError(f"threshold_lr_scale must be positive, got {self.threshold_lr_scale}")
        if self.device not in get_args(Device):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size


def sparsity_coeff(sae: SAEConfig, train: TrainConfig) -> float:
    """The coefficient the SAE's training step gets: the run's lambda, or the architecture's
    default (registry spec, in units where E||x||^2 = 1); for an architecture without a
    sparsity penalty (TopK) the auxiliary loss weight alpha."""
    spec = registry.get(sae.architecture)
    if spec.penalty == "none":
        return train.aux_coeff
    if train.sparsity_coeff is not None:
        return train.sparsity_coeff
    return spec.default_coeff


SHORT_THRESHOLD_RATE = 0.01
"""The short recipe's threshold_init_rate: every JumpReLU latent starts firing on 1% of tokens."""
SHORT_THRESHOLD_BETAS = (0.9, 0.999)
"""The short recipe's Adam betas for SAEs with thresholds (JumpReLU): momentum 0.9 instead of the paper's 0.
With update_clip it cut JumpReLU's dead latents from 56% to 24% and its delta LM loss by a fifth at L0 ~20
(--quick budget, validation split); TopK trained worse with it (k 12: 83% dead), so the other architectures
keep the paper's 0 (README, "Adam's momentum for JumpReLU")."""
SHORT_UPDATE_CLIP = 3.0
"""The short recipe's update_clip: no gradient element beyond 3x the root of its own second moment, so
one batch that holds a rare massive activation (Gemma 3 270M's apostrophes, ~10x the median norm)
cannot move the weights by many learning rates, while every token is trained on at its real size
(README, "Massive activations and FVU")."""


def resolve_recipe(sae: SAEConfig, train: TrainConfig, explicit: set[str]) -> None:
    """Apply the `short` recipe (jumprelu.md §3.3) to every field the user did not set.

    The paper's recipe is tuned for millions of steps; in a few thousand steps log(theta)
    under Adam cannot climb from 0.001, so the short recipe trains raw theta, raises the
    learning rate, scales both warm-ups to the run length and starts b_dec at the data mean.
    It also starts every decoder row at a centred training activation (no random mass in the
    residual stream's quiet directions) and, for JumpReLU, every threshold at its latent's 1%
    firing quantile, with Adam's beta1 at 0.9 for JumpReLU (the other architectures keep the paper's
    0). It bounds every Adam step per element (update_clip 3), which lets short runs take the small
    batches they need without one rare massive activation blowing a run up, while the SAE still
    learns those tokens at their real size (max_norm_ratio, which scaled them down, was the recipe's
    until session 14 and stays a named option). AuxK on JumpReLU's dead latents (SAEConfig.dead_aux)
    is a named option, not part of the recipe (README, "What was tried for short runs").
    """
    if train.recipe != "short":
        return
    steps = max(1, train.total_steps)
    if "threshold_param" not in explicit:
        sae.threshold_param = "raw"
    if "lr" not in explicit:
        train.lr = 1e-3
    if "lr_warmup_steps" not in explicit:
        train.lr_warmup_steps = max(1, steps // 20)
    if "sparsity_warmup_steps" not in explicit:
        train.sparsity_warmup_steps = max(1, steps // 5)
    if "lr_decay_steps" not in explicit:
        train.lr_decay_steps = steps // 5
    if "b_dec_init" not in explicit:
        train.b_dec_init = "mean"
    if "dead_tokens" not in explicit:
        train.dead_tokens = min(train.dead_tokens, max(train.batch_size, train.tokens // 10))
    # Start in the data's span and already sparse (trainer/training/data_init.py; README, "What was tried")
    if "decoder_init" not in explicit:
        train.decoder_init = "data"
    if "seed_dead_moments" not in explicit:
        train.seed_dead_moments = True
    if "update_clip" not in explicit:
        train.update_clip = SHORT_UPDATE_CLIP
    thresholds = "threshold" in registry.get(sae.architecture).extra_tensors
    if thresholds and "threshold_init_rate" not in explicit:
        train.threshold_init_rate = SHORT_THRESHOLD_RATE
    if thresholds and "adam_betas" not in explicit:
        train.adam_betas = SHORT_THRESHOLD_BETAS


def schedule_warnings(sae: SAEConfig, train: TrainConfig, explicit: set[str]) -> list[str]:
    """Why this run is too short for its recipe's schedules, one sentence each (empty when it is not).

    The paper's recipe warms the learning rate up over 1,000 steps and lambda over 10,000: a run of
    a few hundred steps never reaches either and comes out neither sparse nor a good reconstruction.
    """
    sae, train = dataclasses.replace(sae), dataclasses.replace(train)
    resolve_recipe(sae, train, explicit)
    steps = train.total_steps
    fits = (
        "use --recipe short (it scales both warm-ups to the run)"
        if train.recipe != "short"
        else "shorten the warm-ups or train longer"
    )
    warnings = []
    if registry.get(sae.architecture).penalty != "none" and steps < train.sparsity_warmup_steps:
        warnings.append(
            f"this run has {steps:,} steps but lambda warms up over {train.sparsity_warmup_steps:,}: it never "
            f"reaches its target and the SAE will come out far from sparse; {fits}, or train for at least "
            f"{train.sparsity_warmup_steps * train.batch_size:,} tokens"
        )
    if steps < train.lr_warmup_steps:
        warnings.append(
            f"this run has {steps:,} steps but the learning rate warms up over {train.lr_warmup_steps:,}: it "
            f"never reaches {train.lr:g}; {fits}"
        )
    return warnings


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate at `step` (0-based): cosine warm-up from 0.1*lr, optional linear decay."""
    lr = train.lr
    if train.lr_warmup_steps > 0 and step < train.lr_warmup_steps:
        progress = step / train.lr_warmup_steps
        start = train.lr_warmup_start
        lr *= start + (1 - start) * (1 - math.cos(math.pi * progress)) / 2
    if train.lr_decay_steps > 0:
        decay_start = train.total_steps - train.lr_decay_steps
        if step >= decay_start:
            lr *= max(0.0, (train.total_steps - step) / train.lr_decay_steps)
    return lr


def sparsity_at(step: int, coeff: float, train: TrainConfig, architecture: str = "jumprelu") -> float:
    """lambda at `step`: linear warm-up from 0 over sparsity_warmup_steps; an architecture
    without a sparsity penalty (TopK: coeff is its AuxK weight) has none."""
    if train.sparsity_warmup_steps <= 0 or registry.get(architecture).penalty == "none":
        return coeff
    return coeff * min(1.0, step / train.sparsity_warmup_steps)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, ignoring keys it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: (tuple(v) if k == "adam_betas" else v) for k, v in data.items() if k in names}
    return cls(**kwargs)


__all__ = [
    "TrainConfig",
    "from_dict",
    "lr_at",
    "resolve_recipe",
    "schedule_warnings",
    "sparsity_at",
    "sparsity_coeff",
    "to_dict",
]
