"""End-to-end: launch.py and run.sh on the tiny preset, resume, and bad input (one clear error,
non-zero exit, nothing written)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, face

PROMPT = "A man wearing a green t-shirt"


def launch(*args, cwd=REPO, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_args(root, steps=4, **extra):
    a = [
        "--config",
        REPO / "configs/ahds.yaml",
        "--config",
        REPO / "configs/tiny/ahds.yaml",
        "--train",
        f"system.prompt_processor.prompt={PROMPT}",
        f"system.face_image={face()}",
        f"exp_root_dir={root}",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2",
        "checkpoint.every_n_train_steps=2",
        "data.n_test_views=4",
        "trainer.enable_progress_bar=false",
    ]
    return a + [f"{k}={v}" for k, v in extra.items()]


def trials(root):
    return sorted(Path(root).glob("gaussianip/*@*"))


@pytest.mark.slow
def test_smoke_and_resume(tiny_dir, tmp_path):
    r = launch(
        *tiny_args(tmp_path, steps=4, **{"system.densify.densify_steps": "[2]", "system.densify.prune_steps": "[3]"})
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (trial,) = trials(tmp_path)
    man = json.loads((trial / "manifest.json").read_text())
    assert man["step"] == 4 and man["prompt"] == PROMPT
    from threestudio.utils.ply import read_gaussian_ply

    params, _ = read_gaussian_ply(trial / "save/avatar.ply")
    assert params["means"].shape[0] == man["num_gaussians"]
    assert (trial / "configs/parsed.yaml").is_file() and (trial / "ckpts/last.ckpt").is_file()
    import imageio.v3 as iio

    frames = iio.imread(trial / "save/turntable.mp4")
    assert frames.shape[0] == 4 and frames.max() > 30
    assert "densify/prune" in r.stdout
    # resume: continues the same trial from step 4 to 6 with the saved Gaussians and optimiser
    import torch

    ck = torch.load(trial / "ckpts/last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4 and ck["state_dict"]["geometry.means"].shape[0] == man["num_gaussians"]
    assert len(ck["optimizer_states"][0]["state"]) >= 5  # Adam moments of every non-empty attribute
    r2 = launch("--train", "--resume", trial, "trainer.max_steps=6", "trainer.enable_progress_bar=false")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert trials(tmp_path) == [trial]
    assert json.loads((trial / "manifest.json").read_text())["step"] == 6
    # --export from the checkpoint
    r3 = launch("--export", "--resume", trial)
    assert r3.returncode == 0, r3.stderr[-2000:]


def bad(tmp_path, *extra, steps=2):
    a = [
        x
        for x in tiny_args(tmp_path, steps)
        if not str(x).startswith(("system.face_image", "system.prompt_processor.prompt"))
    ]
    return launch(*a, *extra)


@pytest.mark.parametrize(
    "case,extra,pattern",
    [
        ("empty prompt", ["system.prompt_processor.prompt= ", "system.face_image={face}"], "prompt is empty"),
        (
            "missing image",
            ["system.prompt_processor.prompt=a man", "system.face_image=/nonexistent/face.png"],
            "not found",
        ),
        ("unreadable image", ["system.prompt_processor.prompt=a man", "system.face_image={bad}"], "cannot read"),
        ("no face", ["system.prompt_processor.prompt=a man", "system.face_image={blank}"], "no face found in"),
        (
            "unknown key",
            ["system.prompt_processor.prompt=a man", "system.face_image={face}", "system.geometry.num_pointz=3"],
            "num_pointz",
        ),
        (
            "unknown plugin",
            ["system.prompt_processor.prompt=a man", "system.face_image={face}", "system.renderer_type=gsplat-rendrer"],
            "did you mean",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tiny_dir, tmp_path, case, extra, pattern):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(blank)
    badf = tmp_path / "bad.png"
    badf.write_text("garbage")
    extra = [e.format(face=face(), blank=blank, bad=badf) for e in extra]
    r = bad(tmp_path / "out", *extra)
    assert r.returncode == 2, (case, r.stdout[-500:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and pattern in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written on bad input"


def test_full_model_without_weights_fails_fast(tmp_path):
    env_home = tmp_path / "hf"
    t = time.time()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        HF_HOME=str(env_home),
        INSIGHTFACE_HOME=str(tmp_path / "if"),
        HF_HUB_OFFLINE="1",
    )
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch.py"),
            "--config",
            str(REPO / "configs/ahds.yaml"),
            "--train",
            f"system.prompt_processor.prompt={PROMPT}",
            f"system.face_image={face()}",
            f"exp_root_dir={tmp_path / 'out'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.time() - t
    assert r.returncode == 2, r.stderr[-2000:]
    for what in (
        "SG161222/Realistic_Vision_V4.0_noVAE",
        "stabilityai/sd-vae-ft-mse",
        "lllyasviel/control_v11p_sd15_openpose",
        "h94/IP-Adapter-FaceID",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "buffalo_l",
        "hf download",
    ):
        assert what in r.stderr, what
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert elapsed < 60, elapsed
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_sh_all_stages_and_restart(tiny_dir, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    run = tmp_path / "run"
    common = ["trainer.max_steps=3", "data.n_test_views=4", "trainer.enable_progress_bar=false"]
    r = subprocess.run(
        [
            "bash",
            str(REPO / "run.sh"),
            "--tiny",
            "--run-dir",
            str(run),
            "A woman wearing a red t-shirt",
            str(face("woman.png")),
            *common,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for n, stage in ((1, "ahds"), (2, "refine"), (3, "reconstruct")):
        assert json.loads((run / f"stage{n}" / "manifest.json").read_text())["stage"] == stage
    assert len(list((run / "stage2/save/views").glob("refined_*.png"))) == 16
    for f in ("stage1/save/avatar.ply", "stage3/save/avatar.ply", "stage3/save/turntable.mp4"):
        assert (run / f).is_file(), f
    assert f"{run}/stage3/save/avatar.ply" in r.stdout
    before = {
        p: p.stat().st_mtime_ns for p in (run / "stage1/save/avatar.ply", run / "stage2/save/views/refined_000.png")
    }
    r2 = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--tiny", "--from-stage", "3", "--run-dir", str(run), *common],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "stage 1/3" not in r2.stdout and "stage 2/3" not in r2.stdout and "stage 3/3" in r2.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert len(list(run.glob("stage3.prev-*"))) == 1 and (run / "stage3/save/avatar.ply").is_file()
    r3 = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--tiny", "  ", str(face())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r3.returncode == 2 and "prompt is empty" in r3.stderr
    assert json.loads((run / "stage3" / "manifest.json").read_text())["lpips"] is True  # LPIPS on in the tiny preset


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["A man", "{face}", "system.geometry.num_pointz=3"], "num_pointz"),
        (["A man", "{face}", "s4:trainer.max_steps=3"], "stage prefix"),
        (["A man", "{face}", "s3:system.lpips.vgg_path=/nonexistent/vgg16.pth"], "LPIPS backbone"),
    ],
)
def test_run_sh_rejected_input_leaves_no_run_folder(tiny_dir, tmp_path, args, pattern):
    env = dict(os.environ, PYTHON=sys.executable)
    run = tmp_path / "runs" / "r1"
    r = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--tiny", "--run-dir", str(run), *[a.format(face=face()) for a in args]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and pattern in r.stderr, r.stderr[-2000:]
    assert not run.exists() and not (tmp_path / "runs").exists()
