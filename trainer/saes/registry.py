"""The architecture registry: the one place that lists which SAE architectures exist.

Each architecture is one module under trainer/saes/ (the torch code) and one `register(...)`
call below (the facts the rest of the tree needs without importing torch): the CLI's choices
and help, the training loop's coefficient and warm-up, the file formats' tensor names and
SAELens / Gemma Scope compatibility, the sweep's knob. Nothing else in the tree lists
architectures; it asks this module.

Adding an architecture:
    1. write trainer/saes/NAME.py with a subclass of `trainer.saes.base.SAE`
       (encode, training_step, and the extra-tensor hooks if it has extra tensors);
    2. add one `register(ArchitectureSpec(...))` call at the bottom of this file.

This module never imports torch: the CLI (`jumpscope --help`) and the web process read the
names. The class is imported only when an SAE is built (`build_sae`, `ArchitectureSpec.sae_class`).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from trainer.saes.base import SAE
    from trainer.saes.config import SAEConfig

Knob = Literal["lambda", "k"]
"""What a sweep varies to move an architecture along the sparsity axis."""
Penalty = Literal["l0", "l1", "none"]
"""The sparsity penalty an architecture's loss carries (see `ArchitectureSpec.penalty`)."""

STANDARD_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
"""The tensors every SAE stores: W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the tree needs to know about one SAE architecture, without importing its code."""

    name: str
    """The name in configs, cfg.json, the CLI's --arch and the API: lowercase, digits, - and _."""
    summary: str
    """One line for --help and the docs: the activation and the loss."""
    knob: Knob
    """The sparsity knob: "lambda" (the penalty's coefficient) or "k" (active latents per token)."""
    penalty: Penalty
    """The sparsity penalty of the loss, which decides three things:
    - which CLI coefficient applies: "l0" -> --l0-coeff, "l1" -> --l1-coeff, "none" -> neither;
    - whether the coefficient warms up from 0 (TrainConfig.sparsity_warmup_steps): not for "none";
    - what `SAE.training_step(x, coeff)` gets: lambda of the penalty, or for "none" the
      auxiliary loss weight (TrainConfig.aux_coeff)."""
    default_coeff: float
    """lambda when the run sets none, in units where E||x||^2 = 1 (0 for penalty "none")."""
    sae_class_path: str
    """"module:Class" of the SAE subclass, imported on first use: "trainer.saes.jumprelu:JumpReLUSAE"."""
    extra_tensors: tuple[str, ...] = ()
    """Tensors stored beside the four standard ones, each of shape (d_sae,), e.g. ("threshold",)."""
    nonnegative_tensors: tuple[str, ...] = ()
    """Extra tensors that a loaded file must hold no negative value in (thresholds)."""
    saelens_name: str | None = None
    """SAELens' name for the architecture (cfg.json "architecture"), or None if SAELens has none."""
    gemmascope: bool = False
    """Whether a Gemma Scope params.npz can hold it (W_enc, W_dec, b_enc, b_dec, threshold only)."""

    def __post_init__(self) -> None:
        where = f"architecture {self.name!r}"
        if not _NAME.match(self.name):
            raise ValueError(f"{where}: the name must be 1-32 of a-z, 0-9, - and _, starting with a letter or digit")
        if self.knob not in get_args(Knob):
            raise ValueError(f"{where}: knob must be one of {', '.join(get_args(Knob))}, got {self.knob!r}")
        if self.penalty not in get_args(Penalty):
            raise ValueError(f"{where}: penalty must be one of {', '.join(get_args(Penalty))}, got {self.penalty!r}")
        if (self.knob == "lambda") != (self.penalty != "none"):
            raise ValueError(f"{where}: the knob is lambda exactly when there is a penalty (knob k has none)")
        if self.default_coeff < 0 or (self.penalty == "none" and self.default_coeff != 0):
            raise ValueError(f"{where}: default_coeff must be >= 0, and 0 without a penalty")
        if not _CLASS_PATH.match(self.sae_class_path):
            raise ValueError(f"{where}: sae_class_path must look like 'package.module:Class'")
        clash = [t for t in self.extra_tensors if not t.isidentifier() or t in STANDARD_TENSORS]
        if clash or len(set(self.extra_tensors)) != len(self.extra_tensors):
            raise ValueError(f"{where}: extra tensor names must be distinct identifiers other than {STANDARD_TENSORS}")
        if not set(self.nonnegative_tensors) <= set(self.extra_tensors):
            raise ValueError(f"{where}: nonnegative_tensors must be among the extra tensors")
        if self.gemmascope and self.extra_tensors != ("threshold",):
            raise ValueError(f"{where}: a Gemma Scope params.npz holds exactly one extra tensor, threshold")

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every tensor an inference-form SAE of this architecture stores, standard ones first."""
        return STANDARD_TENSORS + self.extra_tensors

    def sae_class(self) -> type[SAE]:
        """The SAE subclass (imports its module, and torch, on first use)."""
        module_name, class_name = self.sae_class_path.split(":")
        cls: type[SAE] = getattr(importlib.import_module(module_name), class_name)
        return cls


_SPECS: dict[str, ArchitectureSpec] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Add an architecture; registering the same spec again is a no-op, a different one an error."""
    existing = _SPECS.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"architecture {spec.name!r} is already registered with a different spec")
    if spec.saelens_name is not None:
        other = next((s.name for s in _SPECS.values() if s.saelens_name == spec.saelens_name), spec.name)
        if other != spec.name:
            raise ValueError(
                f"architecture {spec.name!r}: SAELens name {spec.saelens_name!r} already belongs to {other!r}"
            )
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an architecture (for tests that register a temporary one)."""
    get(name)
    del _SPECS[name]


def get(name: str) -> ArchitectureSpec:
    """The spec of a registered architecture; a ValueError naming every registered one otherwise."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown architecture {name!r} (registered: {', '.join(_SPECS)})")
    return spec


def names() -> tuple[str, ...]:
    """Every registered architecture's name, in registration order."""
    return tuple(_SPECS)


def specs() -> tuple[ArchitectureSpec, ...]:
    """Every registered architecture's spec, in registration order."""
    return tuple(_SPECS.values())


def build_sae(cfg: SAEConfig) -> SAE:
    """A freshly initialised (training-form) SAE of cfg.architecture."""
    return get(cfg.architecture).sae_class()(cfg)


# -- the built-in architectures ---------------------------------------------------------
register(
    ArchitectureSpec(
        name="jumprelu",
        summary="JumpReLU (the paper): f = pre * H(pre - theta), lambda * L0 trained through STEs",
        knob="lambda",
        penalty="l0",
        default_coeff=1e-3,  # GS Fig. 3: the 9B middle-layer 131k SAEs
        sae_class_path="trainer.saes.jumprelu:JumpReLUSAE",
        extra_tensors=("threshold",),
        nonnegative_tensors=("threshold",),
        saelens_name="jumprelu",
        gemmascope=True,
    )
)
register(
    ArchitectureSpec(
        name="relu",
        summary="ReLU (Bricken et al. 2023): f = relu(pre), lambda * decoder-norm-weighted L1",
        knob="lambda",
        penalty="l1",
        default_coeff=5.0e-3,  # L1 on f_i*||d_i||; swept in practice, this gives L0 ~ 50-100 on LM data
        sae_class_path="trainer.saes.relu:ReLUSAE",
        saelens_name="standard",
    )
)
register(
    ArchitectureSpec(
        name="topk",
        summary="TopK (Gao et al. 2024): the k largest pre-activations, relu; no penalty, AuxK loss",
        knob="k",
        penalty="none",
        default_coeff=0.0,  # TopK has no penalty: k sets L0
        sae_class_path="trainer.saes.topk:TopKSAE",
        saelens_name="topk",
    )
)
register(
    ArchitectureSpec(
        name="gated",
        summary="Gated (Rajamanoharan et al. 2024a): gate path chooses, magnitude path sizes; L1 on the gate",
        knob="lambda",
        penalty="l1",
        default_coeff=5.0e-3,  # L1 on relu(pi_gate)*||d_i|| (Gated SAE paper, RI-L1)
        sae_class_path="trainer.saes.gated:GatedSAE",
        extra_tensors=("r_mag", "b_mag"),
        saelens_name="gated",
    )
)


__all__ = [
    "STANDARD_TENSORS",
    "ArchitectureSpec",
    "Knob",
    "Penalty",
    "build_sae",
    "get",
    "names",
    "register",
    "specs",
    "unregister",
]
