"""Specular benchmark with a known answer from an *independent* shading model (CUDA): the textured
ground-truth avatar of ``bench/reconstruction.py``, made of discs lying in the body surface, lit by
three fixed directional lights with white Blinn–Phong highlights (not the ASG model being tested), is
rendered on the refinement ring (32 views, 17°). Stage 3 reconstructs it from a plain grey
initialisation once diffuse-only (SH0, the reference) and once with the ASG specular model. Held-out
PSNR/SSIM on other azimuths and elevations tell whether view-dependent highlights are learned.

    python bench/specular.py --template anny.npz --out r.json
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import emit, renderer_for  # noqa: E402
from reconstruction import score, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", required=True)
    ap.add_argument("--gt-points", type=int, default=200_000)
    ap.add_argument("--init-points", type=int, default=100_000)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke check (torch rasterizer)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from threestudio.data.synthetic import BlinnPhongHighlights, textured_model, write_known_answer_stages
    from threestudio.models.body.template import BodyTemplate

    dev = torch.device(a.device)
    tpl = BodyTemplate.load(a.template)
    ren = renderer_for(dev)
    gt = textured_model(tpl, a.gt_points, flat=True).to(dev)
    gt_app = BlinnPhongHighlights()
    res = {
        "benchmark": "specular",
        "target": "Blinn-Phong highlights (3 directional lights, strength 0.35, shininess 40) on flat textured discs",
        "gt_points": a.gt_points,
        "init_points": a.init_points,
        "train_views": 32,
        "resolution": a.res,
        "steps": a.steps,
    }
    with tempfile.TemporaryDirectory() as d:
        s2 = write_known_answer_stages(d, tpl, gt, ren, a.init_points, 32, a.res, device=dev, appearance=gt_app)
        for name, app in (("diffuse_only", ""), ("specular", "asg-specular-appearance")):
            sysm, sec, mem = train(s2, a.steps, False, dev, app)
            res[name] = {"seconds": sec, "peak_gpu_mem_gib": mem, **score(sysm, gt, ren, a.res, gt_app)}
    for ring in ("ring17_heldout_azimuths", "ring0", "ring35"):
        res[f"psnr_gain_{ring}_db"] = (
            res["specular"][ring]["psnr_body_box"] - res["diffuse_only"][ring]["psnr_body_box"]
        )
    emit(res, a.out)


if __name__ == "__main__":
    main()
