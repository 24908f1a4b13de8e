"""SAE file formats: native, Gemma Scope params.npz and SAELens, against the real sae-lens."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from tests.conftest import tiny_sae_cfg
from trainer.formats import detect_format, gemmascope, load_sae, save_sae
from trainer.formats.files import SAEFormatError
from trainer.formats.gemmascope import load_gemmascope, save_gemmascope
from trainer.formats.native import LoadedSAE, SAEMetadata, load_native, save_native
from trainer.formats.saelens import load_saelens, save_saelens
from trainer.saes.base import SAE
from trainer.saes.registry import build_sae

ARCHS = ["jumprelu", "relu", "topk", "gated"]
D_IN, D_SAE, K = 16, 48, 8


def random_sae(arch: str = "jumprelu", scale: float = 2.5) -> SAE:
    """A folded (inference-form) SAE with random weights and positive thresholds."""
    sae = build_sae(tiny_sae_cfg(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        if arch == "jumprelu":
            sae.log_threshold.copy_((torch.rand(D_SAE) * 0.5 + 0.05).log())
    return sae.fold(scale)


def full_meta(**overrides: Any) -> SAEMetadata:
    base: dict[str, Any] = {
        "model": "google/gemma-2-2b",
        "layer": 3,
        "site": "resid",
        "dataset": "monology/pile-uncopyrighted",
        "context_size": 128,
        "prepend_bos": False,
        "normalization_scale": 2.5,
        "tokens_trained": 12345,
        "extra": {"eval": {"fvu": 0.25, "l0": 12.5}, "note": "test"},
    }
    return SAEMetadata(**{**base, **overrides})


def inputs(n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_IN) * 2


def assert_same_sae(a: SAE, b: SAE, *, exact: bool = True) -> None:
    """Same architecture, tensors and encode/decode outputs on random inputs."""
    assert type(a) is type(b)
    assert a.cfg.architecture == b.cfg.architecture
    if a.cfg.architecture == "topk":
        assert a.cfg.k == b.cfg.k
    ta, tb = a.inference_tensors(), b.inference_tensors()
    assert ta.keys() == tb.keys()
    for name in ta:
        if exact:
            assert torch.equal(ta[name], tb[name]), name
        else:
            assert_close(ta[name], tb[name], msg=name)
    x = inputs()
    fa, fb = a.encode(x), b.encode(x)
    assert 0 < int((fa > 0).sum()) < fa.numel(), "test SAE should have some but not all latents active"
    assert_close(fa, fb)
    assert_close(a.decode(fa), b.decode(fb))


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_native_round_trip(tmp_path: Path, arch: str) -> None:
    sae, meta = random_sae(arch), full_meta()
    save_native(tmp_path, sae, meta)
    loaded = load_native(tmp_path)
    assert isinstance(loaded, LoadedSAE)
    assert_same_sae(sae, loaded.sae)
    assert loaded.meta == meta


def test_native_extra_cannot_override_core_fields(tmp_path: Path) -> None:
    save_native(tmp_path, random_sae("jumprelu"), full_meta(extra={"architecture": "relu", "d_in": 3, "note": "x"}))
    loaded = load_native(tmp_path)
    assert loaded.sae.cfg.architecture == "jumprelu" and loaded.sae.cfg.d_in == D_IN
    assert loaded.meta.extra == {"note": "x"}


def test_gemmascope_round_trip(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    written = save_gemmascope(tmp_path, sae)
    assert written == tmp_path / "params.npz"
    meta = full_meta()
    loaded = load_gemmascope(tmp_path, meta=meta)
    assert_same_sae(sae, loaded.sae)
    assert loaded.meta is meta
    assert load_gemmascope(written).meta == SAEMetadata()  # the file itself, default metadata


def test_gemmascope_reexport_is_identical(tmp_path: Path) -> None:
    first = save_gemmascope(tmp_path / "a", random_sae("jumprelu"))
    second = save_gemmascope(tmp_path / "b" / "sae.npz", load_gemmascope(first).sae)
    assert second.name == "sae.npz"
    with np.load(first) as a, np.load(second) as b:
        assert set(a.files) == set(b.files) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
        for key in a.files:
            assert a[key].dtype == np.float32
            assert np.array_equal(a[key], b[key]), key
        assert a["W_enc"].shape == (D_IN, D_SAE) and a["W_dec"].shape == (D_SAE, D_IN)


def test_gemmascope_lowercase_keys_and_unit_scaling_factor(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    t = {k: v.numpy() for k, v in sae.inference_tensors().items()}
    path = tmp_path / "params.npz"
    np.savez(path, w_enc=t["W_enc"], w_dec=t["W_dec"], b_enc=t["b_enc"], b_dec=t["b_dec"],
             threshold=t["threshold"], scaling_factor=np.ones(D_SAE, np.float32))  # fmt: skip
    assert_same_sae(sae, load_gemmascope(path).sae)
    np.savez(path, **t, scaling_factor=np.full(D_SAE, 2.0, np.float32))
    with pytest.raises(SAEFormatError, match=r"scaling_factor is not all ones \(min 2, max 2\)"):
        load_gemmascope(path)


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_round_trip(tmp_path: Path, arch: str) -> None:
    sae, meta = random_sae(arch), full_meta()
    save_saelens(tmp_path, sae, meta)
    assert sorted(os.listdir(tmp_path)) == ["cfg.json", "sae_weights.safetensors"]
    loaded = load_saelens(tmp_path)
    assert_same_sae(sae, loaded.sae)
    assert loaded.meta == meta


def test_saelens_round_trip_keeps_unmapped_site(tmp_path: Path) -> None:
    meta = full_meta(site=None, layer=7, extra={"hook_name": "blocks.7.hook_resid_pre"})
    save_saelens(tmp_path, random_sae(), meta)
    assert json.loads((tmp_path / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.7.hook_resid_pre"
    assert load_saelens(tmp_path).meta == meta


def test_saelens_cfg_layout(tmp_path: Path) -> None:
    save_saelens(tmp_path, random_sae("topk"), full_meta(site="mlp", layer=5))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert list(cfg) == [
        "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
        "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm", "architecture",
    ]  # fmt: skip
    assert cfg["architecture"] == "topk" and cfg["k"] == K
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    md = cfg["metadata"]
    assert md["hook_name"] == "blocks.5.hook_mlp_out"
    assert md["model_name"] == "google/gemma-2-2b" and md["dataset_path"] == "monology/pile-uncopyrighted"
    assert md["context_size"] == 128 and md["prepend_bos"] is False


# -- the real sae-lens ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sae_lens() -> Any:
    return pytest.importorskip("sae_lens")


@pytest.mark.parametrize("arch", ARCHS)
def test_our_saelens_export_loads_in_sae_lens(tmp_path: Path, sae_lens: Any, arch: str) -> None:
    sae = random_sae(arch)
    save_saelens(tmp_path, sae, full_meta())
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    expected = {"jumprelu": "JumpReLUSAE", "relu": "StandardSAE", "topk": "TopKSAE", "gated": "GatedSAE"}[arch]
    assert type(theirs).__name__ == expected
    assert theirs.cfg.apply_b_dec_to_input is False
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "google/gemma-2-2b"
    x = inputs()
    f = sae.encode(x)
    assert 0 < int((f > 0).sum()) < f.numel()
    with torch.no_grad():
        assert_close(theirs.encode(x), f)
        assert_close(theirs.decode(f), sae.decode(f))


def test_attn_export_reshapes_hook_z_in_sae_lens(tmp_path: Path, sae_lens: Any) -> None:
    sae = random_sae("jumprelu")
    save_saelens(tmp_path, sae, full_meta(site="attn", layer=2))
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.metadata.hook_name == "blocks.2.attn.hook_z"
    assert theirs.cfg.reshape_activations == "hook_z"
    x = inputs()  # (B, heads * head_dim) for us, (B, heads, head_dim) at hook_z
    with torch.no_grad():
        f = theirs.encode(x.view(-1, 4, 4))
        assert_close(f, sae.encode(x))
        assert_close(theirs.decode(f).flatten(1), sae.decode(f))
    assert load_saelens(tmp_path).meta.site == "attn"


def _random_saelens_sae(sae_lens: Any, arch: str, **cfg: Any) -> Any:
    classes = {
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    metadata = sae_lens.saes.sae.SAEMetadata(
        model_name="gemma-2-2b", hook_name="blocks.5.hook_mlp_out", context_size=256, dataset_path="ds"
    )
    theirs = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True, metadata=metadata, **cfg))
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        if arch == "jumprelu":
            theirs.threshold.copy_(torch.rand(D_SAE) * 0.5 + 0.05)
    return theirs


@pytest.mark.parametrize(
    ("arch", "ours", "cfg"),
    [
        ("jumprelu", "jumprelu", {}),
        ("standard", "relu", {}),
        ("topk", "topk", {"k": K}),
        ("topk", "topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
        ("gated", "gated", {}),
    ],
)
def test_sae_lens_saved_folder_loads_with_us(
    tmp_path: Path, sae_lens: Any, arch: str, ours: str, cfg: dict[str, Any]
) -> None:
    theirs = _random_saelens_sae(sae_lens, arch, **cfg)
    theirs.save_model(tmp_path)
    loaded = load_saelens(tmp_path)
    assert loaded.sae.cfg.architecture == ours
    meta = loaded.meta
    assert (meta.model, meta.site, meta.layer, meta.context_size, meta.dataset) == (
        "gemma-2-2b", "mlp", 5, 256, "ds",
    )  # fmt: skip
    assert meta.extra == {}
    x = inputs()
    with torch.no_grad():
        f = theirs.encode(x)
        assert 0 < int((f > 0).sum()) < f.numel()
        assert_close(loaded.sae.encode(x), f)
        assert_close(loaded.sae.decode(f), theirs.decode(f))


def test_sae_lens_normalised_checkpoint_is_folded(tmp_path: Path, sae_lens: Any) -> None:
    """expected_average_only_in with the checkpoint's activation_scaler.json folds exactly."""
    theirs = _random_saelens_sae(sae_lens, "jumprelu", normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path)
    with pytest.raises(SAEFormatError, match="normalize_activations is 'expected_average_only_in'"):
        load_saelens(tmp_path)
    s = 0.37
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s, "has_whitening": False}))
    loaded = load_saelens(tmp_path)
    assert loaded.meta.normalization_scale == pytest.approx(1 / s)
    x = inputs()
    with torch.no_grad():
        f = theirs.encode(x * s)  # SAELens expects inputs already scaled by s
        assert_close(loaded.sae.encode(x), f)
        assert_close(loaded.sae.decode(f), theirs.decode(f) / s)


@pytest.mark.parametrize("value", ["layer_norm", "constant_norm_rescale", "covariance_whitening"])
def test_saelens_refuses_input_dependent_normalisation(tmp_path: Path, value: str) -> None:
    save_saelens(tmp_path, random_sae(), full_meta())
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": value}))
    with pytest.raises(SAEFormatError, match=f"normalize_activations is '{value}'"):
        load_saelens(tmp_path)


def test_old_flat_saelens_config(tmp_path: Path, sae_lens: Any) -> None:
    """Pre-6 configs: flat, hook_point, boolean normalize_activations; sae-lens agrees."""
    sae = random_sae("jumprelu")
    t = {k: v.clone() for k, v in sae.inference_tensors().items()}
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    flat = {
        "architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32",
        "model_name": "gemma-2-2b", "hook_point": "blocks.9.hook_resid_post", "hook_point_layer": 9,
        "hook_point_head_index": None, "activation_fn_str": "relu", "apply_b_dec_to_input": False,
        "normalize_activations": False, "context_size": 1024, "prepend_bos": True,
        "dataset_path": "pile", "sae_lens_training_version": "3.13.0",
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(flat))
    loaded = load_saelens(tmp_path)
    assert (loaded.meta.site, loaded.meta.layer, loaded.meta.model) == ("resid", 9, "gemma-2-2b")
    assert (loaded.meta.context_size, loaded.meta.dataset, loaded.meta.extra) == (1024, "pile", {})
    assert_same_sae(sae, loaded.sae)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    x = inputs()
    with torch.no_grad():
        assert_close(loaded.sae.encode(x), theirs.encode(x))


def test_saelens_log_threshold_checkpoint(tmp_path: Path) -> None:
    """Older SAELens training checkpoints store log_threshold instead of threshold."""
    sae = random_sae("jumprelu")
    save_saelens(tmp_path, sae, full_meta())
    _edit_tensors(tmp_path, "saelens", lambda t: t.update(log_threshold=t.pop("threshold").log()))
    assert_same_sae(sae, load_saelens(tmp_path).sae, exact=False)  # exp(log(theta)) may round


def test_old_flat_topk_config(tmp_path: Path) -> None:
    sae = random_sae("topk")
    save_file(
        {k: v.contiguous() for k, v in sae.inference_tensors().items()}, str(tmp_path / "sae_weights.safetensors")
    )
    flat = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "hook_name": "blocks.1.hook_mlp_out",
            "activation_fn": "topk", "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": False}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(flat))
    loaded = load_saelens(tmp_path)
    assert (loaded.meta.site, loaded.meta.layer) == ("mlp", 1)
    assert_same_sae(sae, loaded.sae)


# -- dispatch ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["native", "gemmascope", "saelens"])
def test_detect_and_dispatch(tmp_path: Path, fmt: str) -> None:
    sae, meta = random_sae("jumprelu"), full_meta()
    written = save_sae(tmp_path / "sae", sae, meta, fmt)  # type: ignore[arg-type]
    assert detect_format(tmp_path / "sae") == fmt
    loaded = load_sae(tmp_path / "sae", meta=meta)
    assert_same_sae(sae, loaded.sae)
    assert loaded.meta == meta
    assert_same_sae(sae, load_sae(written, fmt, meta=meta).sae)  # type: ignore[arg-type]


def test_detect_npz_file_and_ambiguous_folder(tmp_path: Path) -> None:
    path = save_gemmascope(tmp_path / "x.npz", random_sae())
    assert detect_format(path) == "gemmascope"
    both = tmp_path / "both"  # native and saelens weights side by side: cfg.json decides
    save_saelens(both, random_sae(), full_meta())
    save_native(both, random_sae(), full_meta())
    assert detect_format(both) == "native"


def test_unknown_format_names(tmp_path: Path) -> None:
    with pytest.raises(SAEFormatError, match=r"unknown SAE format 'onnx' \(allowed: auto, native"):
        load_sae(tmp_path, "onnx")  # type: ignore[arg-type]
    with pytest.raises(SAEFormatError, match="unknown SAE format 'onnx'"):
        save_sae(tmp_path, random_sae(), full_meta(), "onnx")  # type: ignore[arg-type]


def test_folder_of_no_known_format(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "cfg.json").write_text(json.dumps({"d_model": 4}))
    pattern = r"no known SAE format \(looked for .*params\.npz.*sae\.safetensors.*sae_weights\.safetensors"
    with pytest.raises(SAEFormatError, match=pattern):
        detect_format(tmp_path)
    with pytest.raises(SAEFormatError, match="no known SAE format"):
        load_sae(tmp_path)
    with pytest.raises(SAEFormatError, match="does not exist"):
        load_sae(tmp_path / "missing")
    with pytest.raises(SAEFormatError, match=r"not a \.npz file"):
        detect_format(tmp_path / "notes.txt")


# -- bad input -----------------------------------------------------------------------------
def _write(tmp_path: Path, fmt: str, arch: str = "jumprelu") -> Path:
    save_sae(tmp_path, random_sae(arch), full_meta(), fmt)  # type: ignore[arg-type]
    return tmp_path


def _edit_tensors(folder: Path, fmt: str, edit: Any) -> None:
    """Rewrite the weights of a saved SAE with edit(dict of tensors) applied."""
    if fmt == "gemmascope":
        with np.load(folder / "params.npz") as data:
            tensors = {k: torch.from_numpy(data[k].copy()) for k in data.files}
        edit(tensors)
        np.savez(folder / "params.npz", **{k: v.numpy() for k, v in tensors.items()})
        return
    path = folder / ("sae.safetensors" if fmt == "native" else "sae_weights.safetensors")
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


FMTS = ["native", "gemmascope", "saelens"]


@pytest.mark.parametrize("fmt", FMTS)
def test_wrong_shape_names_tensor_and_both_shapes(tmp_path: Path, fmt: str) -> None:
    _edit_tensors(_write(tmp_path, fmt), fmt, lambda t: t.update(W_dec=t["W_dec"][:-1]))
    with pytest.raises(SAEFormatError, match=r"W_dec has shape \(47, 16\), expected \(48, 16\)"):
        load_sae(tmp_path)


@pytest.mark.parametrize("fmt", FMTS)
def test_nan_weights(tmp_path: Path, fmt: str) -> None:
    def poison(t: dict[str, torch.Tensor]) -> None:
        t["b_enc"][3] = float("nan")

    _edit_tensors(_write(tmp_path, fmt), fmt, poison)
    with pytest.raises(SAEFormatError, match=r"b_enc contains 1 NaN or infinite value"):
        load_sae(tmp_path)


@pytest.mark.parametrize("fmt", FMTS)
def test_missing_tensor(tmp_path: Path, fmt: str) -> None:
    _edit_tensors(_write(tmp_path, fmt), fmt, lambda t: t.pop("threshold"))
    with pytest.raises(SAEFormatError, match=r"missing tensor\(s\) threshold for a jumprelu SAE"):
        load_sae(tmp_path)


def test_missing_gated_tensor_in_saelens(tmp_path: Path) -> None:
    _edit_tensors(_write(tmp_path, "saelens", "gated"), "saelens", lambda t: t.pop("r_mag"))
    with pytest.raises(SAEFormatError, match=r"missing tensor\(s\) r_mag for a gated SAE"):
        load_saelens(tmp_path)


@pytest.mark.parametrize("fmt", ["gemmascope", "saelens"])
def test_unexpected_tensor(tmp_path: Path, fmt: str) -> None:
    _edit_tensors(_write(tmp_path, fmt), fmt, lambda t: t.update(W_skip=torch.zeros(D_IN, D_IN)))
    with pytest.raises(SAEFormatError, match=r"unexpected (array|tensor)\(s\) W_skip"):
        load_sae(tmp_path)


def test_integer_weights(tmp_path: Path) -> None:
    _edit_tensors(_write(tmp_path, "gemmascope"), "gemmascope", lambda t: t.update(b_dec=torch.zeros(D_IN).long()))
    with pytest.raises(SAEFormatError, match=r"b_dec has dtype torch.int64, expected a float dtype"):
        load_gemmascope(tmp_path)


def test_negative_threshold(tmp_path: Path) -> None:
    _edit_tensors(_write(tmp_path, "saelens"), "saelens", lambda t: t["threshold"].__setitem__(0, -1.0))
    with pytest.raises(SAEFormatError, match="threshold has negative values"):
        load_saelens(tmp_path)


@pytest.mark.parametrize(
    ("fmt", "arch", "message"),
    [
        ("native", "sparsemax", r"unknown architecture 'sparsemax' \(allowed: jumprelu, relu, topk, gated\)"),
        ("saelens", "matching_pursuit", r"unsupported SAELens architecture 'matching_pursuit' \(supported: "),
    ],
)
def test_unknown_architecture(tmp_path: Path, fmt: str, arch: str, message: str) -> None:
    _write(tmp_path, fmt)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": arch}))
    with pytest.raises(SAEFormatError, match=message):
        load_sae(tmp_path)


@pytest.mark.parametrize("fmt", ["native", "saelens"])
def test_missing_cfg_json(tmp_path: Path, fmt: str) -> None:
    (_write(tmp_path, fmt) / "cfg.json").unlink()
    with pytest.raises(SAEFormatError, match=r"no cfg\.json"):
        load_sae(tmp_path)


@pytest.mark.parametrize("fmt", ["native", "saelens"])
def test_invalid_cfg_json(tmp_path: Path, fmt: str) -> None:
    (_write(tmp_path, fmt) / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match=r"cfg\.json: not valid JSON"):
        load_sae(tmp_path, fmt)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "name"), [("native", "sae.safetensors"), ("saelens", "sae_weights.safetensors")])
def test_corrupt_safetensors(tmp_path: Path, fmt: str, name: str) -> None:
    (_write(tmp_path, fmt) / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(SAEFormatError, match=rf"{name}: not a readable safetensors file"):
        load_sae(tmp_path)


def test_missing_weights(tmp_path: Path) -> None:
    (_write(tmp_path, "saelens") / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFormatError, match=r"no sae_weights\.safetensors"):
        load_sae(tmp_path)  # cfg.json with nested metadata still says saelens


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "params.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SAEFormatError, match=r"params\.npz: not a readable \.npz file"):
        load_sae(tmp_path)
    with pytest.raises(SAEFormatError, match=r"no params\.npz"):
        load_gemmascope(tmp_path / "elsewhere")


def test_saelens_non_unit_scaling_factor(tmp_path: Path) -> None:
    _edit_tensors(_write(tmp_path, "saelens"), "saelens", lambda t: t.update(scaling_factor=torch.full((D_SAE,), 3.0)))
    with pytest.raises(SAEFormatError, match="scaling_factor is not all ones"):
        load_saelens(tmp_path)


# -- failed saves leave nothing behind -------------------------------------------------------
@pytest.mark.parametrize("arch", ["relu", "topk", "gated"])
def test_gemmascope_refuses_other_architectures_cleanly(tmp_path: Path, arch: str) -> None:
    with pytest.raises(SAEFormatError, match=rf"JumpReLU SAEs only; this SAE is '{arch}'"):
        save_gemmascope(tmp_path, random_sae(arch))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["gemmascope", "saelens"])
def test_training_form_is_refused_cleanly(tmp_path: Path, fmt: str) -> None:
    training = build_sae(tiny_sae_cfg())
    with pytest.raises(SAEFormatError, match=r"inference form: call sae\.fold\(scale\) first"):
        save_sae(tmp_path, training, full_meta(), fmt)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_saelens_unknown_site_is_refused_cleanly(tmp_path: Path) -> None:
    with pytest.raises(SAEFormatError, match=r"unknown site 'embed' \(allowed: resid, mlp, attn\)"):
        save_saelens(tmp_path, random_sae(), full_meta(site="embed"))
    assert os.listdir(tmp_path) == []


def test_crash_mid_write_keeps_old_file_and_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_gemmascope(tmp_path, random_sae())
    before = path.read_bytes()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(gemmascope.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_gemmascope(tmp_path, random_sae())
    assert os.listdir(tmp_path) == ["params.npz"]
    assert path.read_bytes() == before
