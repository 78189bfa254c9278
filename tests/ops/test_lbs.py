import numpy as np
import torch

from threestudio.ops.lbs import (
    axis_angle_to_matrix,
    lbs_gaussians,
    matrix_to_quat,
    quat_multiply,
)


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


def test_incident_faces_lists_the_first_faces_of_each_vertex():
    from threestudio.ops.lbs import incident_faces

    gen = torch.Generator().manual_seed(0)
    faces = torch.stack([torch.randperm(30, generator=gen)[:3] for _ in range(200)])  # three distinct vertices
    want = [[f for f, tri in enumerate(faces.tolist()) if v in tri][:8] for v in range(32)]  # v 30, 31: unused
    got = incident_faces(faces, 32, 8)
    assert got.tolist() == [w + [-1] * (8 - len(w)) for w in want]
