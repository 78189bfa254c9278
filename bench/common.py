"""Helpers shared by the GPU benchmarks (JSON output, timing)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cuda_time(fn, repeat: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds, synchronising CUDA around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def emit(result: dict, out: str | None) -> None:
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result["torch"] = torch.__version__
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).clamp_min(1e-20)
    return float(10 * torch.log10(1.0 / mse))


def renderer_for(device: torch.device):
    """gsplat on CUDA, the pure-torch rasterizer on CPU (smoke checks)."""
    import threestudio
    from threestudio.models.renderers.base import resolve_renderer_type

    return threestudio.find(resolve_renderer_type("auto", device.type))({})
