"""Animation speed (CUDA): skinning (LBS of centres and rotations) + gsplat rendering of N Gaussians
at 1024² per frame, over a real AMASS motion. The naive reference timed in the same run renders the
same posed frame with the pure-torch rasterizer.

    python bench/animation_fps.py --template anny.npz --motion amass_test_17.npz --out r.json
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
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.animation.motion import load_motion, retarget
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
    G = retarget(load_motion(a.motion, fps=30), tpl).to(dev)
    cam = orbit_cameras([90.0], 5.0, 2.5, 50.0, a.res, a.res, 0.0, "body").to(dev)
    ren = GsplatRenderer({})

    def frame(i):
        with torch.no_grad():
            return ren.render(an.pose(G[i % len(G)]), cam)["comp_rgb"]

    for i in range(5):
        frame(i)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(len(G)):
        frame(i)
    torch.cuda.synchronize()
    per = (time.perf_counter() - t) / len(G)
    skin_ms = 1000 * cuda_time(lambda: an.pose(G[7]), repeat=20)
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
            "reference_torch_rasterizer_ms_per_frame": ref_ms,
            "speedup": ref_ms / (1000 * per),
        },
        a.out,
    )


if __name__ == "__main__":
    main()
