"""Specular benchmark with a known answer from an *independent* shading model (CUDA): the textured
ground-truth avatar of ``bench/reconstruction.py``, made of discs lying in the body surface, lit by
three fixed directional lights with white Blinn–Phong highlights (not the ASG model being tested), is
rendered on the refinement ring (32 views, 17°). Stage 3 reconstructs it from a plain grey
initialisation once diffuse-only (SH0, the reference) and once with the ASG specular model. Held-out
PSNR/SSIM on other azimuths and elevations tell whether view-dependent highlights are learned.

    python bench/specular.py --template anny.npz --out r.json
"""

from __future__ import annotations

import tempfile

from common import emit  # noqa: E402
from reconstruction import known_answer_setup, run_record, score, train  # noqa: E402


def main():
    from threestudio.data.synthetic import BlinnPhongHighlights, write_known_answer_stages

    a, dev, tpl, ren, gt = known_answer_setup(__doc__.split("\n\n")[0], 200_000, 512, 1500, flat=True)
    gt_app = BlinnPhongHighlights()
    res = {
        "benchmark": "specular",
        "target": "Blinn-Phong highlights (3 directional lights, strength 0.35, shininess 40) on flat textured discs",
        **run_record(a),
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
