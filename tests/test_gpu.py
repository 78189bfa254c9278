"""CUDA-only checks (skipped without a GPU)."""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_gsplat_agrees_with_torch_rasterizer():
    pytest.importorskip("gsplat")
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "bench"))
    from rasterizer_agreement import scene

    from threestudio.data.human_cameras import Cameras, make_cameras
    from threestudio.models.renderers.gsplat_renderer import GsplatRenderer
    from threestudio.models.renderers.torch_splat import TorchSplatRenderer

    _, m = scene(os.environ.get("GIP_TEMPLATE"), 5000, torch.device("cuda"))
    cams = Cameras.cat([make_cameras([az], 0.0, 1.8, 50.0, 128, 128, 0.0, "body") for az in (90, -90, 0)]).to("cuda")
    og = GsplatRenderer({}).render(m, cams)
    ot = TorchSplatRenderer({}).render(m, cams)
    mse = ((og["comp_rgb"] - ot["comp_rgb"]) ** 2).mean()
    assert 10 * torch.log10(1 / mse) >= 40
    (og["comp_rgb"].sum()).backward()
    assert og["means2d"].grad is not None and og["means2d"].grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_guidance_step_on_cuda_in_both_precisions(tiny_dir, tmp_path, monkeypatch, dtype):
    """The fp16 path (V100, T4, RTX 20xx) and the bf16 path run a finite, non-zero SDS step on CUDA."""
    from tests.conftest import face
    from tests.test_guidance import tiny_guidance_cfg
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance
    from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor

    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype=dtype))
    g.load("cuda")
    assert g.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    g.prepare_identity(str(face("man.png")))
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare("cuda")
    e = pp(torch.tensor([90.0, -90.0]), "body", torch.tensor([True, False]))
    rgb = torch.rand(2, 64, 64, 3, device="cuda", requires_grad=True)
    out = g(rgb, torch.rand(2, 32, 32, 3, device="cuda"), e["pos"].cuda(), e["neg"].cuda(), e["null"].cuda(), step=0)
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    img = g.decode_latents(torch.randn(1, 4, 16, 16, device="cuda"))
    assert img.shape == (1, 32, 32, 3) and torch.isfinite(img).all()
