"""Multi-GPU GPU benchmark (real-size random networks of ``python -m threestudio.tiny --size sd15``, a real
portrait), two parts:

* ``stage1``: stage 1 (AHDS) of one avatar at the paper settings with ``trainer.devices=N`` (data-parallel,
  the 4 views of each step split over the N GPUs). Records the wall time (model loading included), the
  manifest's ``timings_s`` (``train`` = the training loop without validation), the Gaussian count and the
  replicas' checksums at every densify event. ``--no-compile`` turns both torch.compile options off, so
  that each device count's one-time compilation (its per-GPU batch has its own shapes) does not blur the
  comparison.
* ``gallery``: ``python -m threestudio.gallery`` on the first ``--pairs`` pairs of the shipped lists, one
  avatar per GPU (dask-cuda), with the same overrides; records the wall time and the summary rows, whose
  per-avatar minutes summed are what the pairs cost one after the other on one GPU each.

    python bench/multi_gpu.py stage1 --devices 2 --models /tmp/sd15 --tiny /tmp/tiny --template anny.npz \
        --face man.png --no-compile --out bench/results/multi_gpu_stage1_2.json
    python bench/multi_gpu.py gallery --pairs 8 --models /tmp/sd15 --tiny /tmp/tiny --template anny.npz \
        --out bench/results/multi_gpu_gallery.json s1:trainer.max_steps=600
    python bench/multi_gpu.py summary bench/results/multi_gpu_stage1_*.json --out bench/results/multi_gpu_h200x4.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from full_pipeline import overrides as pipeline_overrides  # noqa: E402

NO_COMPILE = ["system.guidance.compile_vae_encoder=false", "system.guidance.compile_denoiser=false"]


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpus_visible": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
    }


def stage1(a) -> dict:
    """Stage 1 of one avatar on ``a.devices`` GPUs through launch.py."""
    s1 = [o[3:] for o in pipeline_overrides(a) if o.startswith("s1:")] + [o for o in a.extra if ":" not in o]
    trial = Path(a.run_dir) / f"stage1_{a.devices}gpu"
    cmd = [sys.executable, str(REPO / "launch.py"), "--config", str(REPO / "configs/ahds.yaml"), "--train"]
    cmd += [f"system.prompt_processor.prompt={a.prompt}", f"system.face_image={Path(a.face).resolve()}"]
    cmd += [f"trial_dir={trial}", f"trainer.devices={a.devices}", "trainer.enable_progress_bar=false", *s1]
    cmd += NO_COMPILE if a.no_compile else []
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    res = {"benchmark": "multi_gpu_stage1", "devices": a.devices, "returncode": r.returncode, "wall_s": round(wall, 1)}
    res |= {"compile": not a.no_compile, "overrides": a.extra, **environment()}
    if r.returncode != 0:
        res["log_tail"] = (r.stdout + r.stderr)[-4000:]
        return res
    man = json.loads((trial / "manifest.json").read_text())
    res |= {k: man.get(k) for k in ("timings_s", "num_gaussians", "step", "replicas")}
    steps = man["step"]
    res["train_s_per_step"] = round(man["timings_s"]["train"] / steps, 4)
    return res


def gallery(a) -> dict:
    """``python -m threestudio.gallery`` on the first ``a.pairs`` pairs, one avatar per GPU."""
    out = Path(a.run_dir) / "gallery"
    cmd = [sys.executable, "-m", "threestudio.gallery", "--limit", str(a.pairs), "--out", str(out)]
    cmd += [*pipeline_overrides(a)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    minutes = [float(x["minutes"]) for x in rows if x["minutes"]]
    return {
        "benchmark": "multi_gpu_gallery",
        "pairs": a.pairs,
        "returncode": r.returncode,
        "wall_min": round(wall / 60, 2),
        "sum_of_avatar_min": round(sum(minutes), 2),
        "speedup_vs_one_after_another": round(sum(minutes) / (wall / 60), 2),
        "statuses": [x["status"] for x in rows],
        "rows": rows,
        "overrides": a.extra,
        "stdout_tail": r.stdout[-3000:],
        **environment(),
    }


def summary(paths: list[str]) -> dict:
    """Speed-ups of the ``stage1`` results over the one-GPU one."""
    runs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["devices"])
    base = next(r for r in runs if r["devices"] == 1)
    table = []
    for r in runs:
        row = {k: r.get(k) for k in ("devices", "wall_s", "train_s_per_step", "num_gaussians", "returncode")}
        row["timings_s"] = r.get("timings_s")
        row["speedup_wall"] = round(base["wall_s"] / r["wall_s"], 2)
        if r.get("timings_s"):
            row["speedup_train"] = round(base["timings_s"]["train"] / r["timings_s"]["train"], 2)
        checks = (r.get("replicas") or {}).get("checks", [])
        row["replica_checks_agree"] = [len(set(c["checksums"])) == 1 for c in checks]
        table.append(row)
    return {
        "benchmark": "multi_gpu_stage1_scaling",
        "compile": base.get("compile"),
        "gpu": base.get("gpu"),
        "runs": table,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["stage1", "gallery", "summary"])
    ap.add_argument("inputs", nargs="*", help="summary: the stage1 JSON files; else run.sh overrides (s1:..., s3:...)")
    ap.add_argument("--devices", type=int, default=1, help="stage1: GPUs (trainer.devices)")
    ap.add_argument("--pairs", type=int, default=8, help="gallery: the first N pairs of the shipped lists")
    ap.add_argument("--models", help="folder of `python -m threestudio.tiny --size sd15 --out`")
    ap.add_argument("--tiny", help="folder of the tiny models (its insightface/ ArcFace ONNX)")
    ap.add_argument("--template", help="body template .npz (python -m threestudio.models.body.export)")
    ap.add_argument("--face", default=str(REPO / "threestudio/assets/faces/man.png"), help="stage1: portrait")
    ap.add_argument("--prompt", default="A man wearing a green t-shirt")
    ap.add_argument("--no-compile", action="store_true", help="stage1: torch.compile off (see the docstring)")
    ap.add_argument("--run-dir", default="/tmp/multi_gpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_intermixed_args()
    if a.part == "summary":
        res = summary(a.inputs)
    else:
        a.extra, a.cap_gb = a.inputs, 0.0
        res = stage1(a) if a.part == "stage1" else gallery(a)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
