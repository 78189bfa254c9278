import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_MOTION, REPO, animator_on_surface
from threestudio.animation.cli import main


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def avatar_ply(template, path, n=2000):
    """An opaque, randomly coloured avatar PLY on the template surface."""
    an = animator_on_surface(template, n)
    with torch.no_grad():
        an.model.f_dc.normal_(0, 1)
        an.model.opacity_logit.fill_(3.0)
    an.model.save_ply(path)
    return path


def play(ply, *extra) -> int:
    """``animation.py --ply PLY --motion <demo> --play --template anny --device cpu EXTRA...`` in-process."""
    args = ["--ply", ply, "--motion", DEMO_MOTION, "--play", "--template", "anny", "--device", "cpu", *extra]
    return main([str(a) for a in args])


def test_video_changes_with_motion_and_frames_are_exported(template, tmp_path):
    import imageio.v3 as iio

    ply = avatar_ply(template, tmp_path / "avatar.ply")
    out = tmp_path / "a.mp4"
    assert (
        play(ply, "--rotate", "--resolution", 64, "--max-frames", 12, "--out", out, "--export-ply", tmp_path / "f") == 0
    )
    v = iio.imread(out)
    assert v.shape[0] == 12 and v.max() > 30
    assert np.abs(v[0].astype(float) - v[-1].astype(float)).mean() > 1.0
    assert len(list((tmp_path / "f").glob("frame_*.ply"))) == 12


@pytest.mark.parametrize("case,pattern", [
    ("mesh", "not a 3DGS PLY"),
    ("no motion", "motion file not found"),
    ("nothing to do", "nothing to do"),
    ("gif out", "give an .mp4 file or a folder"),
])  # fmt: skip
def test_bad_input_is_one_clear_error(template, tmp_path, capsys, case, pattern):
    import trimesh

    ply = avatar_ply(template, tmp_path / "avatar.ply", 200)
    trimesh.creation.box().export(tmp_path / "mesh.ply")
    args = {
        "mesh": ["--ply", tmp_path / "mesh.ply", "--motion", DEMO_MOTION, "--play"],
        "no motion": ["--ply", ply, "--motion", tmp_path / "none.npz", "--play"],
        "nothing to do": ["--ply", ply, "--motion", DEMO_MOTION],
        "gif out": ["--ply", ply, "--motion", DEMO_MOTION, "--play", "--out", tmp_path / "a.gif"],
    }[case]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "a.gif").exists() and not list(tmp_path.glob("*.mp4"))


def test_out_folder_gets_anim_motion_mp4(template, tmp_path):
    ply = avatar_ply(template, tmp_path / "avatar.ply", 200)
    (tmp_path / "videos").mkdir()
    assert play(ply, "--resolution", 32, "--max-frames", 2, "--out", tmp_path / "videos") == 0
    assert (tmp_path / "videos" / f"anim_{DEMO_MOTION.stem}.mp4").is_file()


def test_web_viewer_in_headless_chromium(template, tmp_path):
    pytest.importorskip("viser")
    pw = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("Debian chromium is not installed")
    an = animator_on_surface(template, 3000)
    with torch.no_grad():
        an.model.f_dc.normal_(0, 1)
        an.model.opacity_logit.fill_(3.0)
        an.model.log_scales.add_(0.7)
    an.model.save_ply(tmp_path / "avatar.ply")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "animation.py"),
            "--ply",
            str(tmp_path / "avatar.ply"),
            "--motion",
            str(DEMO_MOTION),
            "--gui",
            "--port",
            str(port),
            "--template",
            "anny",
            "--max-frames",
            "20",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-2000:]
                time.sleep(0.5)
        with pw.sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--use-angle=swiftshader",
                    "--enable-unsafe-swiftshader",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = b.new_page(viewport={"width": 800, "height": 600})
            page.goto(f"http://127.0.0.1:{port}", wait_until="load", timeout=60000)
            canvas = page.locator("canvas").first
            canvas.wait_for(timeout=60000)
            page.wait_for_timeout(3000)
            png = canvas.screenshot()
            b.close()
        import io

        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
        (tmp_path / "viewer.png").write_bytes(png)
        h, w = img.shape[:2]
        centre = img[int(0.3 * h) : int(0.7 * h), int(0.4 * w) : int(0.6 * w)]  # the avatar, away from the GUI panels
        assert img.shape[0] > 100 and centre.std() > 5.0, centre.std()
        assert (np.abs(centre - centre[0, 0]).sum(-1) > 30).mean() > 0.05
    finally:
        proc.terminate()
        proc.wait(timeout=30)
