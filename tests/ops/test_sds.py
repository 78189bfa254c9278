import numpy as np
import pytest
import torch

from threestudio.ops.sds import (
    AHDS_EDGES,
    AHDSSchedule,
    ahds_tau_schedule,
    ahds_window,
    anpg_gradient,
    clip_grad_per_pixel,
    dual_gaussian_pdf,
    fit_ahds_prior,
    sds_loss,
    sparsity_loss,
    window_masses,
)


def test_ahds_prior_masses():
    T, s1, s2 = fit_ahds_prior()
    m = window_masses(dual_gaussian_pdf(T, s1, s2), AHDS_EDGES)
    np.testing.assert_allclose(m, [0.41, 0.21, 0.375], atol=0.006)
    assert 240 < T < 275  # reference fit: T ≈ 257.3


@pytest.mark.parametrize("n", [30, 1200, 2400, 5000])
def test_tau_schedule_monotone_and_follows_steps(n):
    s = AHDSSchedule(n)
    tau = s.tau
    assert tau.shape == (n,)
    assert (tau[1:] <= tau[:-1]).all(), "τ must anneal monotonically"
    assert tau[0] == 799
    assert 50 <= tau[-1] <= (110 if n >= 1200 else 200)
    ref = AHDSSchedule(2400).tau
    # the same fraction of training gives the same timestep, whatever the step count
    for frac in (0.1, 0.3, 0.5, 0.8):
        assert abs(int(tau[int(frac * n)]) - int(ref[int(frac * 2400)])) <= max(3, 2400 // n * 2)


def test_reference_tau_values():
    tau = ahds_tau_schedule(2400, dual_gaussian_pdf(*fit_ahds_prior()))
    for i, v in {100: 716, 500: 549, 1000: 429, 1400: 352, 2000: 249, 2398: 82}.items():
        assert abs(int(tau[i]) - v) <= 2


def test_windows_scale_with_step_count():
    assert ahds_window(0, 2400, 799) == (500, 799)
    assert ahds_window(800, 2400, 500) == (400, 549)
    assert ahds_window(1000, 2400, 429) == (150, 478)
    assert ahds_window(2000, 2400, 249) == (20, 298)
    assert ahds_window(350, 1200, 500) == (400, 549)  # 700/2400 of training
    s = AHDSSchedule(100)
    for step in range(100):
        lo, hi = s.window(step)
        assert 0 <= lo <= hi <= 799
        t = s.sample(step, 64)
        assert (t >= lo).all() and (t <= hi).all()


def test_anpg_gradient_formula():
    g = torch.Generator().manual_seed(0)
    e_pos, e_neg, e_null = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    ac = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor([100, 500])
    out = anpg_gradient(e_pos, e_neg, e_null, t, ac, guidance_scale=7.5, t_threshold=170)
    w0, w1 = 1 - ac[100], 1 - ac[500]
    np.testing.assert_allclose(out[0], w0 * (7.5 * (e_pos[0] - e_null[0]) + e_null[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], w1 * (7.5 * (e_pos[1] - e_null[1]) + e_null[1] - e_neg[1]), rtol=1e-5, atol=1e-6)


def test_clip_per_latent_pixel():
    g = torch.zeros(1, 4, 2, 2)
    g[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5 -> clipped to 1
    g[0, :, 1, 1] = torch.tensor([0.1, 0.2, 0.2, 0.0])  # norm 0.3 -> unchanged
    out = clip_grad_per_pixel(g, 1.0)
    np.testing.assert_allclose(out[0, :, 0, 0], [0.6, 0.8, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 1, 1], g[0, :, 1, 1], atol=1e-7)
    big = torch.randn(2, 4, 8, 8) * 10
    n = clip_grad_per_pixel(big, 1.0).norm(dim=1)
    assert (n <= 1 + 1e-5).all() and (n > 0.99).all()


def test_sds_loss_gradient_is_g_over_b():
    z = torch.randn(3, 4, 5, 5, requires_grad=True)
    g = torch.randn(3, 4, 5, 5)
    sds_loss(z, g).backward()
    np.testing.assert_allclose(z.grad, g / 3, rtol=1e-5, atol=1e-6)


def test_sparsity_on_alpha():
    assert abs(float(sparsity_loss(torch.zeros(1, 2, 2, 1))) - 0.1) < 1e-6
    assert float(sparsity_loss(torch.ones(1, 2, 2, 1))) > 1.0
