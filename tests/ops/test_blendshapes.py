import math

import torch

from threestudio.ops.blendshapes import blend_gaussians, triangle_frames, triangle_rotations
from threestudio.ops.lbs import axis_angle_to_matrix, matrix_to_quat, quat_multiply


def test_rotations_follow_a_rotated_triangle():
    gen = torch.Generator().manual_seed(0)
    tri = torch.randn(16, 3, 3, generator=gen)
    R = axis_angle_to_matrix(torch.randn(16, 3, generator=gen))
    moved = tri @ R.transpose(-1, -2) + torch.randn(16, 1, 3, generator=gen)  # rotate + translate
    torch.testing.assert_close(triangle_rotations(tri, moved), R, atol=1e-5, rtol=0)
    F = triangle_frames(tri)
    torch.testing.assert_close(F @ F.transpose(-1, -2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(F), torch.ones(16), atol=1e-5)


def test_blended_gaussians_move_and_turn_with_their_triangle():
    # one triangle whose corner 2 is lifted by the single blendshape: the Gaussian at its centroid
    # moves by a third of the lift and turns with the triangle's frame
    tri = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    basis = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # E=1, M=3
    means = torch.tensor([[1 / 3, 1 / 3, 0.0], [5.0, 5.0, 5.0]])
    quats = torch.tensor([[1.0, 0, 0, 0], [0.0, 1.0, 0, 0]])
    args = (basis, torch.tensor([0]), torch.tensor([[0, 1, 2]]), torch.full((1, 3), 1 / 3), tri)
    x, q = blend_gaussians(means, quats, torch.tensor([0.5]), *args)
    torch.testing.assert_close(x[0], torch.tensor([1 / 3, 1 / 3, 0.5 / 3]))
    assert torch.equal(x[1], means[1]) and torch.equal(q[1], quats[1])  # unbound Gaussian untouched
    R = triangle_rotations(tri, tri + 0.5 * basis[0])
    torch.testing.assert_close(q[0], quat_multiply(matrix_to_quat(R), quats[:1])[0])
    tilt = math.degrees(math.acos(float(R[0, 2, 2])))
    assert 15 < tilt < 30  # the normal tilts by the slope of the lifted corner
    x0, q0 = blend_gaussians(means, quats, torch.tensor([0.0]), *args)
    assert torch.equal(x0, means) and torch.equal(q0, quats)  # zero weight: bit for bit


def test_corner_without_blendshape_stays():
    tri = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    basis = torch.tensor([[[0.0, 0.0, 2.0]]])  # M=1: only corner 0 moves
    means, quats = torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]])
    x, _ = blend_gaussians(
        means,
        quats,
        torch.tensor([1.0]),
        basis,
        torch.tensor([0]),
        torch.tensor([[0, 1, 1]]),
        torch.tensor([[1.0, 0, 0]]),
        tri,
    )
    torch.testing.assert_close(x[0], torch.tensor([0.0, 0.0, 2.0]))
