"""Expression blendshapes applied to Gaussians bound to a template surface (before skinning).

A Gaussian bound to triangle ``f`` at barycentric coordinates ``b`` (its closest surface point, the same
binding as its skinning weights) moves by the blended offset of that point,
``δ = Σ_i b_i Σ_k w_k B_k[f_i]``, and its rotation follows the rotation of the triangle's frame from the
neutral to the deformed face (GaussianAvatars, Qian et al. CVPR 2024, §3.1: ``R = F_def F_rest^T``).
Body pose is applied afterwards by linear blend skinning (:func:`threestudio.ops.lbs.lbs_gaussians`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from threestudio.ops.lbs import matrix_to_quat, quat_multiply
from threestudio.utils.typing import Float, Int, Tensor


def triangle_frames(tri: Float[Tensor, "N 3 3"]) -> Float[Tensor, "N 3 3"]:
    """Orthonormal frame of each triangle ``(a, b, c)`` (rows of ``tri``): columns are the unit first
    edge ``b - a``, the in-plane direction perpendicular to it, and the unit normal (counter-clockwise
    winding). A right-handed rotation matrix for any non-degenerate triangle."""
    a, b, c = tri.unbind(-2)
    e1 = F.normalize(b - a, dim=-1)
    n = F.normalize(torch.linalg.cross(b - a, c - a), dim=-1)
    e2 = torch.linalg.cross(n, e1)
    return torch.stack([e1, e2, n], -1)


def triangle_rotations(rest: Float[Tensor, "N 3 3"], deformed: Float[Tensor, "N 3 3"]) -> Float[Tensor, "N 3 3"]:
    """Rotation taking each rest triangle's frame to its deformed frame: ``F_def F_rest^T``."""
    return triangle_frames(deformed) @ triangle_frames(rest).transpose(-1, -2)


def corner_offsets(offsets: Float[Tensor, "*E M 3"], corners: Int[Tensor, "B 3"]) -> Float[Tensor, "*E B 3 3"]:
    """Offsets of each triangle's corners from the offsets of the M moved vertices; a corner index of
    M (one past the last) stands for a vertex no blendshape moves and gets a zero offset."""
    padded = torch.cat([offsets, offsets.new_zeros(*offsets.shape[:-2], 1, 3)], -2)
    return padded[..., corners, :]


def blend_gaussians(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    weights: Float[Tensor, " E"],
    basis: Float[Tensor, "E M 3"],
    gaussians: Int[Tensor, " B"],
    corners: Int[Tensor, "B 3"],
    bary: Float[Tensor, "B 3"],
    rest_triangles: Float[Tensor, "B 3 3"],
) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 4"]]:
    """Move the bound Gaussians by blended blendshape offsets and rotate them with their triangles.

    Args:
        means, quats: all N Gaussians (world frame, unit (w, x, y, z) quaternions).
        weights: E blendshape weights of this frame.
        basis: [E, M, 3] offsets at weight 1 of the M vertices any blendshape moves.
        gaussians: indices of the B Gaussians whose triangle has a moved vertex.
        corners: [B, 3] index into the M moved vertices of each triangle corner, M for a corner that
            no blendshape moves (:func:`corner_offsets`).
        bary: [B, 3] barycentric coordinates of each Gaussian's closest surface point.
        rest_triangles: [B, 3, 3] the neutral triangle corners (rows).

    Returns:
        (means [N, 3], quats [N, 4]); Gaussians whose triangle does not move are returned bit for bit
        (so all-zero weights reproduce the input exactly).
    """
    tri_off = corner_offsets(torch.einsum("e,emc->mc", weights.to(basis), basis), corners)  # B 3 3
    delta = (bary[..., None] * tri_off).sum(1)
    moved = (tri_off != 0).flatten(1).any(1)
    R = triangle_rotations(rest_triangles, rest_triangles + tri_off)
    q = quat_multiply(matrix_to_quat(R), quats[gaussians])
    means, quats = means.clone(), quats.clone()
    means[gaussians] = torch.where(moved[:, None], means[gaussians] + delta, means[gaussians])
    quats[gaussians] = torch.where(moved[:, None], q, quats[gaussians])
    return means, quats
