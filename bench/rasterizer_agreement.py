"""gsplat vs the pure-torch rasterizer on a body-template scene: PSNR of RGB and alpha, and time
(the torch rasterizer is the naive reference). Needs CUDA and gsplat.

    python bench/rasterizer_agreement.py [--template T.npz] [--points 20000] [--size 256] [--out r.json]
"""

from __future__ import annotations

import argparse

import torch
from common import cuda_time, emit, psnr  # noqa: E402  (bench/common.py puts the repo on sys.path)


def scene(template_path: str | None, n: int, device):
    from threestudio.models.body.anny_body import AnnyBody
    from threestudio.models.body.template import BodyTemplate
    from threestudio.models.geometry.gaussian_model import GaussianModel

    tpl = BodyTemplate.load(template_path) if template_path else AnnyBody({}).template()
    m = GaussianModel({"num_points": n}).init_from_template(tpl)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.f_dc.copy_(torch.randn(n, 3, generator=g) * 1.2)
        m.opacity_logit.copy_(torch.randn(n, generator=g) + 1.0)
        m.log_scales.add_(torch.randn(n, 3, generator=g) * 0.3 + 0.4)
        m.quats.copy_(torch.randn(n, 4, generator=g))
    return tpl, m.to(device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", default=None)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from threestudio.models.renderers.gsplat_renderer import GsplatRenderer
    from threestudio.models.renderers.torch_splat import TorchSplatRenderer
    from threestudio.ops.camera import Cameras, orbit_cameras

    dev = torch.device("cuda")
    _, m = scene(a.template, a.points, dev)
    cams = Cameras.cat(
        [
            orbit_cameras([az], el, d, 50.0, a.size, a.size, cz, "body")
            for az, el, d, cz in ((90, 0, 1.8, 0), (-90, 10, 1.8, 0), (30, -20, 1.5, 0), (120, 5, 0.5, 0.65))
        ]
    ).to(dev)
    gs, ts = GsplatRenderer({}), TorchSplatRenderer({})
    with torch.no_grad():
        og, ot = gs.render(m, cams), ts.render(m, cams)
    per_view = [psnr(og["comp_rgb"][i], ot["comp_rgb"][i]) for i in range(len(cams))]
    res = {
        "benchmark": "rasterizer_agreement",
        "points": a.points,
        "size": a.size,
        "views": len(cams),
        "psnr_rgb_db": min(per_view),
        "psnr_rgb_per_view_db": per_view,
        "psnr_alpha_db": psnr(og["opacity"], ot["opacity"]),
        "max_abs_rgb": float((og["comp_rgb"] - ot["comp_rgb"]).abs().max()),
        "radii_agree": float(((og["radii"] > 0) == (ot["radii"] > 0)).float().mean()),
    }
    with torch.no_grad():
        res["gsplat_ms"] = 1000 * cuda_time(lambda: gs.render(m, cams), repeat=10)
        res["torch_reference_ms"] = 1000 * cuda_time(lambda: ts.render(m, cams), repeat=3, warmup=1)
    res["speedup"] = res["torch_reference_ms"] / res["gsplat_ms"]
    emit(res, a.out)


if __name__ == "__main__":
    main()
