"""The SAEs against the method reference (../shared/docs/jumprelu.md §1, §2, §3, §3.2, §11).

Formulas checked here, with K(u) = 1 on the open interval -1/2 < u < 1/2 and r_b = x_b - x_hat_b:
  dL/dtheta_i     = (1/B) sum_b [(2 theta_i / eps)(d_i . r_b) - lambda / eps] K((pi_ib - theta_i) / eps)
  dL/dlog theta_i = theta_i * dL/dtheta_i
  df/dpi          = H(pi - theta) exactly (no STE in pi);   the L0 term trains only theta
  fold(C):        W_enc, W_dec kept; b_enc' = C (b_enc - b_dec @ W_enc); b_dec' = C b_dec; theta' = C theta
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from tests.conftest import tiny_sae_cfg, tiny_train_cfg
from trainer.data.activations import SyntheticSource, SyntheticSpec
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig
from trainer.saes.gated import GatedSAE
from trainer.saes.jumprelu import JumpReLUSAE, jumprelu_with_l0
from trainer.saes.registry import build_sae, names
from trainer.saes.relu import ReLUSAE
from trainer.saes.topk import TopKSAE
from trainer.training.trainer import Trainer

F64 = torch.float64
THRESHOLD_PARAMS = ("raw", "log")
# Every (architecture, threshold_param): the threshold parameter only acts in jumprelu, and
# the others must not care about it.
ARCH_PARAMS = [(arch, param) for arch in names() for param in THRESHOLD_PARAMS]
ARCH_PARAM_IDS = [f"{arch}-{param}" for arch, param in ARCH_PARAMS]


# -- helpers ------------------------------------------------------------------------------
def kernel(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """K((pre - theta) / eps) as a float mask: 1 where |pre - theta| < eps / 2 (open interval)."""
    return ((pre - theta).abs() < eps / 2).to(pre.dtype)


def set_threshold(sae: JumpReLUSAE, theta: Tensor) -> None:
    with torch.no_grad():
        if sae.cfg.threshold_param == "log":
            sae.log_threshold.copy_(theta.log())
        else:
            sae.raw_threshold.copy_(theta)


def threshold_parameter(sae: JumpReLUSAE) -> torch.nn.Parameter:
    return sae.log_threshold if sae.cfg.threshold_param == "log" else sae.raw_threshold


def unit_rows(m: Tensor) -> Tensor:
    return m / m.norm(dim=1, keepdim=True)


def randomize(sae: SAE, gen: torch.Generator) -> None:
    """Non-trivial parameters: random encoder, unit-norm random decoder, non-zero biases."""
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    dtype = sae.W_enc.dtype
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen, dtype=dtype) / math.sqrt(d_in))
        sae.W_dec.copy_(unit_rows(torch.randn(d_sae, d_in, generator=gen, dtype=dtype)))
        sae.b_enc.copy_(0.3 * torch.randn(d_sae, generator=gen, dtype=dtype))
        sae.b_dec.copy_(0.5 * torch.randn(d_in, generator=gen, dtype=dtype))
        if isinstance(sae, JumpReLUSAE):
            set_threshold(sae, 0.05 + 0.5 * torch.rand(d_sae, generator=gen, dtype=dtype))
        if isinstance(sae, GatedSAE):
            sae.r_mag.copy_(0.3 * torch.randn(d_sae, generator=gen, dtype=dtype))
            sae.b_mag.copy_(0.3 * torch.randn(d_sae, generator=gen, dtype=dtype))


def zero_or_none(grad: Tensor | None) -> bool:
    return grad is None or bool((grad == 0).all())


# Designed pre-activations for the STE checks, as offsets from theta in units of eps. Every
# latent (column) has entries inside the window on both sides of theta and entries outside
# it, all at least 0.05 eps from the window edges so float rounding cannot move them.
EPS = 0.01
THETA = torch.tensor([0.02, 0.05, 0.1, 0.3, 0.004, 0.2], dtype=F64)  # 0.004 < eps/2: window reaches pi < 0
OFFSETS = torch.tensor(
    [
        [0.2, -0.3, 0.7, -2.0, 0.1, 40.0],
        [-0.4, 0.3, -0.1, 0.45, -0.8, -0.2],
        [5.0, 0.15, -0.45, -0.3, 0.35, 0.25],
        [-0.25, -9.0, 0.4, 0.05, -0.15, -0.6],
        [0.3, 0.6, -30.0, 3.0, 2.0, 0.4],
    ],
    dtype=F64,
)
PRE = THETA + EPS * OFFSETS  # (B=5, d_sae=6)


def designed_jumprelu(threshold_param: str, pre_enc_bias: bool = True) -> tuple[JumpReLUSAE, Tensor]:
    """A float64 JumpReLU SAE (d_in 8, d_sae 6) and inputs x whose pre-activations are PRE."""
    gen = torch.Generator().manual_seed(1234)
    cfg = tiny_sae_cfg(d_in=8, d_sae=6, bandwidth=EPS, threshold_param=threshold_param, use_pre_enc_bias=pre_enc_bias)
    sae = JumpReLUSAE(cfg).to(F64)
    randomize(sae, gen)
    set_threshold(sae, THETA)
    # pre = x @ W_enc + (b_enc - b_dec @ W_enc); W_enc (8, 6) has full column rank.
    bias = sae.b_enc - sae.b_dec @ sae.W_enc if pre_enc_bias else sae.b_enc
    x = ((PRE - bias) @ torch.linalg.pinv(sae.W_enc)).detach()
    with torch.no_grad():
        assert_close(sae.pre_acts(x), PRE, rtol=0, atol=1e-12)
    return sae, x


def expected_threshold_grads(sae: JumpReLUSAE, x: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """(reconstruction part, L0 part) of dL/dtheta from the closed form, in float64."""
    with torch.no_grad():
        theta = sae.threshold.to(F64)
        pre = sae.pre_acts(x)
        f = pre * (pre > theta)
        r = x - (f @ sae.W_dec + sae.b_dec)  # (B, d_in)
        k = kernel(pre, theta, sae.cfg.bandwidth)  # (B, d_sae)
        eps, batch = sae.cfg.bandwidth, x.shape[0]
        d_dot_r = r @ sae.W_dec.T  # (B, d_sae): d_i . r_b
        recon = ((2 * theta / eps) * d_dot_r * k).sum(0) / batch
        l0 = -(lam / eps) * k.sum(0) / batch
    return recon, l0


# -- 1. STE gradients of the threshold ----------------------------------------------------
def test_designed_pre_activations_cover_both_sides_of_the_window() -> None:
    k = kernel(PRE, THETA, EPS)
    below, above = PRE < THETA, PRE > THETA
    assert ((k == 1) & below).any(0).all() and ((k == 1) & above).any(0).all()
    assert (k == 0).any(0).all()
    assert (((PRE - THETA).abs() - EPS / 2).abs() > 0.04 * EPS).all()


def test_fused_jumprelu_threshold_grad_is_minus_theta_over_eps_times_kernel_times_grad_f() -> None:
    pre = PRE.clone().requires_grad_()
    theta = THETA.clone().requires_grad_()
    f, _ = jumprelu_with_l0(pre, theta, EPS)
    grad_f = torch.randn(f.shape, dtype=F64)
    (g_theta,) = torch.autograd.grad(f, theta, grad_outputs=grad_f)
    expected = -(THETA / EPS) * (kernel(PRE, THETA, EPS) * grad_f).sum(0)
    assert_close(g_theta, expected)


def test_fused_l0_threshold_grad_is_minus_one_over_eps_times_kernel() -> None:
    pre = PRE.clone().requires_grad_()
    theta = THETA.clone().requires_grad_()
    _, l0 = jumprelu_with_l0(pre, theta, EPS)
    grad_l0 = torch.rand(l0.shape, dtype=F64) + 0.5  # per-token weights
    g_pre, g_theta = torch.autograd.grad(l0, (pre, theta), grad_outputs=grad_l0)
    expected = -(1 / EPS) * (grad_l0[:, None] * kernel(PRE, THETA, EPS)).sum(0)
    assert_close(g_theta, expected)
    assert (g_pre == 0).all(), "the L0 term must send nothing into the pre-activations"


def test_fused_forward_is_jumprelu_and_l0_counts_strictly_active_latents() -> None:
    f, l0 = jumprelu_with_l0(PRE, THETA, EPS)
    active = PRE > THETA
    assert_close(f, PRE * active)
    assert_close(l0, active.sum(-1).to(F64))


def test_kernel_is_the_open_interval_so_window_edges_do_not_count() -> None:
    # Exactly representable: theta = 0.5, eps = 0.25, edges at 0.375 and 0.625.
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=F64, requires_grad=True)
    pre = torch.tensor([[0.375, 0.625, 0.375 + 1e-9, 0.625 - 1e-9]], dtype=F64)
    _, l0 = jumprelu_with_l0(pre, theta, 0.25)
    (g_theta,) = torch.autograd.grad(l0.sum(), theta)
    assert_close(g_theta, torch.tensor([0.0, 0.0, -4.0, -4.0], dtype=F64))


def test_l0_pseudo_derivative_takes_pre_activations_just_below_threshold_not_f() -> None:
    # DL#55: stepping on f loses the lower half of the window (there f = 0, far from theta).
    theta = torch.tensor([0.5], dtype=F64, requires_grad=True)
    pre = torch.tensor([[0.5 - 0.2 * EPS], [0.5 + 0.2 * EPS]], dtype=F64)
    f, l0 = jumprelu_with_l0(pre, theta, EPS)
    assert f[0, 0] == 0 and f[1, 0] > 0
    (g_theta,) = torch.autograd.grad(l0.sum(), theta)
    assert_close(g_theta, torch.tensor([-2 / EPS], dtype=F64))


@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_training_step_threshold_grad_matches_closed_form_for_full_loss(threshold_param: str) -> None:
    sae, x = designed_jumprelu(threshold_param)
    lam = 0.05
    sae.training_step(x, lam).loss.backward()
    recon, l0 = expected_threshold_grads(sae, x, lam)
    expected = recon + l0
    with torch.no_grad():
        theta = sae.threshold.to(F64)
    if threshold_param == "log":
        expected = theta * expected
    assert (expected != 0).all()
    assert_close(threshold_param_grad(sae), expected, rtol=1e-5, atol=1e-5)


def threshold_param_grad(sae: JumpReLUSAE) -> Tensor:
    grad = threshold_parameter(sae).grad
    assert grad is not None
    return grad.to(F64)


@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_reconstruction_part_of_threshold_grad_is_minus_theta_over_eps_kernel_times_grad_f(
    threshold_param: str,
) -> None:
    sae, x = designed_jumprelu(threshold_param)
    sae.training_step(x, 0.05).mse.backward()
    recon, _ = expected_threshold_grads(sae, x, 0.05)
    # The same thing written as -(theta/eps) * sum_b K * dmse/df with dmse/df = -(2/B) r_b . d_i.
    with torch.no_grad():
        theta = sae.threshold.to(F64)
        pre = sae.pre_acts(x)
        f = pre * (pre > theta)
        grad_f = -(2 / x.shape[0]) * (x - f @ sae.W_dec - sae.b_dec) @ sae.W_dec.T
        via_grad_f = -(theta / EPS) * (kernel(pre, theta, EPS) * grad_f).sum(0)
    assert_close(via_grad_f, recon)
    if threshold_param == "log":
        recon = theta * recon
    assert_close(threshold_param_grad(sae), recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_l0_part_of_threshold_grad_is_minus_one_over_eps_kernel_averaged_over_tokens(threshold_param: str) -> None:
    sae, x = designed_jumprelu(threshold_param)
    sae.training_step(x, 0.05).sparsity.backward()
    _, l0 = expected_threshold_grads(sae, x, 1.0)
    expected = -(1 / EPS) * kernel(PRE, THETA, EPS).mean(0)
    assert_close(l0, expected)
    if threshold_param == "log":
        expected = THETA * expected
    assert_close(threshold_param_grad(sae), expected, rtol=1e-5, atol=1e-5)


def test_log_threshold_grad_is_theta_times_raw_threshold_grad() -> None:
    raw, x = designed_jumprelu("raw")
    log, x_log = designed_jumprelu("log")
    assert_close(x_log, x)
    raw.training_step(x, 0.05).loss.backward()
    log.training_step(x, 0.05).loss.backward()
    assert_close(threshold_param_grad(log), THETA * threshold_param_grad(raw), rtol=1e-6, atol=1e-6)


def test_threshold_grad_without_pre_encoder_bias_matches_closed_form() -> None:
    sae, x = designed_jumprelu("raw", pre_enc_bias=False)
    sae.training_step(x, 0.05).loss.backward()
    recon, l0 = expected_threshold_grads(sae, x, 0.05)
    assert_close(threshold_param_grad(sae), recon + l0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [0.05, 0.3], ids=["theta-should-fall", "theta-should-rise"])
def test_mean_ste_gradient_matches_finite_difference_of_expected_loss(lam: float) -> None:
    """jumprelu.md §2 "Why it works": the batch STE gradient is a kernel estimate of dE[L]/dtheta.

    One latent reading x_0 (pi = a ~ N(0, 1)) and writing d = (cos phi, sin phi); x_1 = b is
    independent noise. Then dE[L]/dtheta = (theta^2 (2 cos phi - 1) - lambda) p(theta). The
    rectangle kernel has an O(eps) bias here (the jump in d . r differs on the two sides of
    theta), about -(eps/4) theta (1 - theta^2) p(theta) / 2 ~ 1% at eps = 0.01, so a is drawn
    by stratified sampling to keep the Monte Carlo noise below that with 2M tokens.
    """
    eps, theta, cos_phi, sin_phi, sigma_b = 0.01, 0.5, 0.8, 0.6, 0.1
    cfg = tiny_sae_cfg(d_in=2, d_sae=1, bandwidth=eps, threshold_param="raw")
    sae = JumpReLUSAE(cfg).to(F64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0], [0.0]]))
        sae.W_dec.copy_(torch.tensor([[cos_phi, sin_phi]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()

    # Expected loss by quadrature through the SAE's own forward pass: a on a fine grid with
    # normal weights; b at +-sigma_b is exact because the loss is quadratic in b given a.
    da = 2e-5
    a = torch.arange(-8.0, 8.0, da, dtype=F64) + da / 2
    weight = torch.exp(-0.5 * a**2) / math.sqrt(2 * math.pi) * da / 2
    grid = torch.cat([torch.stack([a, a.new_full(a.shape, s)], -1) for s in (sigma_b, -sigma_b)])
    weights = torch.cat([weight, weight])

    def expected_loss(t: float) -> float:
        set_threshold(sae, torch.tensor([t], dtype=F64))
        with torch.no_grad():
            f = sae.encode(grid)
            per_token = (grid - sae.decode(f)).pow(2).sum(-1) + lam * (f > 0).sum(-1)
        return float((weights * per_token).sum())

    h = 0.01
    finite_diff = (expected_loss(theta + h) - expected_loss(theta - h)) / (2 * h)
    density = math.exp(-0.5 * theta**2) / math.sqrt(2 * math.pi)
    analytic = (theta**2 * (2 * cos_phi - 1) - lam) * density
    assert finite_diff == pytest.approx(analytic, rel=0.005)

    set_threshold(sae, torch.tensor([theta], dtype=F64))
    gen = torch.Generator().manual_seed(7)
    n = 2_000_000
    u = (torch.arange(n, dtype=F64) + torch.rand(n, generator=gen, dtype=F64)) / n  # one draw per stratum
    a_samples = torch.special.ndtri(u)
    b_samples = sigma_b * torch.randn(n, generator=gen, dtype=F64)
    x = torch.stack([a_samples, b_samples], -1)
    sae.training_step(x, lam).loss.backward()
    ste = float(threshold_param_grad(sae)[0])
    assert ste == pytest.approx(finite_diff, rel=0.05)


# -- 2. The L0 term trains only the threshold ---------------------------------------------
@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_l0_term_alone_sends_no_gradient_to_encoder_decoder_or_biases(threshold_param: str) -> None:
    sae, x = designed_jumprelu(threshold_param)
    sae.training_step(x, 0.05).sparsity.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert zero_or_none(getattr(sae, name).grad), f"the L0 term reached {name}"
    grad = threshold_parameter(sae).grad
    assert grad is not None and (grad != 0).all()


@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_full_loss_gives_encoder_and_decoder_the_reconstruction_gradients_only(threshold_param: str) -> None:
    sae, x = designed_jumprelu(threshold_param)
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    out = sae.training_step(x, 10.0)  # a large lambda would show any leak
    full = torch.autograd.grad(out.loss, [getattr(sae, n) for n in names], retain_graph=True)
    recon = torch.autograd.grad(out.mse, [getattr(sae, n) for n in names])
    for name, g_full, g_recon in zip(names, full, recon, strict=True):
        assert_close(g_full, g_recon, msg=f"{name}: the L0 term changed its gradient")


# -- 3. The pre-activation gradient is the exact step -------------------------------------
def test_pre_activation_grad_is_exactly_the_step_function_with_no_ste() -> None:
    theta = THETA.clone()
    pre = PRE.clone()
    pre[0, 1] = theta[1]  # exactly at the threshold: H(0) = 0
    pre = pre.requires_grad_()
    f, _ = jumprelu_with_l0(pre, theta.requires_grad_(), EPS)
    grad_f = torch.randn(f.shape, dtype=F64)
    (g_pre,) = torch.autograd.grad(f, pre, grad_outputs=grad_f)
    step = (pre > theta).to(F64)
    assert g_pre[0, 1] == 0 and f[0, 1] == 0
    assert torch.equal(g_pre, grad_f * step)  # exact, window or not


@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_pre_activation_exactly_at_threshold_gives_a_zero_latent(threshold_param: str) -> None:
    sae = JumpReLUSAE(tiny_sae_cfg(d_in=4, d_sae=6, threshold_param=threshold_param))
    set_threshold(sae, torch.tensor([0.001, 0.01, 0.1, 0.3, 0.5, 1.0]))
    with torch.no_grad():
        theta = sae.threshold.detach().clone()
        sae.b_enc.copy_(torch.where(torch.arange(6) % 2 == 0, theta, theta + 1e-3))
    x = torch.zeros(3, 4)  # pre = b_enc exactly
    assert torch.equal(sae.pre_acts(x)[0], sae.b_enc.detach())
    f = sae.encode(x)
    out = sae.training_step(x, 0.01)
    expected_active = torch.tensor([False, True] * 3).expand(3, 6)
    assert torch.equal(f > 0, expected_active)
    assert torch.equal(out.active, expected_active)
    assert torch.equal(f[:, ::2], torch.zeros(3, 3))


# -- 4. Fold-back to the inference form ---------------------------------------------------
def training_form(arch: str, threshold_param: str, pre_enc_bias: bool = True) -> SAE:
    gen = torch.Generator().manual_seed(99)
    cfg = tiny_sae_cfg(architecture=arch, threshold_param=threshold_param, k=6, use_pre_enc_bias=pre_enc_bias)
    sae = build_sae(cfg).to(F64)
    randomize(sae, gen)
    return sae


@pytest.mark.parametrize("pre_enc_bias", [True, False], ids=["pre-enc-bias", "no-pre-enc-bias"])
@pytest.mark.parametrize(("arch", "threshold_param"), ARCH_PARAMS, ids=ARCH_PARAM_IDS)
def test_fold_reconstructs_raw_inputs_as_c_times_training_form_on_scaled_inputs(
    arch: str, threshold_param: str, pre_enc_bias: bool
) -> None:
    sae = training_form(arch, threshold_param, pre_enc_bias)
    scale = 3.7
    x_raw = scale * (torch.randn(64, sae.cfg.d_in, dtype=F64) + sae.b_dec.detach())
    with torch.no_grad():
        f_train = sae.encode(x_raw / scale)
        x_hat_train = sae(x_raw / scale)
        folded = sae.fold(scale)
        f_folded = folded.encode(x_raw)
        x_hat_folded = folded(x_raw)
    active = f_train != 0
    assert active.any() and not active.all(), "choose inputs where some latents fire and some do not"
    assert not folded.cfg.use_pre_enc_bias
    assert torch.equal(f_folded != 0, active)
    assert_close(f_folded, scale * f_train)
    assert_close(x_hat_folded, scale * x_hat_train)
    assert torch.equal(folded.W_enc, sae.W_enc)
    assert torch.equal(folded.W_dec, sae.W_dec)
    # the training-form model is left as it was
    assert sae.cfg.use_pre_enc_bias == pre_enc_bias


@pytest.mark.parametrize(("arch", "threshold_param"), ARCH_PARAMS, ids=ARCH_PARAM_IDS)
def test_fold_scales_biases_and_thresholds_as_gemma_scope_appendix_a(arch: str, threshold_param: str) -> None:
    sae = training_form(arch, threshold_param)
    scale = 2.5
    folded = sae.fold(scale)
    with torch.no_grad():
        assert_close(folded.b_enc, scale * (sae.b_enc - sae.b_dec @ sae.W_enc))
        assert_close(folded.b_dec, scale * sae.b_dec)
        if isinstance(sae, JumpReLUSAE):
            assert isinstance(folded, JumpReLUSAE)
            assert_close(folded.threshold, scale * sae.threshold)
            assert_close(folded.inference_tensors()["threshold"], scale * sae.threshold)
        if isinstance(sae, GatedSAE):
            assert isinstance(folded, GatedSAE)
            assert torch.equal(folded.r_mag, sae.r_mag)
        norms = folded.W_dec.norm(dim=1)
    assert_close(norms, torch.ones_like(norms))


# -- 5. Decoder constraint ----------------------------------------------------------------
@pytest.mark.parametrize(("arch", "threshold_param"), ARCH_PARAMS, ids=ARCH_PARAM_IDS)
def test_decoder_rows_have_unit_norm_after_every_optimiser_step(tmp_path, arch: str, threshold_param: str) -> None:
    spec = SyntheticSpec(d_in=16, n_features=40, active_per_token=3.0, chunk_tokens=2048)
    sae_cfg = tiny_sae_cfg(architecture=arch, threshold_param=threshold_param, k=4)
    train_cfg = tiny_train_cfg(tokens=256 * 8)
    seen: list[int] = []
    first_W_dec: list[Tensor] = []

    def on_step(step: int, sae: SAE) -> None:
        seen.append(step)
        assert sae.cfg.use_pre_enc_bias, "on_step should see the training form"
        norms = sae.W_dec.detach().norm(dim=1)
        assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5, msg=f"step {step}")
        if isinstance(sae, JumpReLUSAE):
            assert (sae.threshold > 0).all()
        if not first_W_dec:
            first_W_dec.append(sae.W_dec.detach().clone())
        elif step == train_cfg.total_steps:
            assert not torch.equal(sae.W_dec.detach(), first_W_dec[0]), "the decoder never moved"

    Trainer(sae_cfg, train_cfg, SyntheticSource(spec), tmp_path, progress=False, on_step=on_step).fit()
    assert seen == list(range(1, train_cfg.total_steps + 1))


def test_project_decoder_grad_leaves_each_row_gradient_orthogonal_to_the_row() -> None:
    sae = ReLUSAE(tiny_sae_cfg()).to(F64)
    gen = torch.Generator().manual_seed(3)
    randomize(sae, gen)
    grad = torch.randn(sae.W_dec.shape, generator=gen, dtype=F64)
    sae.W_dec.grad = grad.clone()
    sae.project_decoder_grad()
    d = sae.W_dec.detach()
    projected = sae.W_dec.grad
    assert_close((projected * d).sum(1), torch.zeros(d.shape[0], dtype=F64), rtol=0, atol=1e-12)
    # only the component along the row is removed: g - (g . d) d
    assert_close(projected, grad - (grad * d).sum(1, keepdim=True) * d)


def test_project_decoder_grad_without_a_gradient_is_a_no_op() -> None:
    sae = ReLUSAE(tiny_sae_cfg())
    sae.project_decoder_grad()
    assert sae.W_dec.grad is None


def test_normalize_decoder_gives_unit_rows_and_keeps_directions() -> None:
    sae = ReLUSAE(tiny_sae_cfg()).to(F64)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.cfg.d_sae, 1, dtype=F64) * 5 + 0.1)
    before = sae.W_dec.detach().clone()
    sae.normalize_decoder()
    norms = sae.W_dec.detach().norm(dim=1)
    assert_close(norms, torch.ones_like(norms))
    assert_close(sae.W_dec.detach(), unit_rows(before))


# -- 6. Per-architecture behaviour --------------------------------------------------------
@pytest.mark.parametrize("k", [1, 4, 7])
def test_topk_keeps_exactly_k_largest_latents_per_token(k: int) -> None:
    sae = TopKSAE(tiny_sae_cfg(architecture="topk", k=k))
    x = torch.randn(64, 16)
    f = sae.encode(x)
    out = sae.training_step(x, 0.0)
    assert torch.equal((f != 0).sum(-1), torch.full((64,), k))
    assert torch.equal(out.active.sum(-1), torch.full((64,), k))
    pre = sae.pre_acts(x).detach()
    top = pre.topk(k, dim=-1).indices
    assert torch.equal(torch.zeros_like(f, dtype=torch.bool).scatter_(-1, top, True), f != 0)
    assert_close(f[f != 0], pre[f != 0])


def test_gated_latents_are_zero_wherever_the_gate_pre_activation_is_not_positive() -> None:
    sae = GatedSAE(tiny_sae_cfg(architecture="gated"))
    randomize(sae, torch.Generator().manual_seed(5))
    x = torch.randn(64, 16)
    with torch.no_grad():
        gate = sae.pre_acts(x)
        mag = (x - sae.b_dec) @ sae.W_enc * sae.r_mag.exp() + sae.b_mag
        f = sae.encode(x)
    out = sae.training_step(x, 0.01)
    closed = gate <= 0
    assert closed.any() and (~closed).any()
    assert (f[closed] == 0).all()
    assert_close(f, (~closed) * torch.relu(mag))
    assert not (out.active & closed).any()


def test_gated_latent_with_gate_exactly_zero_is_off_even_with_positive_magnitude() -> None:
    sae = GatedSAE(tiny_sae_cfg(architecture="gated"))
    with torch.no_grad():
        sae.b_enc.copy_(torch.where(torch.arange(48) % 2 == 0, 0.0, 0.5))
        sae.b_mag.fill_(1.0)
    x = torch.zeros(2, 16)  # gate = b_enc exactly; magnitude = b_mag > 0
    f = sae.encode(x)
    assert (f[:, ::2] == 0).all()
    assert (f[:, 1::2] == 1.0).all()
    out = sae.training_step(x, 0.01)
    assert torch.equal(out.active, f > 0)
    assert torch.equal(out.x_hat, sae.decode(f).detach())


@pytest.mark.parametrize("pre_enc_bias", [True, False], ids=["pre-enc-bias", "no-pre-enc-bias"])
def test_gated_aux_loss_sends_no_gradient_to_the_decoder(pre_enc_bias: bool) -> None:
    sae = GatedSAE(tiny_sae_cfg(architecture="gated", use_pre_enc_bias=pre_enc_bias)).to(F64)
    randomize(sae, torch.Generator().manual_seed(6))
    x = torch.randn(32, 16, dtype=F64)
    sae.training_step(x, 0.01).aux.backward()
    assert zero_or_none(sae.W_dec.grad)
    assert zero_or_none(sae.r_mag.grad) and zero_or_none(sae.b_mag.grad), "aux trains only the gate path"
    assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0
    if not pre_enc_bias:
        assert zero_or_none(sae.b_dec.grad)
        return
    # With the pre-encoder bias, b_dec reaches aux only through the gate's input centring:
    # d aux / d b_dec = -W_enc @ sum_b d aux / d gate_b (the frozen decoder bias adds nothing).
    with torch.no_grad():
        gate = sae.pre_acts(x)
        x_via_gate = torch.relu(gate) @ sae.W_dec + sae.b_dec
        grad_gate = (2 / x.shape[0]) * (x_via_gate - x) @ sae.W_dec.T * (gate > 0)
        expected = -(sae.W_enc @ grad_gate.sum(0))
    assert_close(sae.b_dec.grad, expected)


def test_relu_sparsity_is_decoder_norm_weighted_l1() -> None:
    sae = ReLUSAE(tiny_sae_cfg(architecture="relu")).to(F64)
    randomize(sae, torch.Generator().manual_seed(8))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.cfg.d_sae, 1, dtype=F64) * 3 + 0.2)  # non-unit rows
        f = sae.encode(x := torch.randn(32, 16, dtype=F64))
        expected = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    out = sae.training_step(x, 0.2)
    assert (f > 0).any()
    assert_close(out.sparsity, expected)
    assert_close(out.loss, out.mse + 0.2 * expected)


@pytest.mark.parametrize("threshold_param", THRESHOLD_PARAMS)
def test_jumprelu_loss_is_summed_squared_error_plus_lambda_times_l0(threshold_param: str) -> None:
    sae, x = designed_jumprelu(threshold_param)
    out = sae.training_step(x, 0.05)
    with torch.no_grad():
        f = sae.encode(x)
        mse = (x - sae.decode(f)).pow(2).sum(-1).mean()
        l0 = (f != 0).sum(-1).to(F64).mean()
    assert_close(out.mse.to(F64), mse, rtol=1e-6, atol=1e-6)
    assert_close(out.sparsity.to(F64), l0)
    assert_close(out.loss.to(F64), mse + 0.05 * l0, rtol=1e-6, atol=1e-6)


def test_raw_threshold_stays_positive_after_after_step() -> None:
    sae = JumpReLUSAE(tiny_sae_cfg(threshold_param="raw"))
    with torch.no_grad():
        sae.raw_threshold.copy_(torch.linspace(-1.0, 0.5, sae.cfg.d_sae))
    positive_before = sae.raw_threshold.detach() > 0
    kept = sae.raw_threshold.detach()[positive_before].clone()
    sae.after_step()
    assert (sae.raw_threshold > 0).all()
    assert torch.equal(sae.raw_threshold.detach()[positive_before], kept), "positive thresholds untouched"


def test_after_step_leaves_log_threshold_alone() -> None:
    sae = JumpReLUSAE(tiny_sae_cfg(threshold_param="log"))
    with torch.no_grad():
        sae.log_threshold.copy_(torch.linspace(-20.0, 2.0, sae.cfg.d_sae))
    before = sae.log_threshold.detach().clone()
    sae.after_step()
    assert torch.equal(sae.log_threshold.detach(), before)
    assert (sae.threshold > 0).all()


@pytest.mark.parametrize(("arch", "threshold_param"), ARCH_PARAMS, ids=ARCH_PARAM_IDS)
def test_initialisation_follows_the_gemma_scope_recipe(arch: str, threshold_param: str) -> None:
    cfg = tiny_sae_cfg(architecture=arch, threshold_param=threshold_param, k=4)
    sae = build_sae(cfg)
    W_enc, W_dec = sae.W_enc.detach(), sae.W_dec.detach()
    assert torch.equal(W_enc, W_dec.T)
    assert W_enc.data_ptr() != W_dec.data_ptr(), "encoder and decoder must be untied parameters"
    norms = W_dec.norm(dim=1)
    assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)
    assert (W_dec.std(0) > 0).all(), "decoder rows must be random directions"
    assert torch.equal(sae.b_enc.detach(), torch.zeros(cfg.d_sae))
    assert torch.equal(sae.b_dec.detach(), torch.zeros(cfg.d_in))
    if isinstance(sae, JumpReLUSAE):
        theta = sae.threshold.detach()
        assert theta.dtype == torch.float32
        assert_close(theta, torch.full((cfg.d_sae,), 0.001))
        if threshold_param == "log":
            assert_close(sae.log_threshold.detach(), torch.full((cfg.d_sae,), math.log(0.001)))


def test_default_config_is_the_paper_jumprelu() -> None:
    cfg = SAEConfig(d_in=16, d_sae=48)
    assert cfg.architecture == "jumprelu"
    assert cfg.bandwidth == 0.001
    assert cfg.threshold_init == 0.001
    assert cfg.threshold_param == "log"
    assert cfg.use_pre_enc_bias


def test_topk_trains_with_the_auxk_weight_from_the_first_step_and_others_warm_up_lambda() -> None:
    from trainer.training.config import TrainConfig, sparsity_at, sparsity_coeff

    train = TrainConfig(tokens=8192, batch_size=1024, sparsity_coeff=0.5, sparsity_warmup_steps=4)
    topk = SAEConfig(d_in=16, d_sae=48, architecture="topk", k=4)
    assert sparsity_coeff(topk, train) == train.aux_coeff == 1 / 32  # lambda is not TopK's knob: k is
    assert [sparsity_at(s, 1 / 32, train, "topk") for s in (0, 2, 8)] == [1 / 32] * 3
    relu = SAEConfig(d_in=16, d_sae=48, architecture="relu")
    assert sparsity_coeff(relu, train) == 0.5
    assert [sparsity_at(s, 0.5, train, "relu") for s in (0, 2, 8)] == [0.0, 0.25, 0.5]


def test_jumprelu_dead_aux_trains_only_dead_latents_towards_the_residual() -> None:
    """SAEConfig.dead_aux: dead latents' encoder columns and decoder rows get a gradient, live ones none
    from that term; with dead_aux = 0 the step is the paper's (aux is zero)."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    grads = {}
    for alpha in (0.0, 0.5):
        torch.manual_seed(0)  # the same weights for both
        sae = build_sae(tiny_sae_cfg(d_in=16, d_sae=32, threshold_param="raw", dead_aux=alpha, k_aux=4))
        with torch.no_grad():
            sae.raw_threshold[:8] = 1e3  # latents 0..7 never fire and get no gradient from mse or L0
        sae.tokens_since_fired[:8] = sae.dead_tokens
        out = sae.training_step(x, 0.01)
        assert (float(out.aux) > 0) == (alpha > 0)
        out.loss.backward()
        grads[alpha] = (sae.W_enc.grad.clone(), sae.W_dec.grad.clone())
    enc0, dec0 = grads[0.0]
    enc, dec = grads[0.5]
    assert float(enc0[:, :8].abs().sum()) == 0 and float(dec0[:8].abs().sum()) == 0
    assert float(enc[:, :8].abs().sum()) > 0 and float(dec[:8].abs().sum()) > 0
    torch.testing.assert_close(enc[:, 8:], enc0[:, 8:])  # the live latents' encoder sees no aux gradient


def test_dead_aux_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="dead_aux"):
        tiny_sae_cfg(d_in=16, d_sae=32, dead_aux=-1.0)


def test_aux_loss_normalises_by_the_residual_variance() -> None:
    """AuxK's normaliser E||r - E r||^2, here on one process (under torchrun: the global batch's, see
    tests/app/pipeline/test_cli.py's DDP test), also for a residual far from zero mean."""
    from trainer.saes.aux_loss import aux_loss, residual_variance

    gen = torch.Generator().manual_seed(0)
    residual = torch.randn(64, 8, generator=gen) * 0.5 + 300.0  # (B, d_in)
    centred = (residual.double() - residual.double().mean(0)).pow(2).sum(-1).mean()
    torch.testing.assert_close(residual_variance(residual).double(), centred, rtol=1e-6, atol=0)
    guess = torch.randn(64, 8, generator=gen)
    err = (guess - residual).pow(2).sum(-1).mean()
    torch.testing.assert_close(aux_loss(guess, residual), (err / centred).float(), rtol=1e-5, atol=0)
    assert aux_loss(residual, residual) == 0
