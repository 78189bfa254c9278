"""Animation speed (CUDA): skinning (LBS of centres and rotations) + gsplat rendering of N Gaussians
at 1024² per frame, over a real AMASS motion; then the same with a facial expression recording played
at once (the template's 52 ARKit blendshapes + triangle rotations, then LBS). The naive reference
timed in the same run renders the same posed frame with the pure-torch rasterizer.

    python bench/animation_fps.py --template anny.npz --motion amass_test_17.npz \
        --expression threestudio/assets/expressions/demo_face.csv --out r.json
"""

from __future__ import annotations

import argparse
import time

import torch
from common import cuda_time, emit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", required=True)
    ap.add_argument("--motion", required=True)
    ap.add_argument("--expression", default="threestudio/assets/expressions/demo_face.csv")
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.animation.expression import load_expression
    from threestudio.animation.motion import load_motion
    from threestudio.animation.performance import build_performance
    from threestudio.data.synthetic import textured_model
    from threestudio.models.body.template import BodyTemplate
    from threestudio.models.renderers.gsplat_renderer import GsplatRenderer
    from threestudio.models.renderers.torch_splat import TorchSplatRenderer
    from threestudio.ops.camera import orbit_cameras

    dev = torch.device("cuda")
    tpl = BodyTemplate.load(a.template)
    t0 = time.perf_counter()
    model = textured_model(tpl, a.points).to(dev)
    an = GaussianAnimator(model, tpl)
    bind_s = time.perf_counter() - t0
    motion = load_motion(a.motion, fps=30)
    body = build_performance(tpl, motion, None, 30.0)
    face = build_performance(tpl, motion, load_expression(a.expression), 30.0)
    G = body.transforms.to(dev)
    Gf, Wf = face.transforms.to(dev), face.weights.to(dev)
    cam = orbit_cameras([90.0], 5.0, 2.5, 50.0, a.res, a.res, 0.0, "body").to(dev)
    ren = GsplatRenderer({})

    def frame(i, expression=False):
        with torch.no_grad():
            if expression:
                return ren.render(an.pose(Gf[i % len(Gf)], Wf[i % len(Wf)]), cam)["comp_rgb"]
            return ren.render(an.pose(G[i % len(G)], None), cam)["comp_rgb"]

    def fps_of(expression):
        for i in range(5):
            frame(i, expression)
        torch.cuda.synchronize()
        t = time.perf_counter()
        n = len(Gf) if expression else len(G)
        for i in range(n):
            frame(i, expression)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / n

    per = fps_of(False)
    per_expr = fps_of(True)
    skin_ms = 1000 * cuda_time(lambda: an.pose(G[7]), repeat=20)
    skin_expr_ms = 1000 * cuda_time(lambda: an.pose(Gf[7], Wf[7]), repeat=20)
    with torch.no_grad():
        posed = an.pose(G[7])
        ref_ms = 1000 * cuda_time(lambda: TorchSplatRenderer({}).render(posed, cam), repeat=1, warmup=0)
    emit(
        {
            "benchmark": "animation_fps",
            "points": a.points,
            "resolution": a.res,
            "frames": len(G),
            "bind_s": bind_s,
            "fps": 1.0 / per,
            "ms_per_frame": 1000 * per,
            "skinning_ms": skin_ms,
            "expression_frames": len(Gf),
            "expression_blendshapes": an.num_expressions,
            "expression_bound_gaussians": int(len(an.expression["gaussians"])) if an.expression else 0,
            "fps_with_expression": 1.0 / per_expr,
            "ms_per_frame_with_expression": 1000 * per_expr,
            "skinning_with_expression_ms": skin_expr_ms,
            "reference_torch_rasterizer_ms_per_frame": ref_ms,
            "speedup": ref_ms / (1000 * per),
        },
        a.out,
    )


if __name__ == "__main__":
    main()
