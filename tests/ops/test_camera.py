import numpy as np
import torch

from threestudio.ops.camera import c2w_gl_to_w2c_cv, orbit_cameras, project_points, ring_cameras

W = 512


def cams(az, dist=1.8, cz=0.0, mode="body"):
    return orbit_cameras([az], 0.0, dist, 70.0, W, W, cz, mode)


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
