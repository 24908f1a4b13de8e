"""The architecture registry: a fifth architecture is one module and one register call.

The toy architecture (toy_arch.py, offset ReLU with an L1 penalty and one extra tensor) is
registered by a fixture and trained through the real CLI; everything downstream (config
validation, the training loop, the native format, loading, the sweep's knob, the plots, the
job API) must take it without knowing its name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from tests.trainer.saes.toy_arch import TOY, OffsetReLUSAE
from trainer.formats.files import SAEFormatError
from trainer.formats.gemmascope import save_gemmascope
from trainer.formats.native import SAEMetadata, load_native, save_native
from trainer.formats.saelens import save_saelens
from trainer.formats.tensors import expected_shapes
from trainer.saes import registry
from trainer.saes.config import SAEConfig
from trainer.saes.registry import ArchitectureSpec
from trainer.training.config import sparsity_at, sparsity_coeff

BUILT_IN = ("jumprelu", "relu", "topk", "gated")
SYNTHETIC = [
    "--synthetic", "--synthetic-d-in", "16", "--synthetic-features", "32", "--synthetic-l0", "3",
    "--tokens", "8192", "--batch-size", "1024", "--width", "64", "--recipe", "short", "--device", "cpu",
    "--no-progress",
]  # fmt: skip


@pytest.fixture
def toy() -> Iterator[ArchitectureSpec]:
    """The toy architecture, registered for one test."""
    spec = registry.register(TOY)
    try:
        yield spec
    finally:
        registry.unregister(TOY.name)


def test_the_built_in_architectures_in_registration_order() -> None:
    assert registry.names() == BUILT_IN
    assert [s.name for s in registry.specs()] == list(BUILT_IN)
    penalties = {s.name: s.penalty for s in registry.specs()}
    assert penalties == {"jumprelu": "l0", "relu": "l1", "topk": "none", "gated": "l1"}
    assert [s.name for s in registry.specs() if s.gemmascope] == ["jumprelu"]
    for spec in registry.specs():
        assert spec.sae_class().__name__.lower().startswith(spec.name)


def test_unknown_names_fail_clearly_listing_the_registered_ones(toy: ArchitectureSpec) -> None:
    listing = r"\(registered: jumprelu, relu, topk, gated, toy\)"
    with pytest.raises(ValueError, match=r"unknown architecture 'nope' " + listing):
        registry.get("nope")
    with pytest.raises(ValueError, match=r"architecture must be one of jumprelu, relu, topk, gated, toy, got 'nope'"):
        SAEConfig(d_in=16, d_sae=48, architecture="nope")


def test_register_unregister_and_what_a_spec_must_say(toy: ArchitectureSpec) -> None:
    assert registry.names() == (*BUILT_IN, "toy") and registry.get("toy") is toy
    assert registry.register(TOY) is TOY  # the same spec again: a no-op
    with pytest.raises(ValueError, match="already registered with a different spec"):
        registry.register(replace(TOY, default_coeff=1.0))
    with pytest.raises(ValueError, match="SAELens name 'topk' already belongs to 'topk'"):
        registry.register(replace(TOY, name="toy2", saelens_name="topk"))
    bad = {
        "the knob is lambda exactly when there is a penalty": {"knob": "k"},
        "knob must be one of lambda, k": {"knob": "alpha"},
        "penalty must be one of l0, l1, none": {"penalty": "l2"},
        "extra tensor names must be distinct": {"extra_tensors": ("b_enc",)},
        "nonnegative_tensors must be among the extra tensors": {"nonnegative_tensors": ("threshold",)},
        "holds exactly one extra tensor, threshold": {"gemmascope": True},
        "sae_class_path must look like": {"sae_class_path": "OffsetReLUSAE"},
        "the name must be": {"name": "Toy Arch"},
    }
    for message, change in bad.items():
        with pytest.raises(ValueError, match=message):
            replace(TOY, **change)  # type: ignore[arg-type]
    registry.unregister("toy")
    assert registry.names() == BUILT_IN
    registry.register(TOY)  # for the fixture's unregister


def test_the_names_are_torch_free() -> None:
    """The CLI and the web process read the registry, SAEConfig and FORMATS without loading torch."""
    code = (
        "import sys\nimport trainer.saes, trainer.saes.registry, trainer.saes.config, trainer.formats, "
        "trainer.training.config\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_everything_downstream_reads_the_spec(toy: ArchitectureSpec, tmp_path: Path) -> None:
    cfg = tiny_sae_cfg(architecture="toy")
    assert expected_shapes(cfg)["offset"] == (cfg.d_sae,)
    train = tiny_train_cfg(sparsity_warmup_steps=4)
    assert sparsity_coeff(cfg, train) == TOY.default_coeff
    assert [sparsity_at(s, 0.5, train, "toy") for s in (0, 2, 8)] == [0.0, 0.25, 0.5]  # l1: it warms up
    sae = registry.build_sae(cfg)
    assert isinstance(sae, OffsetReLUSAE)
    with torch.no_grad():
        sae.offset.uniform_(0.0, 0.1)
    folded = sae.fold(2.0)
    x = torch.randn(5, cfg.d_in)
    torch.testing.assert_close(folded.encode(2.0 * x), 2.0 * sae.encode(x))  # fold: latents C times
    with pytest.raises(SAEFormatError, match="SAELens has no 'toy' architecture"):
        save_saelens(tmp_path / "sl", folded, SAEMetadata())
    with pytest.raises(SAEFormatError, match="holds JumpReLU SAEs only; this SAE is 'toy'"):
        save_gemmascope(tmp_path / "gs", folded)
    assert not (tmp_path / "sl").exists() and not (tmp_path / "gs").exists()
    loaded = load_native(save_native(tmp_path / "native", folded, SAEMetadata())).sae
    torch.testing.assert_close(loaded.encode(x), folded.encode(x))


def test_a_fifth_architecture_trains_through_the_cli_and_reloads(toy: ArchitectureSpec, tmp_path: Path) -> None:
    from app.cli import app

    runner = CliRunner()
    out = tmp_path / "toy-sae"
    result = runner.invoke(app, ["train", *SYNTHETIC, "--arch", "toy", "--l1-coeff", "0.01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "toy" and (cfg["d_in"], cfg["d_sae"]) == (16, 64) and "k" not in cfg
    assert cfg["training"]["sparsity_coeff"] == 0.01
    assert set(load_file(str(out / "sae.safetensors"))) == {"W_enc", "W_dec", "b_enc", "b_dec", "offset"}

    loaded = load_native(out)
    assert isinstance(loaded.sae, OffsetReLUSAE) and loaded.sae.cfg.architecture == "toy"
    x = torch.randn(256, 16) * loaded.meta.normalization_scale / 4
    f = loaded.sae.encode(x)
    assert f.shape == (256, 64) and bool((f >= 0).all()) and 0 < float((f > 0).float().sum(-1).mean()) < 64

    # The lambda flag follows the penalty kind: an L1 architecture refuses --l0-coeff.
    result = runner.invoke(app, ["train", *SYNTHETIC, "--arch", "toy", "--l0-coeff", "0.01", "--out", str(out)])
    assert result.exit_code != 0 and "--l0-coeff is for --arch jumprelu; toy takes --l1-coeff" in result.output


def test_a_fifth_architecture_in_the_sweep_plots_and_job_api(toy: ArchitectureSpec) -> None:
    from app.jobs.schemas import TrainJobParams
    from app.sweeps.chart import STYLE, style
    from trainer.sweep.grid import SweepConfig, SweepPoint

    point = SweepPoint("toy", 0.01)
    assert point.knob == "lambda" and point.slug == "toy-lambda0.01"
    assert [p.architecture for p in SweepConfig(grid={"toy": (0.01,), "relu": (0.1,)}).points()] == ["relu", "toy"]
    assert style("toy") not in STYLE.values() and style("jumprelu") == STYLE["jumprelu"]
    assert TrainJobParams(name="t", architecture="toy").architecture == "toy"
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        TrainJobParams(name="t", architecture="nope")
