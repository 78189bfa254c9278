"""Stage-3 LPIPS-VGG loss on a CUDA GPU: forward + backward of ``LPIPSVGG(render, target)`` at the crop
sizes stage 3 meets (4 crops, both sides multiples of 32 px: loss boxes rounded to 64 px at 1024²,
then halved), with the eager elementwise kernels (``compile_elementwise=false``, the naive reference)
and with the compiled ones (the default), timed in the same process. The VGG-16 trunk has random
weights in the real shapes (``threestudio.tiny.write_vgg16``) and random heads; the timing does not
depend on the values.

Reported per variant: the median over ``--repeats`` passes of each size after ``--warmup`` passes (cuDNN
plans; for the compiled variant also its compilation, reported as ``first_pass_s``), their mean over
the sizes, and for the compiled variant the largest relative difference of the distance and of the
render's gradient from the eager one.

    python bench/lpips_vgg.py --out bench/results/lpips_vgg_h200.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import emit  # noqa: E402

SIZES = ((480, 336), (512, 352), (448, 320), (480, 320), (544, 352))
"""(H, W) of stage-3 crops at half resolution (the README's stage-3 example is 480 × 336)."""


def _model(tmp: Path, compiled: bool):
    from threestudio.models.perceptual.lpips_vgg import CHANNELS, LPIPSVGG
    from threestudio.tiny import write_vgg16

    vgg, heads = tmp / "vgg16-397923af.pth", tmp / "vgg.pth"
    if not vgg.exists():
        write_vgg16(vgg)
        g = torch.Generator().manual_seed(0)
        torch.save(
            {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(CHANNELS)}, heads
        )
    cfg = {"vgg_path": str(vgg), "heads_path": str(heads), "compile_elementwise": compiled}
    return LPIPSVGG(cfg).cuda()


def _pass(m, x0, y):
    x = x0.clone().requires_grad_(True)
    d = m(x, y)
    d.sum().backward()
    return d.detach(), x.grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = {}
    for h, w in SIZES:
        x = torch.rand(a.batch, 3, h, w, device="cuda", generator=g)
        y = (x + 0.1 * torch.randn(x.shape, device="cuda", generator=g)).clamp(0, 1)
        inputs[f"{h}x{w}"] = (x, y)
    res = {"benchmark": "lpips_vgg", "batch": a.batch, "sizes": list(inputs), "repeats": a.repeats}
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, compiled in (("eager_elementwise", False), ("compiled_elementwise", True)):
            m = _model(Path(tmp), compiled)
            r = {"ms": {}}
            torch.cuda.synchronize()
            t = time.perf_counter()
            for x, y in inputs.values():  # first pass of every size: compilation (compiled) and cuDNN plans
                _pass(m, x, y)
            torch.cuda.synchronize()
            r["first_pass_s"] = time.perf_counter() - t
            for size, (x, y) in inputs.items():
                for _ in range(a.warmup):
                    _pass(m, x, y)
                times = []
                for _ in range(a.repeats):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    _pass(m, x, y)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                r["ms"][size] = 1e3 * statistics.median(times)
                outs[(name, size)] = _pass(m, x, y)
            r["mean_ms"] = statistics.fmean(r["ms"].values())
            r["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            res[name] = r
    diff_d, diff_g = 0.0, 0.0
    for size in inputs:
        (d0, g0), (d1, g1) = outs[("eager_elementwise", size)], outs[("compiled_elementwise", size)]
        diff_d = max(diff_d, float(((d1 - d0).abs() / d0.abs()).max()))
        diff_g = max(diff_g, float((g1 - g0).norm() / g0.norm()))
    res["max_rel_diff_distance"], res["max_rel_diff_grad"] = diff_d, diff_g
    res["speedup"] = res["eager_elementwise"]["mean_ms"] / res["compiled_elementwise"]["mean_ms"]
    emit(res, a.out)


if __name__ == "__main__":
    main()
