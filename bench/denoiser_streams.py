"""The stage-1 noise prediction (ControlNet + UNet with IP-Adapter FaceID-Plus-v2) with the ControlNet on a
second CUDA stream beside the UNet's encoder half, against the one-stream order, on a CUDA GPU with
real-size networks in random weights.

The ControlNet's residuals enter the UNet only after its down blocks
(:mod:`threestudio.models.guidance.unet_halves`), so the ControlNet and the UNet's time embedding,
``conv_in`` and down blocks can run at the same time; at stage 1's 8-12 rows of 64² latents their
kernels do not fill the GPU one at a time. Both orders run the same kernels on the same tensors (the
outputs are compared). Times, per row count: CUDA-graph replays of each order (stage 1 replays its
noise prediction from a graph), eager or with ``--compile`` (compiled and saved as stage 1 compiles
them: :func:`noise_prediction` whole, :class:`TwoStreamNoisePrediction` in its three parts); and calls at
stage 2's 128² latents (stage 2 runs eagerly, no graph).

    python -m threestudio.tiny --size sd15 --out /tmp/sd15
    python bench/denoiser_streams.py --models /tmp/sd15 --out r.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import emit, random_identity_guidance  # noqa: E402


def _time(fn, reps: int, warm: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls (CUDA events), after ``warm`` calls."""
    for _ in range(warm):
        fn()
    ms = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms)


def _graphed(fn):
    """``fn`` (no arguments) captured in a CUDA graph after two warm-up calls; returns (replay, output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--rows", default="8,12", help="stage-1 row counts (64² latents, CUDA graph)")
    ap.add_argument("--stage2-rows", default="16", help="stage-2 row counts (128² latents, eager); '' = none")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="time the functions compiled as stage 1 compiles them (kept in $GIP_CACHE_DIR/aot), not eager",
    )
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from threestudio.models.guidance.faceid_controlnet import (
        TwoStreamNoisePrediction,
        compiled_noise_prediction,
        noise_prediction,
    )

    dev = torch.device("cuda")
    g = random_identity_guidance(a.models, dev)
    cn, unet, dt = g.controlnet, g.unet, g.dtype
    D = unet.config.cross_attention_dim
    # the two orders as stage 1 runs them: compiled (--compile) as FaceIDControlNetGuidance compiles them
    whole = compiled_noise_prediction() if a.compile else noise_prediction
    two = TwoStreamNoisePrediction(compiled=a.compile)

    def inputs(n: int, lat: int, views: int):
        z = torch.randn(n, 4, lat, lat, device=dev, dtype=dt)
        t = torch.randint(20, 800, (n,), device=dev)
        text = torch.randn(n, 77, D, device=dev, dtype=dt)
        br = g.branches["pos"]
        ids = br.id_embeds.expand(n, -1)[:, None].contiguous()
        clip = br.clip_embeds.expand(n, -1, -1)[:, None].contiguous()
        pose = torch.rand(views, 3, lat * 8, lat * 8, device=dev, dtype=dt)
        rows = torch.arange(n, device=dev) % views
        return z, t, text, ids, clip, pose, rows

    def one_stream(z, t, text, ids, clip, pose, rows):
        g.ip_projection.clip_embeds = None  # as predict_noise does: the last call's tokens stay out of the keys
        return whole(cn, unet, z, t, text, ids, clip, pose, rows, 1.0)

    def two_streams(z, t, text, ids, clip, pose, rows):
        return two(cn, unet, z, t, text, ids, clip, pose, rows, 1.0)

    res = {
        "benchmark": "denoiser_streams",
        "dtype": str(dt),
        "compiled": a.compile,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "stage1_graph_ms": {},
        "stage2_eager_ms": {},
    }
    with torch.no_grad():
        for n in [int(x) for x in a.rows.split(",") if x]:
            x = inputs(n, 64, 4)
            row = {}
            outs = {}
            for name, fn in (("one_stream", one_stream), ("two_streams", two_streams)):
                replay, out = _graphed(lambda fn=fn, x=x: fn(*x))
                row[name] = _time(replay, a.reps)
                outs[name] = out.clone()
            row["speedup"] = row["one_stream"] / row["two_streams"]
            row["max_abs_diff"] = float((outs["one_stream"].float() - outs["two_streams"].float()).abs().max())
            res["stage1_graph_ms"][str(n)] = row
            print(n, row, flush=True)
        for n in [int(x) for x in a.stage2_rows.split(",") if x]:
            x = inputs(n, 128, n // 2)
            row = {
                name: _time(lambda fn=fn, x=x: fn(*x), max(5, a.reps // 3))
                for name, fn in (("one_stream", one_stream), ("two_streams", two_streams))
            }
            row["speedup"] = row["one_stream"] / row["two_streams"]
            res["stage2_eager_ms"][str(n)] = row
            print(n, row, flush=True)
    emit(res, a.out)


if __name__ == "__main__":
    main()
