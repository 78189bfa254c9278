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
