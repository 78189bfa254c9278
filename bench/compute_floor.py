"""Floating-point work of the paper-settings pipeline, counted on the real SD-1.5 / ControlNet / VAE
architectures (``torch.utils.flop_counter`` on meta tensors: no weights, no GPU, a few seconds on a CPU),
and the time it takes at given sustained throughputs. With ``--step-json`` (a ``bench/stage1_step.py
--breakdown`` result) it also reports the throughput each part of the measured stage-1 step reached.

Counted: stage 1's noise-prediction rows over the 2400-step AHDS schedule (4 views x pos + null rows,
plus the negative rows of the views whose timestep is >= anpg_t_threshold, the expected number under
the schedule's uniform windows) and the VAE encoder's forward + input-gradient backward at 512² for 4
views a step; stage 2's 8 DDIM steps x CFG rows of 32 views at 128² latents with VCR's extra attention
(key views attend to twice the tokens, in-between views run two more attentions in the decoder
self-attention layers), its 32 VAE encodes and decodes at 1024². Not counted: gsplat, the optimiser,
stage 3 (rasterisation-bound), elementwise work outside the networks.

    python bench/compute_floor.py --step-json bench/results/stage1_step_h100_rgb_render.json --out f.json
"""

from __future__ import annotations

import argparse
import json

import torch
from common import emit  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def networks():
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from threestudio.tiny import ARCHITECTURES

    a = ARCHITECTURES["sd15"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**a["unet"])
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=a["cond"])
        vae = AutoencoderKL(**a["vae"])
    return unet, cn, vae


def row_flops(unet, cn, lat: int) -> tuple[int, list[tuple[int, int]]]:
    """FLOPs of one ControlNet + UNet row at ``lat``² latents, and (tokens, channels) of every decoder
    self-attention (the layers VCR changes)."""
    shapes = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:])))
        for n, m in unet.named_modules()
        if n.startswith("up_blocks.") and n.endswith("attn1")
    ]
    with torch.device("meta"):
        z, t = torch.randn(1, 4, lat, lat), torch.tensor([500])
        txt, cond = torch.randn(1, 77, 768), torch.randn(1, 3, 8 * lat, 8 * lat)

    def run():
        d, m = cn(z, t, encoder_hidden_states=txt, controlnet_cond=cond, return_dict=False)
        unet(z, t, encoder_hidden_states=txt, down_block_additional_residuals=d, mid_block_additional_residual=m)

    f = _flops(run)
    for h in hooks:
        h.remove()
    return f, shapes


def vae_flops(vae, res: int) -> dict:
    with torch.device("meta"):
        x = torch.randn(1, 3, res, res, requires_grad=True)
        z = torch.randn(1, 4, res // 8, res // 8)
    vae.requires_grad_(False)
    enc = _flops(lambda: vae.encode(x))

    def fwd_bwd():
        vae.encode(x).latent_dist.mean.sum().backward()

    return {"encode": enc, "encode_backward": _flops(fwd_bwd) - enc, "decode": _flops(lambda: vae.decode(z))}


def stage1_rows(
    n_steps: int = 2400, views: int = 4, max_t: int = 800, t_thr: int = 170, steps: range | None = None
) -> float:
    """Expected noise-prediction rows over the AHDS schedule (or its ``steps``) with ``skip_unused_negative``."""
    from threestudio.ops.sds import AHDSSchedule

    s = AHDSSchedule(n_steps, max_t)
    rows = 0.0
    for step in steps if steps is not None else range(n_steps):
        lo, hi = s.window(step)
        p_neg = max(0, hi - max(lo, t_thr) + 1) / (hi - lo + 1)
        rows += views * (2 + p_neg)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tflops", type=float, nargs="*", default=[300.0, 400.0, 500.0], help="sustained TFLOP/s")
    ap.add_argument("--step-json", default=None, help="a bench/stage1_step.py --breakdown result")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    unet, cn, vae = networks()
    row64, _ = row_flops(unet, cn, 64)
    row128, attn = row_flops(unet, cn, 128)
    extra_key = sum(4 * L * L * C for L, C in attn)  # twice the keys and values: one more L x L attention
    extra_between = 2 * extra_key  # two more attentions (the two anchors), blended
    v512, v1024 = vae_flops(vae, 512), vae_flops(vae, 1024)
    rows1 = stage1_rows()
    s1 = {
        "noise_prediction_rows": round(rows1),
        "noise_prediction": rows1 * row64,
        "vae_encoder_forward": 2400 * 4 * v512["encode"],
        "vae_encoder_backward": 2400 * 4 * v512["encode_backward"],
    }
    cfg_rows = 8 * 2
    s2 = {
        "noise_prediction": cfg_rows * (32 * row128 + 4 * extra_key + 24 * extra_between),
        "vae_encode": 32 * v1024["encode"],
        "vae_decode": 32 * v1024["decode"],
    }
    res = {
        "benchmark": "compute_floor",
        "tflop_per_item": {
            "controlnet_unet_row_64": row64 / 1e12,
            "controlnet_unet_row_128": row128 / 1e12,
            "vcr_extra_key_row_128": extra_key / 1e12,
            "vcr_extra_between_row_128": extra_between / 1e12,
            **{f"vae_{k}_512": v / 1e12 for k, v in v512.items()},
            **{f"vae_{k}_1024": v / 1e12 for k, v in v1024.items()},
        },
        "stage1_tflop": {k: (v / 1e12 if k != "noise_prediction_rows" else v) for k, v in s1.items()},
        "stage2_tflop": {k: v / 1e12 for k, v in s2.items()},
    }
    t1 = sum(v for k, v in s1.items() if k != "noise_prediction_rows")
    t2 = sum(s2.values())
    res["seconds_at"] = {f"{r:g}_tflops": {"stage1": t1 / (r * 1e12), "stage2": t2 / (r * 1e12)} for r in a.tflops}
    if a.step_json:
        step = json.load(open(a.step_json))
        b, first = step["ours_bf16"]["breakdown_ms"], step.get("start_step", 0)
        window = range(first + 100, first + 100 + max(step.get("steps", 40), 3))  # the --breakdown steps
        rows = stage1_rows(steps=window) / len(window)  # expected rows a step there
        res["achieved_tflops_in"] = {
            "file": a.step_json,
            "expected_rows_per_step": rows,
            "noise_prediction": rows * row64 / (b["noise_prediction"] * 1e-3) / 1e12,
            "vae_encoder_forward": 4 * v512["encode"] / (b["vae_encoder"] * 1e-3) / 1e12,
            "vae_encoder_backward_with_sds": 4 * v512["encode_backward"] / (b["sds_and_vae_backward"] * 1e-3) / 1e12,
        }
    emit(res, a.out)


if __name__ == "__main__":
    main()
