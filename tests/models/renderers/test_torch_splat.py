import math

import numpy as np
import torch

from tests.conftest import random_model
from threestudio.models.renderers.torch_splat import rasterize_torch
from threestudio.ops.camera import orbit_cameras
from threestudio.ops.gaussians import composite_weights, covariance_3d, gaussian_alpha, project_gaussians


def dense_reference(means, scales, quats, opac, colors, w2c, K, W, H):
    """Every Gaussian against every pixel, no tiles (the definition)."""
    proj = project_gaussians(means, covariance_3d(scales, quats), w2c, K, W, H)
    out = []
    for b in range(w2c.shape[0]):
        vis = torch.nonzero(proj["radii"][b] > 0).squeeze(1)
        vis = vis[torch.argsort(proj["depths"][b, vis])]
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() + 0.5
        w = composite_weights(gaussian_alpha(pix, proj["means2d"][b, vis], proj["conics"][b, vis], opac[vis]))
        out.append((w @ colors[vis]).reshape(H, W, 3))
    return torch.stack(out)


def test_torch_rasterizer_matches_dense_reference():
    m = random_model(400)
    cams = orbit_cameras([90.0, -30.0], 10.0, 1.5, 60.0, 40, 48, 0.0, "body")
    out = rasterize_torch(m.means, m.scales, m.rotations, m.opacities, m.colors, cams.w2c, cams.K, 48, 40, tile=16)
    ref = dense_reference(m.means, m.scales, m.rotations, m.opacities, m.colors, cams.w2c, cams.K, 48, 40)
    assert out["comp_rgb"].shape == (2, 40, 48, 3)
    np.testing.assert_allclose(out["comp_rgb"].detach(), ref.detach(), atol=2e-5)
    assert out["opacity"].max() > 0.3


def test_single_gaussian_known_answer():
    """One isotropic Gaussian on the optical axis: centre alpha = opacity, 1-sigma falloff exp(-1/2)."""
    cams = orbit_cameras([90.0], 0.0, 2.0, 60.0, 33, 33, 0.0, "body")
    f = 33 / (2 * math.tan(math.radians(30)))
    s = 0.05
    out = rasterize_torch(
        torch.zeros(1, 3),
        torch.full((1, 3), s),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.tensor([0.8]),
        torch.ones(1, 3),
        cams.w2c,
        cams.K,
        33,
        33,
        eps2d=0.0,
    )
    a = out["opacity"][0, :, :, 0]
    sigma_px = f * s / 2.0
    np.testing.assert_allclose(float(a[16, 16]), 0.8, rtol=1e-4)  # pixel centre 16.5 = principal point
    dx = 1.0
    np.testing.assert_allclose(float(a[16, 17]), 0.8 * math.exp(-0.5 * (dx / sigma_px) ** 2), rtol=1e-3)
    np.testing.assert_allclose(float(out["depth"][0, 16, 16, 0]), 2.0, rtol=1e-4)


def test_means2d_gradient_flows():
    m = random_model(200)
    cams = orbit_cameras([90.0], 0.0, 1.5, 60.0, 32, 32, 0.0, "body")
    out = rasterize_torch(m.means, m.scales, m.rotations, m.opacities, m.colors, cams.w2c, cams.K, 32, 32)
    out["comp_rgb"].sum().backward()
    assert out["means2d"].grad is not None and out["means2d"].grad.abs().sum() > 0
    assert m.means.grad.abs().sum() > 0 and m.f_dc.grad.abs().sum() > 0
