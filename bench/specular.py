"""Specular benchmark with a known answer (CUDA): the ground-truth textured avatar of
``bench/reconstruction.py`` plus view-dependent highlights (a fixed ASG specular appearance with
random per-Gaussian features) is rendered on the refinement ring; stage 3 reconstructs it from a
plain grey initialisation once diffuse-only (SH0, the reference) and once with the specular model.
Held-out PSNR/SSIM on other azimuths and elevations tell whether the highlights are learned.

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
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from threestudio.data.synthetic import textured_model, write_known_answer_stages
    from threestudio.models.appearance.specular import SpecularAppearance
    from threestudio.models.body.template import BodyTemplate
    from threestudio.models.geometry.gaussian_model import GaussianModel

    dev = torch.device(a.device)
    tpl = BodyTemplate.load(a.template)
    ren = renderer_for(dev)
    base = textured_model(tpl, a.gt_points)
    gt = GaussianModel({"num_points": a.gt_points, "spec_feature_dim": 32})
    p = {k: getattr(base, k).detach() for k in base.param_names}
    p["spec_features"] = torch.randn(a.gt_points, 32, generator=torch.Generator().manual_seed(5))
    gt.set_params(p)
    gt = gt.to(dev)
    torch.manual_seed(11)
    gt_app = SpecularAppearance({"feature_dim": 32, "num_lobes": 4})
    with torch.no_grad():
        gt_app.mlp[-1].bias.view(4, 6)[:, :3] = -1.0  # visible highlights (amplitude ~0.3 per lobe)
        gt_app.mlp[-1].bias.view(4, 6)[:, 3:5] = -1.5  # lobes of medium width
    gt_app = gt_app.to(dev)
    res = {"benchmark": "specular", "gt_points": a.gt_points, "init_points": a.init_points, "train_views": 32,
           "resolution": a.res, "steps": a.steps}
    with tempfile.TemporaryDirectory() as d:
        s2 = write_known_answer_stages(d, tpl, gt, ren, a.init_points, 32, a.res, device=dev, appearance=gt_app)
        for name, app in (("diffuse_only", ""), ("specular", "asg-specular-appearance")):
            sysm, sec, mem = train(s2, a.steps, False, dev, app)
            res[name] = {"seconds": sec, "peak_gpu_mem_gib": mem, **score(sysm, gt, ren, a.res, gt_app)}
    res["psnr_gain_heldout_ring_db"] = (res["specular"]["ring17_heldout_azimuths"]["psnr_body_box"]
                                        - res["diffuse_only"]["ring17_heldout_azimuths"]["psnr_body_box"])
    emit(res, a.out)


if __name__ == "__main__":
    main()
