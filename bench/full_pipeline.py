"""Full-pipeline GPU benchmark: ``run.sh`` itself, all three stages at the paper settings
(configs/ahds.yaml, refine.yaml, reconstruct.yaml), with real-size random networks (SD-1.5 UNet,
ControlNet, VAE, CLIP text and ViT-H image encoders, FaceID-Plus-v2, VGG-16 for LPIPS; written by
``python -m threestudio.tiny --size sd15``) and a real portrait, optionally under a GPU memory cap.

The cap is the pipeline's own ``system.max_gpu_memory_gb`` (``torch.cuda.set_per_process_memory_fraction``
inside each stage), so a 24 GB card is checked on a larger one. Recorded per stage: wall time (model
loading included), peak memory reserved by the stage's allocator (from its manifest), peak device memory
used while the stage ran (nvidia-smi, sampled every 0.5 s, includes the CUDA context), Gaussian counts.
gsplat's one-time CUDA build is timed separately before the run (``--gsplat-build``). ``--profile DIR`` makes
it a diagnostic run instead (``bench/profile_launch.py``: a phase timeline and torch.profiler windows, their
summaries in the result; the profiler slows the run).

    python bench/full_pipeline.py --models /tmp/sd15 --tiny /tmp/tiny --template anny.npz \
        --face man.png --cap-gb 22 --out bench/results/full_pipeline_h200_cap22.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def gsplat_build_seconds() -> float:
    """Time of gsplat's first rasterization in a fresh process (JIT build of its CUDA kernels, or
    loading them from the torch extension cache when already built)."""
    code = (
        "import time, torch; t = time.perf_counter(); from gsplat import rasterization; d = 'cuda'; "
        "m = torch.zeros(1, 3, device=d); q = torch.tensor([[1., 0, 0, 0]], device=d); "
        "s = torch.full((1, 3), .1, device=d); o = torch.ones(1, device=d); c = torch.ones(1, 3, device=d); "
        "v = torch.eye(4, device=d)[None]; v[0, 2, 3] = 2; "
        "K = torch.tensor([[[10., 0, 8], [0, 10., 8], [0, 0, 1]]], device=d); "
        "rasterization(m, q, s, o, c, v, K, 16, 16); torch.cuda.synchronize(); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


class GpuSampler(threading.Thread):
    """Samples ``nvidia-smi`` memory.used (MiB, device 0) every ``period`` s; ``peak(t0, t1)``."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                self.samples.append((time.perf_counter(), float(out.strip().splitlines()[0])))
            except Exception:  # noqa: BLE001 - a missed sample is not fatal
                pass
            self.stop.wait(self.period)

    def peak_gib(self, t0: float, t1: float) -> float:
        vals = [m for t, m in self.samples if t0 <= t <= t1]
        return round(max(vals) / 1024, 2) if vals else 0.0


def overrides(a) -> list[str]:
    """run.sh overrides that point the paper-settings configs at the real-size random models."""
    m, t = Path(a.models).resolve(), Path(a.tiny).resolve()
    g = "s1:system.guidance."
    o = [
        f"{g}pretrained_model_name_or_path={m}/rv",
        f"{g}vae_name_or_path={m}/vae",
        f"{g}controlnet_name_or_path={m}/controlnet",
        f"{g}ip_adapter_name_or_path={m}/ip-adapter",
        f"{g}image_encoder_name_or_path={m}/image_encoder",
        # face detection: OpenCV's Haar cascade + an ArcFace-shaped ONNX (no buffalo_l download here)
        f"{g}face.detector=haar",
        f"{g}face.model_name=tiny_l",
        f"{g}face.root={t}/insightface",
        f"s1:system.prompt_processor.pretrained_model_name_or_path={m}/rv",
        f"s1:system.body.template_path={Path(a.template).resolve()}",
        f"s3:system.lpips.vgg_path={m}/vgg16/vgg16-397923af.pth",
    ]
    if a.cap_gb > 0:
        o.append(f"system.max_gpu_memory_gb={a.cap_gb}")
    return o + a.extra


def profile_results(prof_dir: Path) -> dict:
    """The timeline of a ``--profile`` run and a summary of each profiled window (written beside its trace
    as ``<window>.summary.json``; per step for the training windows)."""
    from profile_summary import load_events, summarize

    events = prof_dir / "events.json"
    out = {"note": "a profiled run: the profiler and its synchronisations slow it", "summaries": {}}
    out["events"] = json.loads(events.read_text()) if events.is_file() else []
    steps = {e["window"]: e["steps"] for e in out["events"] if e["ev"] == "profile"}
    for trace in sorted(prof_dir.glob("*.trace.json.gz")):
        name = trace.name[: -len(".trace.json.gz")]
        summary = summarize(load_events(trace), steps=steps.get(name, 1))
        (prof_dir / f"{name}.summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        out["summaries"][name] = summary
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="folder of `python -m threestudio.tiny --size sd15 --out`")
    ap.add_argument("--tiny", required=True, help="folder of the tiny models (its insightface/ ArcFace ONNX)")
    ap.add_argument("--template", required=True, help="body template .npz (python -m threestudio.models.body.export)")
    ap.add_argument("--face", required=True, help="portrait image")
    ap.add_argument("--prompt", default="A man wearing a green t-shirt")
    ap.add_argument("--cap-gb", type=float, default=0.0, help="system.max_gpu_memory_gb for every stage (0 = uncapped)")
    ap.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--gsplat-build", action="store_true", help="time gsplat's first use in a fresh process first")
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="a diagnostic run: launch.py under bench/profile_launch.py (phase timeline, torch.profiler windows "
        "of a few steps per stage, summarised by bench/profile_summary.py into the result); its times are "
        "not the pipeline's",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("extra", nargs="*", help="further run.sh overrides (e.g. s1:trainer.max_steps=50 for a smoke run)")
    a = ap.parse_args()
    import torch

    from threestudio.utils.gpu import MemoryBudget
    from threestudio.utils.io import persist_compile_cache

    cache = persist_compile_cache()
    res = {
        "benchmark": "full_pipeline",
        "compile_cache": str(cache),
        "compile_cache_was_warm": cache.is_dir() and any(cache.iterdir()),
        "cap_gb": a.cap_gb,
        "prompt": a.prompt,
        "face": Path(a.face).name,
        "overrides": a.extra,
        "gpu": torch.cuda.get_device_name(0),
        "gpu_total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "torch": torch.__version__,
        "alloc_conf": MemoryBudget.allocator_settings(),
    }
    if a.gsplat_build:
        res["gsplat_first_use_s"] = round(gsplat_build_seconds(), 1)
        res["gsplat_cached_use_s"] = round(gsplat_build_seconds(), 1)
    tmp = None if a.run_dir else tempfile.mkdtemp(prefix="gip_full_")
    run_dir = Path(a.run_dir or tmp) / "run"
    sampler = GpuSampler()
    sampler.start()
    cmd = ["bash", str(REPO / "run.sh"), "--run-dir", str(run_dir), a.prompt, str(a.face), *overrides(a)]
    t0 = time.perf_counter()
    marks = [(0, t0)]
    env = dict(os.environ)
    if a.profile:
        prof_dir = Path(a.profile).resolve()
        env.update(PYTHON=str(REPO / "bench" / "profile_python.sh"), PROFILE_PYTHON=sys.executable)
        env["GIP_PROFILE_OUT"] = str(prof_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    log = []
    for line in proc.stdout:
        log.append(line)
        sys.stdout.write(f"[{time.perf_counter() - t0:7.1f} s] {line}")  # when each line came: a timeline
        m = re.match(r"== stage (\d)/3", line)
        if m:
            marks.append((int(m.group(1)), time.perf_counter()))
    rc = proc.wait()
    t_end = time.perf_counter()
    sampler.stop.set()
    res["returncode"] = rc
    res["total_s"] = round(t_end - t0, 1)
    stages = {}
    bounds = marks[1:] + [(None, t_end)]
    for (n, t_a), (_, t_b) in zip(marks[1:], bounds[1:], strict=True):
        man_path = run_dir / f"stage{n}" / "manifest.json"
        man = json.loads(man_path.read_text()) if man_path.is_file() else {}
        stages[f"stage{n}"] = {
            "wall_s": round(t_b - t_a, 1),
            "peak_reserved_gib": man.get("gpu_peak_reserved_gib"),
            "budget_gib": man.get("gpu_budget_gib"),
            "peak_device_used_gib": sampler.peak_gib(t_a, t_b),
            "num_gaussians": man.get("num_gaussians"),
            "timings_s": man.get("timings_s"),
            "step_ms": man.get("step_ms"),
            "turntable_encode_s": man.get("turntable_encode_s"),
            "allocator": man.get("gpu_allocator"),
        }
        if man.get("compile_events"):
            stages[f"stage{n}"]["compile_events"] = man["compile_events"]
    densify = [ln.strip() for ln in log if "densify/prune" in ln]
    res["stages"], res["densify_events"] = stages, densify
    res["initial_gaussians"] = 100_000
    res["peak_device_used_gib"] = max((s["peak_device_used_gib"] for s in stages.values()), default=0.0)
    res["peak_reserved_gib"] = max((s["peak_reserved_gib"] or 0 for s in stages.values()), default=0.0)
    if a.profile:
        res["profile"] = profile_results(prof_dir)
    if rc != 0:
        res["log_tail"] = "".join(log[-40:])
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
