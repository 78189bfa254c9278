import math

import numpy as np
import pytest
import torch

from threestudio.data.human_cameras import make_cameras
from threestudio.models.geometry.gaussian_model import PARAM_NAMES, GaussianModel
from threestudio.models.renderers.torch_splat import rasterize_torch
from threestudio.ops.gaussians import composite_weights, covariance_3d, gaussian_alpha, project_gaussians
from threestudio.utils.errors import UserError


def random_model(n=300, seed=0, sh_degree=0):
    g = torch.Generator().manual_seed(seed)
    m = GaussianModel({"num_points": n, "sh_degree": sh_degree})
    m.set_params(
        {
            "means": torch.randn(n, 3, generator=g) * 0.3,
            "f_dc": torch.randn(n, 3, generator=g),
            "f_rest": torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g),
            "opacity_logit": torch.randn(n, generator=g),
            "log_scales": torch.randn(n, 3, generator=g) * 0.3 - 3.0,
            "quats": torch.randn(n, 4, generator=g),
        }
    )
    return m


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


def test_ply_round_trip(tmp_path):
    m = random_model(257, sh_degree=1)
    m.save_ply(tmp_path / "a.ply")
    m2 = GaussianModel({"sh_degree": 1})
    m2.load_ply(tmp_path / "a.ply")
    assert m2.num_points == 257
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(getattr(m, k).detach().numpy(), getattr(m2, k).detach().numpy())
    from plyfile import PlyData

    names = PlyData.read(str(tmp_path / "a.ply"))["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert "f_rest_8" in names and names[-4:] == ("rot_0", "rot_1", "rot_2", "rot_3")


def test_ply_rejects_non_3dgs(tmp_path):
    import trimesh

    trimesh.creation.box().export(tmp_path / "mesh.ply")
    with pytest.raises(UserError, match="not a 3DGS PLY"):
        GaussianModel({}).load_ply(tmp_path / "mesh.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(UserError):
        GaussianModel({}).load_ply(tmp_path / "junk.ply")
    with pytest.raises(UserError, match="SH degree"):
        random_model(10, sh_degree=1).save_ply(tmp_path / "sh1.ply") or GaussianModel({}).load_ply(tmp_path / "sh1.ply")


def test_torch_rasterizer_matches_dense_reference():
    m = random_model(400)
    cams = make_cameras([90.0, -30.0], 10.0, 1.5, 60.0, 40, 48, 0.0, "body")
    out = rasterize_torch(m.means, m.scales, m.rotations, m.opacities, m.colors, cams.w2c, cams.K, 48, 40, tile=16)
    ref = dense_reference(m.means, m.scales, m.rotations, m.opacities, m.colors, cams.w2c, cams.K, 48, 40)
    assert out["comp_rgb"].shape == (2, 40, 48, 3)
    np.testing.assert_allclose(out["comp_rgb"].detach(), ref.detach(), atol=2e-5)
    assert out["opacity"].max() > 0.3


def test_single_gaussian_known_answer():
    """One isotropic Gaussian on the optical axis: centre alpha = opacity, 1-sigma falloff exp(-1/2)."""
    cams = make_cameras([90.0], 0.0, 2.0, 60.0, 33, 33, 0.0, "body")
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
    cams = make_cameras([90.0], 0.0, 1.5, 60.0, 32, 32, 0.0, "body")
    out = rasterize_torch(m.means, m.scales, m.rotations, m.opacities, m.colors, cams.w2c, cams.K, 32, 32)
    out["comp_rgb"].sum().backward()
    assert out["means2d"].grad is not None and out["means2d"].grad.abs().sum() > 0
    assert m.means.grad.abs().sum() > 0 and m.f_dc.grad.abs().sum() > 0


def test_template_initialisation(template):
    m = GaussianModel({"num_points": 2000}).init_from_template(template)
    assert m.num_points == 2000
    np.testing.assert_allclose(m.opacities.detach(), 0.1, rtol=1e-5)
    np.testing.assert_allclose(m.colors.detach(), 0.5, atol=1e-6)
    s = m.scales.detach()
    assert torch.allclose(s[:, 0], s[:, 1]) and (s > 1e-4).all() and (s < 0.1).all()
    # points lie on the template surface: nearest template vertex is close
    d = torch.cdist(m.means.detach()[:200], template.vertices).min(1).values
    assert d.max() < 0.05
