"""PyTorch's scaled-dot-product-attention kernels at the UNet's level-0 self-attention shapes (CUDA,
bf16, 8 heads of size 40, no grad): stage 1's 12 rows of 64² latents (4096 tokens), stage 2's 8 rows of
128² latents (16384 tokens) and its mutual attention (the keys and values of two views: 32768). Each
backend alone (FlashAttention-2, cuDNN, memory-efficient) beside PyTorch's own choice (``default``),
and the kernel that choice ran; mean of 10 calls after 3 warm-up calls, TFLOP/s as 4·B·h·Lq·Lk·d / time.

    python bench/sdpa_backends.py --out bench/results/sdpa_backends_<gpu>.json
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import emit  # noqa: E402

SHAPES = {  # name: (rows, query tokens, key tokens)
    "s1_12rows_4096": (12, 4096, 4096),
    "s2_8rows_16384": (8, 16384, 16384),
    "s2_8rows_16384_keys2x": (8, 16384, 32768),
}
BACKENDS = ("default", "FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")


def time_sdpa(q, k, v, backend: str, calls: int = 10) -> float:
    """Mean seconds of one ``F.scaled_dot_product_attention(q, k, v)`` with ``backend`` only."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    ctx = contextlib.nullcontext() if backend == "default" else sdpa_kernel([getattr(SDPBackend, backend)])
    with ctx, torch.no_grad():
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls


def default_kernel(q, k, v) -> str:
    """Name of the attention kernel PyTorch's own choice launches for these inputs."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as p:
        F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
    names = [e.key for e in p.key_averages() if e.self_device_time_total > 0]
    return max(names, key=len) if names else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=40)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/sdpa_backends.py needs a CUDA GPU")
    res = {"benchmark": "sdpa_backends", "dtype": "bfloat16", "heads": a.heads, "head_dim": a.head_dim, "results": {}}
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, (b, lq, lk) in SHAPES.items():
        q = torch.randn(b, a.heads, lq, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, a.heads, lk, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, a.heads, lk, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
        flops = 4 * b * a.heads * lq * lk * a.head_dim
        r = {}
        for be in BACKENDS:
            try:
                dt = time_sdpa(q, k, v, be)
                r[be] = {"ms": round(dt * 1e3, 3), "tflops": round(flops / dt / 1e12, 1)}
            except RuntimeError as e:  # a backend that does not support these inputs
                r[be] = f"unsupported: {str(e).splitlines()[0][:160]}"
        r["default_kernel"] = default_kernel(q, k, v)
        res["results"][name] = r
    emit(res, a.out)


if __name__ == "__main__":
    main()
