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


def random_identity_guidance(models: str, device, **cfg):
    """The stage-1 guidance on the real-size random networks of ``python -m threestudio.tiny --size sd15
    --out models``, eager (as stage 2 runs them; ``cfg`` overrides), loaded on ``device`` with a random
    identity (two random ArcFace embeddings and crops: the positive and the irrelevant branch)."""
    import numpy as np

    from threestudio.models.face.identity import FaceID
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance

    g = FaceIDControlNetGuidance(
        {
            "pretrained_model_name_or_path": f"{models}/rv",
            "vae_name_or_path": f"{models}/vae",
            "controlnet_name_or_path": f"{models}/controlnet",
            "ip_adapter_name_or_path": f"{models}/ip-adapter",
            "image_encoder_name_or_path": f"{models}/image_encoder",
            "face": {"detector": "haar", "model_name": "tiny_l", "root": f"{models}/insightface"},
            "compile_denoiser": False,
            "compile_vae_encoder": False,
            **cfg,
        }
    )
    g.load(device)
    rng = np.random.default_rng(0)
    fids = [
        FaceID(
            (e := rng.standard_normal(512).astype(np.float32)) / np.linalg.norm(e),
            rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
            np.zeros(4),
        )
        for _ in range(2)
    ]
    g.set_identity(*fids)
    return g
