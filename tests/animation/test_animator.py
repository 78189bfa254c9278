import math

import numpy as np
import pytest
import torch

from tests.conftest import animator_on_surface, motions
from threestudio.animation.motion import Motion, load_motion, retarget
from threestudio.models.body.template import BODY_HEIGHT
from threestudio.ops.lbs import (
    lbs_gaussians,
    surface_skinning_weights,
)


def dense_weights(t):
    return torch.zeros(t.vertices.shape[0], t.joints.shape[0]).scatter_(1, t.skin_indices, t.skin_weights)


def static_motion(body_pose, T=1):
    return Motion(torch.zeros(T, 3), body_pose.float().repeat(T, 1, 1), torch.zeros(T, 3), 30.0)


@pytest.mark.parametrize("motion", motions())
def test_skinned_gaussians_stay_on_posed_surface(template, motion):
    an = animator_on_surface(template)
    G = retarget(load_motion(motion), template)
    W = dense_weights(template)
    for f in (10, len(G) // 2, len(G) - 6):
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


def test_canonical_frame_reproduces_ply_exactly(template, tmp_path):
    from threestudio.utils.ply import read_gaussian_ply

    an = animator_on_surface(template, 500)
    an.model.save_ply(tmp_path / "in.ply")
    an.export_ply(tmp_path / "out.ply", torch.eye(4).repeat(template.joints.shape[0], 1, 1))
    a, _ = read_gaussian_ply(tmp_path / "in.ply")
    b, _ = read_gaussian_ply(tmp_path / "out.ply")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
