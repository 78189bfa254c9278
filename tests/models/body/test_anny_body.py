import numpy as np
import torch

from threestudio.models.body.template import BODY_HEIGHT


def test_anny_template_frame(template):
    t = template
    assert t.source == "anny"
    assert abs(t.height - BODY_HEIGHT) < 1e-3
    assert torch.allclose(0.5 * (t.vertices.min(0).values + t.vertices.max(0).values), torch.zeros(3), atol=1e-4)
    kp = t.keypoints
    assert kp[0, 1] > kp[16, 1] and kp[0, 1] > kp[17, 1], "faces +y"
    assert kp[5, 0] < 0 < kp[2, 0], "the person's left is at -x"
    assert kp[0, 2] > kp[1, 2] > kp[8, 2] > kp[10, 2], "z up: nose > neck > hip > ankle"
    # A-pose: wrists well below the shoulders and away from the body
    assert (kp[4, 2] < kp[2, 2] - 0.2) and abs(kp[4, 0]) > abs(kp[2, 0]) + 0.15
    np.testing.assert_allclose(t.skin_weights.sum(-1), 1.0, atol=1e-5)
    assert t.skin_indices.max() < t.joints.shape[0] and t.parents[0] == -1
    # joint frames are rigid
    R = t.joint_frames[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(1, 2), torch.eye(3).expand_as(R), atol=1e-4)
    assert torch.det(R).min() > 0.99
    # faces wind outward (proper rotation, not a mirror): total signed volume is positive
    v, f = t.vertices.double(), t.faces
    vol = (v[f[:, 0]] * torch.linalg.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert vol > 0
