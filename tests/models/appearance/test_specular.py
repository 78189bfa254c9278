import math

import numpy as np
import pytest
import torch

from tests.conftest import Payload
from threestudio.models.appearance.specular import SpecularAppearance
from threestudio.ops.asg import asg, reflect
from threestudio.utils.errors import UserError


def lobe_appearance(tilt_deg: float, sharp: float = 40.0) -> SpecularAppearance:
    """One lobe, the same for every Gaussian (feature-independent): full amplitude, sharp and round,
    its axis tilted by ``tilt_deg`` from the normal towards the first tangent."""
    app = SpecularAppearance({"feature_dim": 4, "num_lobes": 1, "max_sharpness": 64.0})
    t = math.radians(tilt_deg)
    with torch.no_grad():
        app.mlp[-1].weight.zero_()
        b = app.mlp[-1].bias
        b[:3] = 10.0  # amplitude ~ max
        b[3:5] = math.log(sharp / (64.0 - sharp))  # sigmoid^-1(sharp / max)
        b[5:8] = torch.tensor([math.sin(t), 0.0, math.cos(t)])
        b[8] = 0.0
    return app


def highlight_x(app, cam_x: float, height: float = 1.0) -> float:
    """x of the brightest point of a flat patch (z = 0, normal +z, tangent +x) seen from (cam_x, 0, height)."""
    xs = torch.linspace(-2.0, 3.0, 1001)
    means = torch.stack([xs, torch.zeros_like(xs), torch.zeros_like(xs)], -1)
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(len(xs), 1)
    scales = torch.tensor([0.1, 0.1, 0.001]).repeat(len(xs), 1)  # shortest axis z: normal +z, t1 = +x
    c2w = torch.eye(4)[None]
    c2w[0, :3, 3] = torch.tensor([cam_x, 0.0, height])
    with torch.no_grad():
        s = app.specular(means, quats, scales, torch.zeros(len(xs), 4), c2w)[0, :, 0]
    return float(xs[s.argmax()])


def one_flat_gaussian(spec_dim=0):
    from threestudio.models.geometry.gaussian_model import GaussianModel

    m = GaussianModel({"spec_feature_dim": spec_dim})
    p = {
        "means": torch.zeros(1, 3),
        "f_dc": torch.zeros(1, 3),
        "f_rest": torch.zeros(1, 0, 3),
        "opacity_logit": torch.tensor([4.0]),
        "log_scales": torch.log(torch.tensor([[0.2, 0.01, 0.2]])),
        "quats": torch.tensor([[1.0, 0, 0, 0]]),
    }  # a disk facing ±y (the front cameras)
    if spec_dim:
        p["spec_features"] = torch.randn(1, spec_dim, generator=torch.Generator().manual_seed(0))
    m.set_params(p)
    return m


def test_specular_network_pickle_is_refused(tmp_path):
    from threestudio.data.handoff import load_avatar
    from threestudio.models.appearance.specular import SpecularAppearance

    marker = tmp_path / "ran"
    one_flat_gaussian(8).save_ply(tmp_path / "avatar.ply")
    torch.save({"config": Payload(marker)}, tmp_path / "avatar.specular.safetensors")  # a pickle in disguise
    with pytest.raises(UserError, match="not a specular network file"):
        load_avatar(tmp_path / "avatar.ply", "body-gaussian-geometry", {})
    with pytest.raises(UserError):
        SpecularAppearance.load(tmp_path / "avatar.specular.safetensors")
    # an old-format network (pickle) beside the avatar is never opened: the avatar loads diffuse-only
    (tmp_path / "avatar.specular.safetensors").unlink()
    torch.save({"config": Payload(marker)}, tmp_path / "avatar.specular.pt")
    m, app = load_avatar(tmp_path / "avatar.ply", "body-gaussian-geometry", {})
    assert app is None and m.num_points == 1
    assert not marker.exists()


def test_single_lobe_known_answer_anisotropic_and_view_dependent():
    x, y, z = torch.eye(3)
    lam, mu = torch.tensor(2.0), torch.tensor(8.0)
    a = 0.4
    peak = asg(z, x, y, z, lam, mu)
    along_x = asg(torch.tensor([math.sin(a), 0, math.cos(a)]), x, y, z, lam, mu)
    along_y = asg(torch.tensor([0, math.sin(a), math.cos(a)]), x, y, z, lam, mu)
    assert float(peak) == pytest.approx(1.0)
    assert float(along_x) == pytest.approx(math.cos(a) * math.exp(-2 * math.sin(a) ** 2), rel=1e-5)
    assert float(along_y) == pytest.approx(math.cos(a) * math.exp(-8 * math.sin(a) ** 2), rel=1e-5)
    assert float(along_x) > float(along_y) + 0.2  # anisotropic
    assert float(asg(-z, x, y, z, lam, mu)) == 0.0  # lower hemisphere
    # through the reflection about the normal z: the response depends on where the camera is
    v_head_on = z
    v_oblique = torch.tensor([math.sin(0.5), 0, math.cos(0.5)])
    r1, r2 = reflect(v_head_on, z), reflect(v_oblique, z)
    np.testing.assert_allclose(r2, [-math.sin(0.5), 0, math.cos(0.5)], atol=1e-6)
    assert float(asg(r1, x, y, z, lam, mu)) > float(asg(r2, x, y, z, lam, mu)) + 0.1


def test_highlight_sits_at_the_mirror_point_and_moves_with_the_camera():
    """A lobe tilted by θ from the normal peaks where the reflected view direction meets it: at
    x = camera_x + h·tan θ on a flat patch at depth h (a normal-aligned lobe would peak right under
    the camera, and SpecularIP's reflection-centred lobe would not depend on x at all)."""
    app = lobe_appearance(30.0)
    shift = math.tan(math.radians(30.0))
    for cam_x in (0.0, 0.4):
        assert highlight_x(app, cam_x) == pytest.approx(cam_x + shift, abs=0.02)
    assert highlight_x(app, 0.4) - highlight_x(app, 0.0) == pytest.approx(0.4, abs=0.02)
    assert highlight_x(lobe_appearance(0.0), 0.4) == pytest.approx(0.4, abs=0.02)  # untilted: under the camera


def test_specular_amplitude_is_bounded():
    app = SpecularAppearance({"feature_dim": 8, "num_lobes": 4, "max_amplitude": 0.6})
    with torch.no_grad():
        app.mlp[-1].bias.view(4, 9)[:, :3] = 30.0  # saturate every lobe
    n = 500
    g = torch.Generator().manual_seed(0)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    c2w = torch.eye(4).repeat(8, 1, 1)
    c2w[:, :3, 3] = torch.randn(8, 3, generator=g) * 2
    s = app.specular(
        torch.randn(n, 3, generator=g) * 0.3,
        quats,
        torch.rand(n, 3, generator=g) + 0.01,
        torch.randn(n, 8, generator=g) * 3,
        c2w,
    )
    assert float(s.min()) >= 0.0 and float(s.max()) <= 0.6 + 1e-5
    assert float(s.max()) > 0.1  # and highlights do reach a visible strength


def test_rendered_colour_changes_with_camera_only_with_specular():
    from threestudio.models.renderers.torch_splat import TorchSplatRenderer
    from threestudio.ops.camera import orbit_cameras

    cams = orbit_cameras([90.0, 60.0], 0.0, 1.5, 40.0, 33, 33, 0.0, "body")
    ren = TorchSplatRenderer({})
    app = SpecularAppearance({"feature_dim": 8, "num_lobes": 2})
    with torch.no_grad():
        app.mlp[-1].bias.view(2, 9)[:, :3] = 2.0  # visible highlights
        app.mlp[-1].bias.view(2, 9)[:, 3:5] = -2.0  # broad lobes
    m = one_flat_gaussian(8)
    diffuse = ren.render(m, cams)["comp_rgb"][:, 16, 16].detach()
    spec = ren.render(m, cams, app.colors(m, cams.c2w))["comp_rgb"][:, 16, 16].detach()
    np.testing.assert_allclose(diffuse[0], diffuse[1], atol=1e-6)  # SH0: same from every camera
    assert (spec[0] - spec[1]).abs().max() > 0.02  # specular: depends on the camera
    assert (spec[0] - diffuse[0]).abs().max() > 0.02


def test_specular_save_load_round_trip(tmp_path):
    from threestudio.data.handoff import load_avatar

    m = one_flat_gaussian(8)
    app = SpecularAppearance({"feature_dim": 8, "num_lobes": 2})
    m.save_ply(tmp_path / "avatar.ply")
    app.save(tmp_path / "avatar.specular.safetensors")
    m2, app2 = load_avatar(tmp_path / "avatar.ply", "body-gaussian-geometry", {})
    assert app2 is not None and m2.cfg.spec_feature_dim == 8
    np.testing.assert_array_equal(m2.spec_features.detach(), m.spec_features.detach())
    c2w = torch.eye(4)[None]
    c2w[0, :3, 3] = torch.tensor([0.3, 1.5, 0.2])
    np.testing.assert_allclose(app2.colors(m2, c2w).detach(), app.colors(m, c2w).detach(), atol=1e-6)
    # a diffuse-only PLY still loads everywhere (no appearance), and can gain one in a later stage
    one_flat_gaussian(0).save_ply(tmp_path / "diffuse.ply")
    m3, app3 = load_avatar(tmp_path / "diffuse.ply", "body-gaussian-geometry", {})
    assert app3 is None and m3.cfg.spec_feature_dim == 0
    m4, app4 = load_avatar(
        tmp_path / "diffuse.ply", "body-gaussian-geometry", {}, "asg-specular-appearance", {"feature_dim": 4}
    )
    assert app4 is not None and m4.spec_features.shape == (1, 4)
    from plyfile import PlyData

    names = PlyData.read(str(tmp_path / "avatar.ply"))["vertex"].data.dtype.names
    assert "spec_7" in names and "opacity" in names
