"""Paper-settings stage-2 refinement on a CUDA GPU with real-size networks in random weights:
32 ring views at 1024² (128² latents), 8 DDIM steps from t=142, CFG batch 2 per view, mutual
attention + distance-guided fusion on the decoder self-attentions. Times our tier-batched
refinement against the naive reference order (one view at a time, as the reference's 32 passes)
and reports peak GPU memory of each. ``--variants`` also times our refinement with speed-only settings of the
eager networks (the same math): ``channels_last`` (UNet, ControlNet and VAE weights and inputs in
channels-last layout) and ``cudnn_benchmark`` (cuDNN times its convolution algorithms for each new
shape and keeps the fastest), ``two_streams`` (the ControlNet on a second CUDA stream beside the UNet's
encoder half: ``controlnet_stream=true``; stage 2 runs one stream, as the default here) and
``decode_apart`` (each UNet batch's views VAE-decoded in batches sized on their own instead of at
once: ``system.decode_apart=true``, larger UNet batches under a budget), each run ``--repeats`` times
after one warm-up refinement of the default. ``--cap-gb`` sizes the batches to a GPU memory budget as
stage 2 does under ``system.max_gpu_memory_gb`` (the pipeline benchmark's 22 GiB cap), where the two
ways of decoding differ.

    python -m threestudio.tiny --size sd15 --out /tmp/sd15
    python bench/refine_views.py --models /tmp/sd15 --template anny.npz --out r.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import torch
from common import emit, random_identity_guidance  # noqa: E402


@contextlib.contextmanager
def _channels_last(g):
    g.set_channels_last(True)
    try:
        yield
    finally:
        g.set_channels_last(False)


@contextlib.contextmanager
def _cudnn_benchmark(g):
    before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def _decode_apart(refiner):
    before, refiner.decode_apart = refiner.decode_apart, True
    try:
        yield
    finally:
        refiner.decode_apart = before


@contextlib.contextmanager
def _two_streams(g):
    from threestudio.models.guidance.faceid_controlnet import TwoStreamNoisePrediction

    before, g._denoise = g._denoise, TwoStreamNoisePrediction()
    try:
        yield
    finally:
        g._denoise = before


VARIANTS = {"channels_last": _channels_last, "cudnn_benchmark": _cudnn_benchmark, "two_streams": _two_streams}
"""Speed-only settings of the eager networks: context managers that take the guidance and hold the setting."""
REFINER_VARIANTS = {"decode_apart": _decode_apart}
"""Speed-only settings of the refiner itself: context managers that take the :class:`VCRRefiner`."""


def time_variants(refiner, rgb, pose, text_cond, text_uncond, variants, repeats: int = 2, chunk: int = 0, budget=None):
    """Time ``refiner.refine`` (a :class:`VCRRefiner`) with the default settings and with each of
    ``variants`` (names in :data:`VARIANTS` or :data:`REFINER_VARIANTS`), ``repeats`` refinements each,
    after one untimed warm-up refinement; each setting holds for its own refinements only; ``budget`` (a
    :class:`~threestudio.utils.gpu.MemoryBudget` or None) sizes the batches as in stage 2. Returns
    ``(timings, outputs)``: per name ``{"seconds": [...], "finite": bool, "speedup_vs_default_best": float}``
    and the last refined views [n, H, W, 3] (to check that a speed-only setting refines as the default does)."""
    g = refiner.guidance
    cuda = g.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timed = {"ours_default": contextlib.nullcontext}
    for v in variants:  # a setting of the refiner takes the refiner, one of the networks the guidance
        timed[f"ours_{v}"] = (
            functools.partial(REFINER_VARIANTS[v], refiner)
            if v in REFINER_VARIANTS
            else functools.partial(VARIANTS[v], g)
        )
    kw = {"chunk": chunk, "budget": budget}
    refiner.refine(rgb, pose, text_cond, text_uncond, **kw)  # warm-up: cuDNN/cuBLAS plans, lazy CUDA modules
    timings, outputs = {}, {}
    for name, setting in timed.items():
        secs = []
        with setting():
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                out = refiner.refine(rgb, pose, text_cond, text_uncond, **kw)
                sync()
                secs.append(time.perf_counter() - t)
        timings[name] = {"seconds": secs, "finite": bool(torch.isfinite(out).all()), "batches": list(refiner.batches)}
        outputs[name] = out
    base = min(timings["ours_default"]["seconds"])
    for v in timings.values():
        v["speedup_vs_default_best"] = base / min(v["seconds"])
    return timings, outputs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--template", default=None)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=0, help="max views per UNet batch within a tier (0 = whole tier)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument(
        "--variants",
        default="",
        help="comma list of speed-only settings to time as well: "
        + ", ".join(sorted({**VARIANTS, **REFINER_VARIANTS})),
    )
    ap.add_argument("--repeats", type=int, default=2, help="refinements per variant (the first includes its set-up)")
    ap.add_argument(
        "--cap-gb",
        type=float,
        default=0.0,
        help="size the batches to this GPU memory budget, as stage 2 does under system.max_gpu_memory_gb (0 = no cap)",
    )
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    variants = [v for v in a.variants.split(",") if v]
    known = {**VARIANTS, **REFINER_VARIANTS}
    unknown = set(variants) - set(known)
    if unknown:
        ap.error(f"unknown --variants {sorted(unknown)}; choose from {sorted(known)}")
    if a.cap_gb < 0:
        ap.error(f"--cap-gb must be >= 0 (0 = no cap), got {a.cap_gb}")
    from threestudio.models.body.template import BodyTemplate
    from threestudio.models.geometry.gaussian_model import GaussianModel
    from threestudio.models.guidance.vcr import VCRRefiner
    from threestudio.models.renderers.gsplat_renderer import GsplatRenderer
    from threestudio.ops.camera import ring_cameras
    from threestudio.ops.openpose import skeleton_images
    from threestudio.utils.gpu import MemoryBudget

    dev = torch.device("cuda")
    budget = None
    if a.cap_gb > 0:
        budget = MemoryBudget(dev, a.cap_gb)
        budget.apply()
    g = random_identity_guidance(a.models, dev, controlnet_stream=False)  # eager, one stream: as RefineSystem runs them
    tpl = BodyTemplate.load(a.template)
    geo = GaussianModel({"num_points": 100_000}).init_from_template(tpl).to(dev)
    cams = ring_cameras(a.views, 17.0, 1.5, 70.0, a.res).to(dev)
    with torch.no_grad():
        rgb = torch.cat([GsplatRenderer({}).render(geo, cams[i])["comp_rgb"] for i in range(a.views)])
    pose, _ = skeleton_images(tpl.keypoints.to(dev), cams.w2c, cams.K, a.res, a.res, False)
    D = g.unet.config.cross_attention_dim
    tc, tu = torch.randn(a.views, 77, D, device=dev), torch.randn(a.views, 77, D, device=dev)
    r = VCRRefiner(g)
    res = {"benchmark": "refine_views", "views": a.views, "resolution": a.res, "ddim_steps": 8, "chunk": a.chunk}
    res["cap_gb"] = a.cap_gb
    runs = (("ours_tier_batched", {"chunk": a.chunk, "budget": budget}), ("reference_sequential", {"sequential": True}))
    for name, kw in runs:
        if name.startswith("reference") and a.skip_reference:
            continue
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = r.refine(rgb, pose, tc, tu, **kw)
        torch.cuda.synchronize()
        res[name] = {
            "seconds": time.perf_counter() - t,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "finite": bool(torch.isfinite(out).all()),
            "batches": list(r.batches),
        }
        res[name + "_output"] = out.cpu()
    if "reference_sequential" in res:
        d = (res.pop("ours_tier_batched_output") - res.pop("reference_sequential_output")).abs()
        res["max_abs_diff_batched_vs_sequential"] = float(d.max())
        res["speedup"] = res["reference_sequential"]["seconds"] / res["ours_tier_batched"]["seconds"]
    res.pop("ours_tier_batched_output", None)
    if variants:
        res["variants"], _ = time_variants(r, rgb, pose, tc, tu, variants, a.repeats, a.chunk, budget)
    emit(res, a.out)


if __name__ == "__main__":
    main()
