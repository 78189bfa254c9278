"""One paper-settings stage-1 (AHDS) step on a CUDA GPU with real-size networks in random weights:
batch 4, 1024² gsplat renders, 512² SDS, 3 conditioning branches (neg/pos/null) through
ControlNet + UNet with IP-Adapter FaceID-Plus-v2, 100k Gaussians. Reports time per step and peak
GPU memory for our step (bf16 guidance; compiled VAE encoder with bf16 bmm attention and GroupNorms
from per-channel statistics; compiled UNet and ControlNet, their noise prediction replayed from a CUDA
graph per row count, the negative-branch rows of views below the ANPG threshold skipped, each view's
skeleton embedded once for the three branches, the FaceID LoRA merged into the UNet's projections;
skeletons and prompts made on the CPU before the batch moves) and, in the same run, for the naive
reference: the same step as the reference code ran it (``reference_fp16``: fp16 weights, eager
diffusers, default attention and layout, every row, the LoRA as separate low-rank matmuls, each row's
skeleton embedded by the ControlNet; ``reference_code_order``: the same, also waiting for the GPU
before the skeletons are drawn on the CPU, as the reference code's step did), and for each
lever toggled alone (``--ablations``; channels-last layout is measured turned on). ``--breakdown`` adds
the GPU milliseconds of each part of our step (render, VAE encoder, noise prediction, SDS + VAE
backward, render backward, optimizer) from CUDA events. Each variant's timed blocks follow
``--warmup-steps`` untimed steps (default 2; with about as many as ``--steps``, the CUDA graphs of the
row counts the timed steps meet are captured before the timing, so the median is the steady state).

    python -m threestudio.tiny --size sd15 --out /tmp/sd15     # real-size random models (~4 GB)
    python bench/stage1_step.py --models /tmp/sd15 --face face.png --template anny.npz --out r.json
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time

import torch
from common import REPO, emit  # noqa: E402

DEVICE = "cuda"


_EAGER = [
    "system.guidance.channels_last=false",
    "system.guidance.vae_attention=auto",
    "system.guidance.cuda_graph=false",
    "system.guidance.compile_vae_encoder=false",
    "system.guidance.compile_denoiser=false",
    "system.guidance.skip_unused_negative=false",
    "system.guidance.fuse_lora=false",
    "system.guidance.share_pose_embedding=false",
    "system.guidance.controlnet_stream=false",
]
VARIANTS = {
    "ours_bf16": [],
    "reference_fp16": ["system.guidance.dtype=fp16", *_EAGER],
    "reference_code_order": ["system.guidance.dtype=fp16", *_EAGER],
    "reference_fp32": ["system.guidance.dtype=fp32", *_EAGER],
    "ours_with_channels_last": ["system.guidance.channels_last=true"],
    "ours_with_math_vae_attention": ["system.guidance.vae_attention=math"],
    "ours_without_cuda_graph": ["system.guidance.cuda_graph=false"],
    "ours_without_compiled_vae_encoder": ["system.guidance.compile_vae_encoder=false"],
    "ours_without_compiled_denoiser": ["system.guidance.compile_denoiser=false"],
    "ours_without_vae_layout_optimization": ["system.guidance.vae_layout_optimization=false"],
    "ours_with_native_vae_group_norm": ["system.guidance.vae_group_norm=native"],
    "ours_without_negative_row_skipping": ["system.guidance.skip_unused_negative=false"],
    "ours_without_fused_lora": ["system.guidance.fuse_lora=false"],
    "ours_without_shared_pose_embedding": ["system.guidance.share_pose_embedding=false"],
    "ours_without_controlnet_stream": ["system.guidance.controlnet_stream=false"],
}
"""Named config overrides of the guidance measured by this benchmark."""
CODE_ORDER = {"reference_code_order"}
"""Variants whose step also runs in the reference code's order: the host waits for the GPU, then draws
the skeletons and looks up the prompts on the CPU, then the step starts (the reference's
``GaussianIP.forward`` copied each view's mvp matrix to the host after its render, drew its OpenPose
image with OpenCV and uploaded it: the GPU idled while the CPU drew, four times per step; modelled here
by one synchronisation per step, so a lower bound of that cost)."""


def build_system(
    models: str, face: str, template: str | None, points: int, res: int, sds: int, extra: list, trial: str
):
    from threestudio.systems.ahds import AHDSSystem
    from threestudio.utils.config import load_config

    ov = [
        f"system.face_image={face or 'synthetic'}",
        "system.prompt_processor.prompt=A man wearing a green t-shirt",
        f"system.geometry.num_points={points}",
        f"system.pose_resolution={sds}",
        f"system.guidance.sds_resolution={sds}",
        "system.guidance.dtype=bf16",
        f"system.guidance.pretrained_model_name_or_path={models}/rv",
        f"system.guidance.vae_name_or_path={models}/vae",
        f"system.guidance.controlnet_name_or_path={models}/controlnet",
        f"system.guidance.ip_adapter_name_or_path={models}/ip-adapter",
        f"system.guidance.image_encoder_name_or_path={models}/image_encoder",
        "system.guidance.face.detector=haar",
        "system.guidance.face.model_name=tiny_l",
        f"system.guidance.face.root={models}/insightface",
        f"system.prompt_processor.pretrained_model_name_or_path={models}/rv",
        "system.prompt_processor.use_cache=false",
        f"data.height={res}",
        f"data.width={res}",
    ]
    if template:
        ov.append(f"system.body.template_path={template}")
    ov += extra
    cfg = load_config(REPO / "configs" / "ahds.yaml", cli_args=ov)
    system = AHDSSystem(cfg.system, trial, max_steps=cfg.trainer.max_steps).to(DEVICE)
    system.guidance = __import__("threestudio").find(system.cfg.guidance_type)(dict(cfg.system.guidance, n_steps=2400))
    system.guidance.load(system.device)
    if face:
        system.guidance.prepare_identity(face)
    else:  # synthetic identities (random ArcFace vectors and crops): same tensors, no face detector needed
        import numpy as np

        from threestudio.models.face.identity import FaceID

        rng = np.random.default_rng(0)
        fids = []
        for _ in range(2):
            e = rng.standard_normal(512).astype(np.float32)
            fids.append(FaceID(e / np.linalg.norm(e), rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), np.zeros(4)))
        system.guidance.set_identity(*fids)
    from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor

    system.prompt_processor = ViewPromptProcessor(cfg.system.prompt_processor)
    system.prompt_processor.prepare(system.device)
    system.prompt_processor.to(system.device)
    return system, cfg


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def training_inputs(system, cfg, code_order: bool = False):
    """``(batch_at, optimizer)``: ``batch_at(step)`` is the prepared training batch of ``step`` on the
    system's device (random cameras of ``cfg.data``, skeletons and prompts made on the CPU), as in training.
    ``code_order`` (:data:`CODE_ORDER`): the host first waits for the GPU to finish the previous step,
    as the reference code did before drawing its skeletons."""
    from threestudio.data.human_cameras import HumanCameraConfig, RandomHumanCameras
    from threestudio.utils.config import parse_structured

    data = RandomHumanCameras(parse_structured(HumanCameraConfig, cfg.data))

    def batch_at(s: int):
        cams = data.sample(step=s)
        if code_order:
            sync()
        return system.prepare_train_batch(cams).to(system.device)

    return batch_at, system.configure_optimizers()


def run(
    system, cfg, steps: int, start_step: int = 1500, block: int = 5, code_order: bool = False, warmup: int = 2
) -> dict:
    """``warmup`` steps (at least 2: compilation, CUDA-graph capture; more also capture the graphs of the
    row counts the timed steps meet, so that no timed block includes a capture), then ``steps`` steps back
    to back as in training (the CPU prepares the next batch while the GPU runs; with ``code_order`` after
    waiting for it), synchronised every ``block`` steps: ``step_s_median`` is the median over blocks of
    the mean step time in a block. The warm-up steps run at the AHDS steps just before the timed ones
    (from step 0 when ``start_step`` is smaller than ``warmup - 2``).

    Raises:
        ValueError: ``warmup`` < 2."""
    if warmup < 2:
        raise ValueError(f"warmup must be at least 2 steps (compilation, then CUDA-graph capture), got {warmup}")
    batch_at, opt = training_inputs(system, cfg, code_order)

    def step(s: int):
        loss = system.optimization_step(batch_at(s), s, opt)["loss"]
        opt.step()
        return loss

    warm_s, blocks = [], []
    torch.cuda.reset_peak_memory_stats() if DEVICE == "cuda" else None
    first = max(0, start_step - warmup + 2)
    for i in range(warmup):
        sync()
        t = time.perf_counter()
        step(first + i)
        sync()
        warm_s.append(time.perf_counter() - t)
    s = start_step + 2
    for _ in range(max(1, steps // block)):
        sync()
        t = time.perf_counter()
        for _ in range(block):
            loss = step(s)
            s += 1
        sync()
        blocks.append((time.perf_counter() - t) / block)
    return {
        "step_s_median": sorted(blocks)[len(blocks) // 2],
        "step_s_blocks": blocks,
        "block_steps": block,
        "warmup_steps_s": warm_s,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0,
        "loss_finite": bool(torch.isfinite(loss)),
        "points": system.geometry.num_points,
    }


SEGMENTS = ("render", "vae_encoder", "noise_prediction", "sds_and_vae_backward", "render_backward", "optimizer")
"""Parts of one step timed by :func:`breakdown`, in the order the GPU runs them."""


def breakdown(system, cfg, steps: int = 5, start_step: int = 1600) -> dict:
    """Median milliseconds of each part of the step (:data:`SEGMENTS`) over ``steps`` steps, from CUDA
    events recorded between the parts (the GPU's time, not the host's; perf_counter on the CPU). The
    end of the VAE backward is marked by a hook on the renders' gradient. Run after :func:`run`."""
    batch_at, opt = training_inputs(system, cfg)
    g = system.guidance
    marks: list = []

    def mark():
        if DEVICE == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            marks.append(e)
        else:
            marks.append(time.perf_counter())

    def marked(fn, after: bool = False):
        def wrapped(*a, **k):
            mark()
            out = fn(*a, **k)
            if after:
                mark()
            return out

        return wrapped

    render, encode, noise = system.render, g.encode_images, g._noise

    def render_marked(cams):
        out = render(cams)
        out["comp_rgb"].register_hook(lambda grad: mark())  # the VAE backward has reached the renders
        return out

    system.render, g.encode_images, g._noise = render_marked, marked(encode), marked(noise, after=True)
    per = {k: [] for k in SEGMENTS}
    try:
        for i in range(steps):
            batch = batch_at(start_step + i)
            marks.clear()
            mark()
            system.optimization_step(batch, start_step + i, opt)  # marks the parts up to the VAE backward
            mark()  # before the optimizer (the render backward and the densify statistics are done)
            opt.step()
            mark()
            sync()
            # marks: start, VAE encoder, noise prediction (before, after), renders' grad, optimizer, end
            t = [(b.elapsed_time(e) if DEVICE == "cuda" else 1e3 * (e - b)) for b, e in itertools.pairwise(marks)]
            for name, ms in zip(SEGMENTS, t, strict=True):
                per[name].append(ms)
    finally:
        system.render, g.encode_images, g._noise = render, encode, noise
    out = {k: round(statistics.median(v), 2) for k, v in per.items()}
    out["sum"] = round(sum(out.values()), 2)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--face", default="", help="portrait; empty = synthetic identities (no face detector)")
    ap.add_argument("--template", default=None)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--sds", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--start-step",
        type=int,
        default=1500,
        help="AHDS step of the first timed step (the timestep window, and so how many negative-branch rows "
        "our step skips, depends on it: none before step 1200 of 2400, about 41 %% at step 1500)",
    )
    ap.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed steps before the timed ones (2 or more); about as many as --steps also capture the CUDA "
        "graphs of the row counts the timed steps meet, so that the median is the steady state",
    )
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--ablations", action="store_true", help="also time each lever turned off alone")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=None,
        choices=list(VARIANTS),
        help=f"time only these variants, in this order (of: {', '.join(VARIANTS)})",
    )
    ap.add_argument("--breakdown", action="store_true", help="also time each part of our step (CUDA events)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (benchmark) or cpu (a smoke check with tiny models)")
    a = ap.parse_args()
    if a.warmup_steps < 2:
        ap.error(f"--warmup-steps must be at least 2 (compilation, then CUDA-graph capture), got {a.warmup_steps}")
    from threestudio.utils.io import persist_compile_cache

    cache = persist_compile_cache()
    warm = cache.is_dir() and any(cache.iterdir())
    global DEVICE
    DEVICE = a.device
    result = {
        "benchmark": "stage1_step",
        "batch": 4,
        "render": a.res,
        "sds": a.sds,
        "points": a.points,
        "branches": 3,
        "start_step": a.start_step,
        "warmup_steps": a.warmup_steps,
    }
    result["compile_cache_was_warm"] = warm  # ours_bf16's first warm-up step includes the compilation
    names = ["ours_bf16"] + ([] if a.skip_reference else ["reference_fp16", "reference_code_order", "reference_fp32"])
    names += [n for n in VARIANTS if n.startswith(("ours_without", "ours_with_"))] if a.ablations else []
    names = a.variants or names
    for name in names:
        t0 = time.perf_counter()
        system, cfg = build_system(
            a.models, a.face, a.template, a.points, a.res, a.sds, VARIANTS[name], "/tmp/bench_trial"
        )
        load_s = time.perf_counter() - t0
        r = run(system, cfg, a.steps, a.start_step, code_order=name in CODE_ORDER, warmup=a.warmup_steps)
        r["load_s"] = load_s
        if a.breakdown and name == "ours_bf16":
            r["breakdown_ms"] = breakdown(system, cfg, max(a.steps, 3), a.start_step + 100)
        result[name] = r
        del system
        gc.collect()
        torch.cuda.empty_cache() if DEVICE == "cuda" else None
    if "ours_bf16" in result:
        ours = result["ours_bf16"]["step_s_median"]
        for name in names:
            if name != "ours_bf16":
                result[f"speedup_vs_{name}"] = result[name]["step_s_median"] / ours
    if "reference_fp32" in result and "ours_bf16" in result:
        if result["reference_fp32"]["peak_gpu_mem_gib"] > 0:
            result["memory_ratio_vs_fp32"] = (
                result["ours_bf16"]["peak_gpu_mem_gib"] / result["reference_fp32"]["peak_gpu_mem_gib"]
            )
    emit(result, a.out)


if __name__ == "__main__":
    main()
