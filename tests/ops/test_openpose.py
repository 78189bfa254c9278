from threestudio.ops.camera import orbit_cameras, project_points
from threestudio.ops.openpose import OPENPOSE_COLORS, skeleton_images

W = 512


def cams(az, dist=1.8, cz=0.0, mode="body"):
    return orbit_cameras([az], 0.0, dist, 70.0, W, W, cz, mode)


def test_openpose_colours_frontal(template):
    c = cams(90.0)
    img, all_vis = skeleton_images(template.keypoints, c.w2c, c.K, W, W, head_closeup=False)
    assert bool(all_vis[0])
    uv, _ = project_points(template.keypoints, c.w2c, c.K)
    arr = (img[0].numpy() * 255).round().astype(int)
    for k in (0, 2, 4, 5, 7, 10, 13):
        x, y = (int(v) for v in uv[0, k])
        assert tuple(arr[y, x]) == OPENPOSE_COLORS[k], f"keypoint {k} colour"
    # the published palette, read off the drawing: right shoulder yellow-orange on image-left, left
    # shoulder green on image-right
    (x2, y2), (x5, y5) = ((int(v) for v in uv[0, k]) for k in (2, 5))
    assert tuple(arr[y2, x2]) == (255, 170, 0) and x2 < W / 2
    assert tuple(arr[y5, x5]) == (85, 255, 0) and x5 > W / 2
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
