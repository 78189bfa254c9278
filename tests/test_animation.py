import math
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import REPO, SHARED
from threestudio.animation.motion import Motion, load_motion, retarget
from threestudio.models.body.template import BODY_HEIGHT, sample_surface
from threestudio.ops.lbs import (
    axis_angle_to_matrix,
    lbs_gaussians,
    matrix_to_quat,
    quat_multiply,
    surface_skinning_weights,
)
from threestudio.utils.errors import UserError

MOTION = SHARED / "data" / "motions" / "amass_test_17.npz"


def dense_weights(t):
    return torch.zeros(t.vertices.shape[0], t.joints.shape[0]).scatter_(1, t.skin_indices, t.skin_weights)


def static_motion(body_pose, T=1):
    return Motion(
        torch.tensor([[-math.pi / 2, 0.0, 0.0]]).repeat(T, 1) * 0,
        body_pose.float().repeat(T, 1, 1),
        torch.zeros(T, 3),
        30.0,
    )


def animator_on_surface(template, n=3000):
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.models.geometry.gaussian_model import GaussianModel

    pts, _, _ = sample_surface(template, n, seed=3)
    m = GaussianModel({"num_points": n}).init_from_template(template)
    with torch.no_grad():
        m.means.copy_(pts)
    return GaussianAnimator(m, template)


def test_skinned_gaussians_stay_on_posed_surface(template):
    if not MOTION.is_file():
        pytest.skip("shared motion not available")
    an = animator_on_surface(template)
    G = retarget(load_motion(MOTION), template)
    W = dense_weights(template)
    for f in (10, 70, 130):
        posed = an.pose(G[f])
        verts, _ = lbs_gaussians(
            template.vertices, torch.tensor([[1.0, 0, 0, 0]]).repeat(len(template.vertices), 1), W, G[f]
        )
        _, d = surface_skinning_weights(posed.means, verts, template.faces, W)
        assert d.mean() <= 0.01 * BODY_HEIGHT, (f, float(d.mean()))
        assert (posed.means - an.model.means).norm(dim=-1).max() > 0.05  # the body really moved


def test_left_shoulder_raises_left_arm(template):
    from threestudio.models.body.smplx_body import smplx_apose_body_pose

    pose = smplx_apose_body_pose().clone()
    pose[15] = torch.tensor([0.0, 0.0, math.pi / 4])  # left shoulder: arm up to 45° above horizontal
    G = retarget(static_motion(pose[None]), template)[0]
    W = dense_weights(template)
    v = template.vertices
    out, _ = lbs_gaussians(v, torch.tensor([[1.0, 0, 0, 0]]).repeat(len(v), 1), W, G)
    lw, rw = template.keypoints[7], template.keypoints[4]
    near_l = (v - lw).norm(dim=-1) < 0.05
    near_r = (v - rw).norm(dim=-1) < 0.05
    assert (out[near_l, 2] - v[near_l, 2]).mean() > 0.3, "left hand goes up"
    assert (out[near_l, 0] < 0).all(), "the left arm is at -x"
    assert (out[near_r] - v[near_r]).norm(dim=-1).max() < 1e-4, "right arm unchanged"
    # canonical A-pose motion = identity transforms
    G0 = retarget(static_motion(smplx_apose_body_pose()[None]), template)[0]
    np.testing.assert_allclose(G0, torch.eye(4).expand_as(G0), atol=1e-5)


def test_rotations_follow_the_bone():
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.8]))
    G = torch.eye(4).repeat(2, 1, 1)
    G[1, :3, :3] = R
    G[1, :3, 3] = torch.tensor([0.1, 0.2, 0.3])
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    x = torch.randn(5, 3)
    w = torch.tensor([[0.0, 1.0]]).repeat(5, 1)
    x2, q2 = lbs_gaussians(x, q, w, G)
    np.testing.assert_allclose(x2, x @ R.T + G[1, :3, 3], atol=1e-5)
    expect = quat_multiply(matrix_to_quat(R).expand(5, 4), q)
    np.testing.assert_allclose(torch.sign(expect[:, :1]) * expect, torch.sign(q2[:, :1]) * q2, atol=1e-5)
    from threestudio.ops.gaussians import quat_to_rotmat

    np.testing.assert_allclose(quat_to_rotmat(q2), R @ quat_to_rotmat(q), atol=1e-5)


def test_canonical_frame_reproduces_ply_exactly(template, tmp_path):
    from threestudio.utils.ply import read_gaussian_ply

    an = animator_on_surface(template, 500)
    an.model.save_ply(tmp_path / "in.ply")
    an.export_ply(tmp_path / "out.ply", torch.eye(4).repeat(template.joints.shape[0], 1, 1))
    a, _ = read_gaussian_ply(tmp_path / "in.ply")
    b, _ = read_gaussian_ply(tmp_path / "out.ply")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize(
    "content,pattern",
    [
        ({"trans": np.zeros((3, 3))}, "no 'poses'"),
        ({"poses": np.zeros((3, 40, 3))}, "expected 55"),
        ({"poses": np.full((3, 165), np.nan)}, "NaN"),
        ({"poses": np.zeros((0, 165))}, "zero frames"),
        ({"poses": np.zeros((3, 165)), "trans": np.zeros((2, 3))}, "'trans' has shape"),
    ],
)
def test_bad_motion_files(tmp_path, content, pattern):
    f = tmp_path / "m.npz"
    np.savez(f, **content)
    with pytest.raises(UserError, match=pattern):
        load_motion(f)


def test_motion_formats_and_resampling(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "h.npz", poses=rng.normal(0, 0.2, (20, 156)), trans=np.zeros((20, 3)), mocap_framerate=60)
    m = load_motion(tmp_path / "h.npz", fps=30)
    assert len(m) == 10 and m.body_pose.shape == (10, 21, 3) and m.fps == 30
    m2 = load_motion(tmp_path / "h.npz")
    np.testing.assert_allclose(m.body_pose[3], m2.body_pose[6], atol=1e-5)  # exact source frames
    np.savez(tmp_path / "x.npz", poses=rng.normal(0, 0.2, (4, 55, 3)))  # no trans, no rate
    assert len(load_motion(tmp_path / "x.npz")) == 4
    body = rng.normal(0, 0.2, (5, 63))
    np.savez(tmp_path / "split.npz", pose_body=body)  # no global orientation, no translation
    m3 = load_motion(tmp_path / "split.npz")
    assert len(m3) == 5 and (m3.global_orient == 0).all()
    np.testing.assert_allclose(m3.body_pose.reshape(5, 63), body, atol=1e-6)
    np.savez(tmp_path / "bad.npz", pose_body=np.zeros((5, 30)))
    with pytest.raises(UserError, match="expected 21"):
        load_motion(tmp_path / "bad.npz")


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / "animation.py"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_video_changes_with_motion_and_rejects_bad_input(template, tmp_path, capsys):
    if not MOTION.is_file():
        pytest.skip("shared motion not available")
    import imageio.v3 as iio

    an = animator_on_surface(template, 2000)
    with torch.no_grad():
        an.model.f_dc.normal_(0, 1)
        an.model.opacity_logit.fill_(3.0)
    an.model.save_ply(tmp_path / "avatar.ply")
    out = tmp_path / "a.mp4"
    r = _cli(
        "--ply",
        tmp_path / "avatar.ply",
        "--motion",
        MOTION,
        "--play",
        "--rotate",
        "--resolution",
        64,
        "--max-frames",
        12,
        "--out",
        out,
        "--export-ply",
        tmp_path / "frames",
        "--template",
        "anny",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    v = iio.imread(out)
    assert v.shape[0] == 12 and v.max() > 30
    assert np.abs(v[0].astype(float) - v[-1].astype(float)).mean() > 1.0
    assert len(list((tmp_path / "frames").glob("frame_*.ply"))) == 12
    import trimesh

    trimesh.creation.box().export(tmp_path / "mesh.ply")
    r = _cli("--ply", tmp_path / "mesh.ply", "--motion", MOTION, "--play")
    assert r.returncode == 2 and "not a 3DGS PLY" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--ply", tmp_path / "avatar.ply", "--motion", tmp_path / "none.npz", "--play")
    assert r.returncode == 2 and "motion file not found" in r.stderr
    r = _cli("--ply", tmp_path / "avatar.ply", "--motion", MOTION)
    assert r.returncode == 2 and "nothing to do" in r.stderr
    # --out a folder: the video goes inside it as anim_<motion>.mp4 (in-process: the CLI's main)
    from threestudio.animation.cli import main

    (tmp_path / "videos").mkdir()
    args = [
        "--ply",
        tmp_path / "avatar.ply",
        "--motion",
        MOTION,
        "--play",
        "--resolution",
        32,
        "--max-frames",
        2,
        "--template",
        "anny",
        "--device",
        "cpu",
    ]
    assert main([str(a) for a in args + ["--out", tmp_path / "videos"]]) == 0
    assert (tmp_path / "videos" / f"anim_{MOTION.stem}.mp4").is_file()
    assert main([str(a) for a in args + ["--out", tmp_path / "a.gif"]]) == 2
    assert "give an .mp4 file or a folder" in capsys.readouterr().err and not (tmp_path / "a.gif").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_viewer_in_headless_chromium(template, tmp_path):
    pytest.importorskip("viser")
    pw = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium) or not MOTION.is_file():
        pytest.skip("Debian chromium or the shared motion is not installed")
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
            str(MOTION),
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
            page.wait_for_timeout(6000)
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
