import os

import pytest
import torch

from tests.conftest import REPO


@pytest.mark.gpu
def test_gsplat_agrees_with_torch_rasterizer():
    pytest.importorskip("gsplat")
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from rasterizer_agreement import scene

    from threestudio.models.renderers.gsplat_renderer import GsplatRenderer
    from threestudio.models.renderers.torch_splat import TorchSplatRenderer
    from threestudio.ops.camera import Cameras, orbit_cameras

    _, m = scene(os.environ.get("GIP_TEMPLATE"), 5000, torch.device("cuda"))
    cams = Cameras.cat([orbit_cameras([az], 0.0, 1.8, 50.0, 128, 128, 0.0, "body") for az in (90, -90, 0)]).to("cuda")
    og = GsplatRenderer({}).render(m, cams)
    ot = TorchSplatRenderer({}).render(m, cams)
    mse = ((og["comp_rgb"] - ot["comp_rgb"]) ** 2).mean()
    assert 10 * torch.log10(1 / mse) >= 40
    (og["comp_rgb"].sum()).backward()
    assert og["means2d"].grad is not None and og["means2d"].grad.abs().sum() > 0


@pytest.mark.gpu
def test_gsplat_depth_channel_changes_nothing_else():
    """Rendering without the depth channel (the default) gives the same RGB, alpha, radii and gradients
    as rendering it: each channel is blended on its own and an unused channel's gradient is zero."""
    pytest.importorskip("gsplat")
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from rasterizer_agreement import scene

    from threestudio.models.renderers.gsplat_renderer import GsplatRenderer
    from threestudio.ops.camera import Cameras, orbit_cameras

    _, m = scene(os.environ.get("GIP_TEMPLATE"), 20000, torch.device("cuda"))
    cams = Cameras.cat([orbit_cameras([az], 10.0, 1.8, 50.0, 256, 256, 0.0, "body") for az in (90, 0, -60)]).to("cuda")
    target = torch.rand(3, 256, 256, 3, device="cuda")
    res = {}
    for depth in (False, True):
        for p in (m.means, m.f_dc, m.opacity_logit):
            p.grad = None
        out = GsplatRenderer({"depth": depth}).render(m, cams)
        assert ("depth" in out) == depth
        ((out["comp_rgb"] - target) ** 2).mean().backward()
        res[depth] = (out, [p.grad.clone() for p in (m.means, m.f_dc, m.opacity_logit)])
    (a, ga), (b, gb) = res[False], res[True]
    for k in ("comp_rgb", "opacity", "radii"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    torch.testing.assert_close(a["means2d"].grad, b["means2d"].grad, rtol=1e-5, atol=1e-9)
    for x, y in zip(ga, gb, strict=True):  # atomics add in any order: equal up to float reordering
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-9)
