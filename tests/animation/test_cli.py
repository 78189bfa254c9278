import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_FACE, DEMO_MOTION, REPO, animator_on_surface
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
    """The viewer (no motion: the face posed by hand, head close-up) renders the avatar in the browser,
    and moving the jawOpen blendshape slider changes the rendered image."""
    pytest.importorskip("viser")
    pw = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("Debian chromium is not installed")
    an = animator_on_surface(template, 8000)
    with torch.no_grad():
        an.model.f_dc.normal_(0, 1)
        an.model.opacity_logit.fill_(3.0)
        an.model.log_scales.add_(0.5)
    an.model.save_ply(tmp_path / "avatar.ply")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["--ply", tmp_path / "avatar.ply", "--gui", "--view", "face", "--port", port, "--template", "anny"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "animation.py"), *map(str, args)],
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
            page = b.new_page(viewport={"width": 900, "height": 700})
            page.goto(f"http://127.0.0.1:{port}", wait_until="load", timeout=60000)
            canvas = page.locator("canvas").first
            canvas.wait_for(timeout=60000)
            page.wait_for_timeout(4000)
            before = page.screenshot()  # the canvas fills the page
            slider_id = page.locator("label", has_text="jawOpen").first.get_attribute("for")
            thumb = page.locator(f"[id='{slider_id}'] [role=slider]")
            thumb.focus()
            page.keyboard.press("End")  # jawOpen -> 1
            page.wait_for_timeout(4000)
            assert thumb.get_attribute("aria-valuenow") == "1"
            after = page.screenshot()
            b.close()
        import io

        from PIL import Image

        (tmp_path / "before.png").write_bytes(before)
        (tmp_path / "after.png").write_bytes(after)
        img0, img1 = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB")).astype(float) for x in (before, after))
        h, w = img0.shape[:2]
        view = (slice(int(0.25 * h), h), slice(0, int(0.55 * w)))  # the head, away from the GUI panel and toast
        assert img0.shape[0] > 100 and img0[view].std() > 5.0, "the avatar is rendered"
        changed = np.abs(img1[view] - img0[view]).sum(-1) > 30
        assert changed.mean() > 0.005, changed.mean()  # the mouth opened
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_expression_video_moves_the_face(template, tmp_path):
    import imageio.v3 as iio

    ply = avatar_ply(template, tmp_path / "avatar.ply", 6000)
    out = tmp_path / "face.mp4"
    args = ["--ply", ply, "--expression", DEMO_FACE, "--view", "face", "--play", "--template", "anny"]
    assert main([str(a) for a in args + ["--device", "cpu", "--resolution", 64, "--fps", 10, "--out", out]]) == 0
    v = iio.imread(out).astype(float)
    assert v.shape[0] == 30
    face = v[:, 16:56, 16:48]  # the head fills the close-up
    assert face.mean() > 20, "the head is in view"
    change = np.abs(face - face[0]).mean(axis=(1, 2, 3))
    assert change.max() > 3.0 and change[0] == 0


def test_motion_and_expression_together(template, tmp_path):
    import imageio.v3 as iio

    ply = avatar_ply(template, tmp_path / "avatar.ply", 600)
    out, frames = tmp_path / "both.mp4", tmp_path / "f"
    extra = ["--expression", DEMO_FACE, "--resolution", 32, "--fps", 10, "--out", out, "--export-ply", frames]
    assert play(ply, *extra) == 0
    assert iio.imread(out).shape[0] == 40  # the 4 s motion is longer than the 3 s expression
    assert len(list(frames.glob("frame_*.ply"))) == 40


@pytest.mark.parametrize("case,pattern", [
    ("unknown column", "unknown columns"),
    ("weight", "eyeBlinkLeft = 7 is outside [0, 1]"),
    ("template", "smplx template cannot play"),
    ("nothing", "nothing to play"),
])  # fmt: skip
def test_bad_expression_input_is_one_clear_error(template, smplx_template, tmp_path, capsys, case, pattern):
    ply = avatar_ply(template, tmp_path / "avatar.ply", 200)
    text = DEMO_FACE.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    if case == "unknown column":
        bad.write_text("\n".join([text[0] + ",Smirk"] + [r + ",0" for r in text[1:]]))
    elif case == "weight":
        bad.write_text("\n".join(text[:3] + [text[3].replace(",0,", ",7,", 1)] + text[4:]))
    else:
        bad = DEMO_FACE
    smplx = tmp_path / "smplx.npz"
    smplx_template.save(smplx)
    args = ["--ply", ply, "--play", "--out", tmp_path / "x.mp4", "--export-ply", tmp_path / "frames"]
    args += ["--template", smplx if case == "template" else "anny"]
    args += [] if case == "nothing" else ["--expression", bad]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "frames").exists()


def test_help_says_what_happens_to_the_shorter_recording(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--expression FILE" in out and "--view {body,face}" in out
    assert "the shorter one holds its last frame" in out and "Live Link Face" in out


def test_old_z_up_avatar_files_still_animate(template, tmp_path):
    """An avatar PLY written before files carried their frame (z up, no header comment) plays the same."""
    import imageio.v3 as iio

    from threestudio.utils.ply import read_gaussian_ply, write_gaussian_ply

    ply = avatar_ply(template, tmp_path / "new.ply", 300)
    params, extra = read_gaussian_ply(ply)
    write_gaussian_ply(tmp_path / "old.ply", params, extra, frame="raw")
    for name in ("new", "old"):
        assert (
            play(tmp_path / f"{name}.ply", "--resolution", 32, "--max-frames", 3, "--out", tmp_path / f"{name}.mp4")
            == 0
        )
    a, b = (iio.imread(tmp_path / f"{n}.mp4").astype(float) for n in ("new", "old"))
    assert a.max() > 30 and np.abs(a - b).mean() < 0.5
