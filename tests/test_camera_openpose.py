import math

import numpy as np
import torch

from threestudio.data.human_cameras import make_cameras, ring_cameras
from threestudio.ops.camera import c2w_gl_to_w2c_cv, project_points
from threestudio.ops.openpose import OPENPOSE_COLORS, skeleton_images
from threestudio.ops.prompts import view_direction, view_suffix

W = 512


def cams(az, dist=1.8, cz=0.0, mode="body"):
    return make_cameras([az], 0.0, dist, 70.0, W, W, cz, mode)


def test_w2c_is_inverse_of_c2w():
    c = ring_cameras(8, 17.0, 1.5, 70.0, 64)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    eye = c2w_gl_to_w2c_cv(c.c2w) @ c.c2w @ flip
    np.testing.assert_allclose(eye, torch.eye(4).expand(8, 4, 4), atol=1e-5)
    # camera looks at the origin: the origin projects to the image centre
    uv, z = project_points(torch.zeros(1, 3), c.w2c, c.K)
    np.testing.assert_allclose(uv[:, 0], torch.full((8, 2), 32.0), atol=1e-4)
    np.testing.assert_allclose(z[:, 0], torch.full((8,), 1.5), atol=1e-5)


def test_front_camera_sees_the_face(template):
    c = cams(90.0)
    uv, z = project_points(template.keypoints, c.w2c, c.K)
    nose, r_ear, l_ear = z[0, 0], z[0, 16], z[0, 17]
    assert nose < r_ear and nose < l_ear, "front view: the nose is nearer than both ears"
    back = cams(-90.0)
    _, zb = project_points(template.keypoints, back.w2c, back.K)
    assert zb[0, 0] > zb[0, 16] and zb[0, 0] > zb[0, 17]
    assert uv[0, 0, 1] < W / 2, "head is in the upper half of the image"


def test_left_right_not_mirrored(template):
    """Looking at a person from the front, their left side appears on image-right."""
    uv, _ = project_points(template.keypoints, cams(90.0).w2c, cams(90.0).K)
    assert uv[0, 5, 0] > W / 2 > uv[0, 2, 0]  # l_shoulder right, r_shoulder left
    assert uv[0, 7, 0] > W / 2 > uv[0, 4, 0]  # wrists
    uvb, _ = project_points(template.keypoints, cams(-90.0).w2c, cams(-90.0).K)
    assert uvb[0, 5, 0] < W / 2 < uvb[0, 2, 0]
    # the person's left side faces the camera at azimuth 180
    _, z = project_points(template.keypoints, cams(180.0).w2c, cams(180.0).K)
    assert z[0, 5] < z[0, 2]


def test_openpose_colours_frontal(template):
    c = cams(90.0)
    img, all_vis = skeleton_images(template.keypoints, c.w2c, c.K, W, W, head_closeup=False)
    assert bool(all_vis[0])
    uv, _ = project_points(template.keypoints, c.w2c, c.K)
    arr = (img[0].numpy() * 255).round().astype(int)
    for k in (0, 2, 4, 5, 7, 10, 13):
        x, y = (int(v) for v in uv[0, k])
        assert tuple(arr[y, x]) == OPENPOSE_COLORS[k], f"keypoint {k} colour"
    # right shoulder (yellow-orange) on image-left, left shoulder (green) on image-right (OpenPose palette)
    assert OPENPOSE_COLORS[2] == (255, 170, 0) and uv[0, 2, 0] < W / 2
    assert OPENPOSE_COLORS[5] == (85, 255, 0) and uv[0, 5, 0] > W / 2
    assert (arr.sum(-1) > 0).mean() < 0.2


def test_head_closeup_keeps_shoulders_not_elbows(template):
    c = cams(90.0, dist=0.5, cz=0.65, mode="head")
    img, all_vis = skeleton_images(template.keypoints, c.w2c, c.K, W, W, head_closeup=True)
    from threestudio.ops.openpose import keypoint_visibility

    uv, z = project_points(template.keypoints, c.w2c, c.K)
    vis = keypoint_visibility(uv, z, W, W, True, 0.14)
    assert vis[0, [0, 1, 2, 5, 14, 15, 16, 17]].all()
    assert not vis[0, [3, 4, 6, 7, 8, 9, 10, 11, 12, 13]].any()
    assert not bool(all_vis[0])


def test_back_and_profile_occlusion(template):
    from threestudio.ops.openpose import keypoint_visibility

    ear = float((template.keypoints[16] - template.keypoints[17]).norm())
    for az, hidden, shown in ((-90.0, [0, 14, 15], [16, 17]), (0.0, [17, 15], [16, 14]), (180.0, [16, 14], [17, 15])):
        c = cams(az)
        uv, z = project_points(template.keypoints, c.w2c, c.K)
        vis = keypoint_visibility(uv, z, W, W, False, ear)[0]
        assert not vis[hidden].any(), az
        assert vis[shown].all(), az


def test_view_prompts():
    assert view_direction(90) == "front" and view_direction(-90) == "back"
    assert view_direction(10) == "right front" and view_direction(170) == "left front"
    assert view_direction(-170) == "left back" and view_direction(-10) == "right back"
    assert view_direction(450) == "front"
    s = view_suffix("front", "head", False)
    assert "overhead" not in s and "close-up" in s
    assert view_suffix("back", "body", True) == ", full body photo, back view"
    assert view_suffix("back", "body", False) == ", back view"


def test_random_cameras_modes_and_windows():
    from threestudio.data.human_cameras import HumanCameraConfig, RandomHumanCameras
    from threestudio.utils.config import parse_structured

    cfg = parse_structured(
        HumanCameraConfig, {"head_steps": [100, 200], "back_steps": [100, 200], "height": 8, "width": 8}
    )
    ds = RandomHumanCameras(cfg)
    assert {ds.sample(step=5).mode for _ in range(50)} == {"body"}
    modes = [ds.sample(step=150) for _ in range(400)]
    kinds = {m.mode for m in modes}
    assert kinds == {"body", "head", "back"}
    for m in modes:
        if m.mode == "head":
            assert (m.azimuth >= 0).all() and (m.azimuth <= 180).all() and (m.center[:, 2] == 0.65).all()
        if m.mode == "body":
            assert (m.distance >= 1.3).all() and (m.distance <= 1.7).all()
            a = torch.sort(m.azimuth).values
            assert (a[1:] - a[:-1] > 0).all() and len(m) == 4  # stratified
    assert abs(math.degrees(float(modes[0].fovy[0]))) <= 70.0


def test_stage2_prompt_table_method_7_3():
    """Stage-2 prompts of the 32-view ring (method §7.3), in our unmirrored frame: azimuth 0 sees the
    person's right side, ±180 their left side; front and in-between views get the bare prompt."""
    from threestudio.ops.prompts import refine_suffix
    from threestudio.ops.vcr import view_roles

    roles = view_roles(32)
    got = {r.azimuth: refine_suffix(r.kind, r.azimuth) for r in roles}
    table = {
        90.0: "",
        -90.0: ", back view",
        0.0: ", right view",
        -180.0: ", left view",
        45.0: ", right front view",
        135.0: ", left front view",
        -135.0: ", left back view",
        -45.0: ", right back view",
    }
    for az, suffix in table.items():
        assert got[az] == suffix, (az, got[az])
    between = [r for r in roles if r.kind == "between"]
    assert len(between) == 24 and all(got[r.azimuth] == "" for r in between)
    assert refine_suffix("primary", 180.0) == ", left view"  # +180 and -180 are the same view
    import pytest

    with pytest.raises(ValueError):
        refine_suffix("other", 0.0)
