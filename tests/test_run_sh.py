"""End-to-end subprocess runs of the command-line programs as a new user runs them: the README's main
job (``bash run.sh --tiny ...``) from a copy of the repository in a temporary folder (so nothing outside
the repository is needed), a restart from stage 3 with the specular stage, ``animation.py`` on the
result, and rejected input that leaves no run folder."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_FACE, DEMO_MOTION, REPO, face

FAST = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "data.n_test_views=4",
    "trainer.enable_progress_bar=false",
]
"""Appended to the README's command: a few steps instead of the tiny preset's 30 (CI time), one validation."""


def readme_main_job() -> list[str]:
    """The README's install-and-run line, without the install part: ``bash run.sh --tiny ...``."""
    text = (REPO / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if "bash run.sh --tiny" in ln and ln.startswith("pip install"))
    return shlex.split(line[line.index("bash run.sh") :])


def copy_repository(dst: Path) -> Path:
    """The repository's files (tracked and untracked-but-not-ignored, as a clone would have them)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


def test_readme_main_job_from_a_copy_restart_with_specular_and_animate(tiny_dir, tmp_path, capsys):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    repo = copy_repository(tmp_path / "repo")
    cmd = readme_main_job()
    assert cmd[:3] == ["bash", "run.sh", "--tiny"] and (repo / cmd[-1]).is_file(), cmd  # every file it names ships
    env = dict(os.environ, PYTHON=sys.executable, GIP_TINY_DIR=str(tiny_dir))  # the tiny models already built
    env.pop("PYTHONPATH", None)
    r = subprocess.run(cmd + FAST, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run,) = list((repo / "outputs").glob("A_man_wearing_a_green_t-shirt@*"))
    for n, stage in ((1, "ahds"), (2, "refine"), (3, "reconstruct")):
        assert json.loads((run / f"stage{n}" / "manifest.json").read_text())["stage"] == stage
    assert len(list((run / "stage2/save/views").glob("refined_*.png"))) == 16
    for f in ("stage1/save/avatar.ply", "stage3/save/avatar.ply", "stage3/save/turntable.mp4"):
        assert (run / f).is_file(), f
    assert f"{run}/stage3/save/avatar.ply" in r.stdout
    assert json.loads((run / "stage3" / "manifest.json").read_text())["lpips"] is True  # LPIPS on in the tiny preset
    for n in (1, 3):  # validation grids are written in the background, and finished before the stage ends
        assert (run / f"stage{n}/save/it2-val.png").is_file()
        timings = json.loads((run / f"stage{n}" / "manifest.json").read_text())["timings_s"]
        parts = {"setup_load_models", "setup_identity", "setup_prompts"} if n == 1 else set()  # stage 1's setup
        assert set(timings) == {"setup", "train", "validation", "test"} | parts and min(timings.values()) >= 0, timings
        # each figure is rounded to 10 ms on its own (PhaseClock), so the rounded parts may exceed the rounded
        # whole by half a step per figure (0.35 + 1.32 + 0.01 vs 1.68 summed to 1.6800000000000002 in a run)
        slack = 0.005 * (len(parts) + 1)
        assert sum(timings[p] for p in parts) <= timings["setup"] + slack, timings
        step_ms = json.loads((run / f"stage{n}" / "manifest.json").read_text())["step_ms"]
        assert step_ms["steps"] == 3 and step_ms["first"] > 0 and step_ms["median"] > 0, step_ms
    s2 = json.loads((run / "stage2" / "manifest.json").read_text())
    assert s2["models_from_stage1"] is True  # one process: stage 2 refined with the networks stage 1 loaded
    assert s2["controlnet_stream"] is False  # stage 2 runs the ControlNet and the UNet on one stream
    timings = s2["timings_s"]  # stage 2's phases
    assert set(timings) == {"render", "load_models", "identity", "prompts", "refine", "write"}, timings
    assert min(timings.values()) >= 0 and timings["refine"] > 0, timings
    banners = re.findall(r"^== stage (\d)/3: (\w+) -> (.+)$", r.stdout, re.M)  # one process printed them in order
    assert banners == [(str(n), s, f"{run}/stage{n}") for n, s in ((1, "ahds"), (2, "refine"), (3, "reconstruct"))]

    # restart from stage 3, adding the specular stage (SCR): stages 1-2 untouched, the old stage 3 kept
    before = {
        p: p.stat().st_mtime_ns for p in (run / "stage1/save/avatar.ply", run / "stage2/save/views/refined_000.png")
    }
    r2 = subprocess.run(
        [
            "bash",
            "run.sh",
            "--tiny",
            "--specular",
            "--from-stage",
            "3",
            "--run-dir",
            str(run),
            *FAST,
            "trainer.profile=true",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "stage 1/3" not in r2.stdout and "stage 2/3" not in r2.stdout and "stage 3/3" in r2.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert len(list(run.glob("stage3.prev-*"))) == 1
    assert json.loads((run / "stage3/manifest.json").read_text())["specular"] is True
    assert (run / "stage3/save/avatar.specular.safetensors").is_file()
    report = (run / "stage3/fit-profile.txt").read_text()  # trainer.profile: Lightning's SimpleProfiler report
    assert "run_training_batch" in report and "save_checkpoint" in report

    # the animation CLI on the result (its subprocess run is the web-viewer test), with the shipped demo motion
    from threestudio.animation.cli import main

    args = ["--ply", run / "stage3/save/avatar.ply", "--motion", repo / DEMO_MOTION.relative_to(REPO), "--play",
            "--max-frames", 4, "--resolution", 32, "--device", "cpu"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    assert "specular appearance loaded" in capsys.readouterr().out
    assert (run / "stage3/save" / f"anim_{DEMO_MOTION.stem}.mp4").is_file()

    # a new user's facial animation of the same avatar: the shipped Live Link Face CSV, head close-up
    import imageio.v3 as iio
    import numpy as np

    face_csv = repo / DEMO_FACE.relative_to(REPO)
    argv = [sys.executable, "animation.py", "--ply", str(run / "stage3/save/avatar.ply"), "--expression", str(face_csv),
            "--view", "face", "--play", "--fps", "10", "--resolution", "48", "--device", "cpu"]  # fmt: skip
    r3 = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0, r3.stderr[-3000:]
    v = iio.imread(run / "stage3/save" / f"anim_{DEMO_FACE.stem}.mp4").astype(float)
    assert v.shape[0] == 30
    change = np.abs(v[:, 8:40, 12:36] - v[0, 8:40, 12:36]).mean(axis=(1, 2, 3))
    assert change.max() > 1.0, change  # the face moves (the tiny avatar is blurry: a small change)


@pytest.mark.parametrize("args,pattern", [
    (["  ", "{face}"], "prompt is empty"),
    (["A man", "{face}", "s4:trainer.max_steps=3"], "stage prefix"),
    (["A man", "{face}", "s3:system.lpips.vgg_path=/nonexistent/vgg16.pth"], "LPIPS backbone"),
    (["A man", "{face}", "s2:system.guidance.dtyp=bf16"], "Did you mean: 'dtype'"),  # before stage 1 runs
    (["--gpus", "0", "A man", "{face}"], "--gpus needs a number"),
    (["--gpus", "3", "A man", "{face}"], "data.batch_size=2 views per step cannot be split evenly over 3 processes"),
])  # fmt: skip
def test_rejected_input_leaves_no_run_folder(tiny_dir, tmp_path, args, pattern):
    env = dict(os.environ, PYTHON=sys.executable)
    run = tmp_path / "runs" / "r1"
    args = [a.format(face=face()) for a in args]
    argv = ["bash", str(REPO / "run.sh"), "--tiny", "--run-dir", str(run), *args]
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and pattern in r.stderr, r.stderr[-2000:]
    assert re.search(r"^error: ", r.stderr, re.M) and "Traceback" not in r.stderr
    assert not run.exists() and not (tmp_path / "runs").exists()
