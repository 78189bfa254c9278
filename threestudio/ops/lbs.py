"""Linear blend skinning of Gaussians (fix of method §9 / §12.9: centres *and* rotations follow the
bones, the canonical pose is exactly the training A-pose) and the geometry it needs."""

from __future__ import annotations

import torch

from threestudio.utils.typing import Float, Int, Tensor


def axis_angle_to_matrix(aa: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N 3 3"]:
    """Rodrigues' formula (exact at zero)."""
    theta = aa.norm(dim=-1, keepdim=True)
    k = aa / theta.clamp_min(1e-12)
    K = torch.zeros(aa.shape[:-1] + (3, 3), dtype=aa.dtype, device=aa.device)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 0] = -k[..., 2], k[..., 1], k[..., 2]
    K[..., 1, 2], K[..., 2, 0], K[..., 2, 1] = -k[..., 0], -k[..., 1], k[..., 0]
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(K.shape)
    return eye + s * K + (1 - c) * (K @ K)


def matrix_to_quat(R: Float[Tensor, "*N 3 3"]) -> Float[Tensor, "*N 4"]:
    """Rotation matrices -> unit quaternions (w, x, y, z), w >= 0 (via roma)."""
    import roma

    q = roma.rotmat_to_unitquat(R)  # x, y, z, w
    q = torch.cat([q[..., 3:], q[..., :3]], -1)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0)


def quat_multiply(a: Float[Tensor, "*N 4"], b: Float[Tensor, "*N 4"]) -> Float[Tensor, "*N 4"]:
    """Hamilton product of (w, x, y, z) quaternions: the rotation ``b`` then ``a``."""
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        -1,
    )


def closest_points_on_triangles(p: Float[Tensor, "N 3"], tri: Float[Tensor, "N M 3 3"]) -> tuple[Tensor, Tensor]:
    """Closest point of each p to each of its M candidate triangles (Ericson, Real-Time Collision
    Detection §5.1.5). Returns (squared distances [N, M], barycentric coordinates [N, M, 3])."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    p = p[:, None, :].expand_as(a)
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    denom = torch.where(denom.abs() < 1e-20, torch.full_like(denom, 1e-20), denom)
    v, w = vb / denom, vc / denom
    bary = torch.stack([1 - v - w, v, w], -1)  # interior
    e = 1e-20

    def setw(mask, bc):
        nonlocal bary
        bary = torch.where(mask[..., None], bc, bary)

    # edges and vertices (later assignments take precedence in Ericson's order, so go in reverse)
    t_bc = ((d4 - d3) / ((d4 - d3) + (d5 - d6) + e)).clamp(0, 1)
    setw((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), torch.stack([0 * t_bc, 1 - t_bc, t_bc], -1))
    t_ac = (d2 / (d2 - d6 + e)).clamp(0, 1)
    setw((vb <= 0) & (d2 >= 0) & (d6 <= 0), torch.stack([1 - t_ac, 0 * t_ac, t_ac], -1))
    t_ab = (d1 / (d1 - d3 + e)).clamp(0, 1)
    setw((vc <= 0) & (d1 >= 0) & (d3 <= 0), torch.stack([1 - t_ab, t_ab, 0 * t_ab], -1))
    one, zero = torch.ones_like(d1), torch.zeros_like(d1)
    setw((d6 >= 0) & (d5 <= d6), torch.stack([zero, zero, one], -1))
    setw((d3 >= 0) & (d4 <= d3), torch.stack([zero, one, zero], -1))
    setw((d1 <= 0) & (d2 <= 0), torch.stack([one, zero, zero], -1))
    q = (bary[..., None] * tri).sum(-2)
    return ((q - p) ** 2).sum(-1), bary


def incident_faces(faces: Int[Tensor, "F 3"], num_vertices: int, most: int = 8) -> Int[Tensor, "V most"]:
    """For each vertex, the indices of up to ``most`` faces that use it (lowest face indices first),
    padded with -1."""
    vert = faces.reshape(-1)
    face = torch.arange(faces.shape[0]).repeat_interleave(faces.shape[1])
    order = torch.argsort(vert * faces.shape[0] + face)  # by vertex, then by face
    vert, face = vert[order], face[order]
    first = torch.searchsorted(vert, torch.arange(num_vertices))  # first entry of each vertex
    rank = torch.arange(len(vert)) - first[vert]
    keep = rank < most
    inc = torch.full((num_vertices, most), -1, dtype=torch.long)
    inc[vert[keep], rank[keep]] = face[keep]
    return inc


def closest_surface_points(
    points: Float[Tensor, "N 3"], vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"], k_vertices: int = 8
) -> tuple[Int[Tensor, " N"], Float[Tensor, "N 3"], Float[Tensor, " N"]]:
    """Closest point of each point on a triangle mesh; candidates are the faces around the
    ``k_vertices`` nearest vertices. A point exactly on a vertex gets a one-hot barycentric row.

    Returns:
        (face index [N], barycentric coordinates [N, 3] over ``faces[face]``, distance [N]).
    """
    from scipy.spatial import cKDTree

    V = vertices.shape[0]
    _, nn = cKDTree(vertices.cpu().numpy()).query(points.detach().cpu().numpy(), k=k_vertices)
    nn = torch.as_tensor(nn, dtype=torch.long)
    inc = incident_faces(faces, V, 8)  # vertex -> up to 8 incident faces
    cand = inc[nn].reshape(len(points), -1)  # N, k*8
    valid = cand >= 0
    cand = torch.where(valid, cand, torch.zeros_like(cand))
    tri = vertices[faces[cand]]  # N M 3 3
    d2, bary = closest_points_on_triangles(points.float(), tri.float())
    d2 = torch.where(valid, d2, torch.full_like(d2, float("inf")))
    best = d2.argmin(1)
    ar = torch.arange(len(points))
    return cand[ar, best], bary[ar, best], d2[ar, best].sqrt()


def surface_skinning_weights(
    points: Float[Tensor, "N 3"],
    vertices: Float[Tensor, "V 3"],
    faces: Int[Tensor, "F 3"],
    vertex_weights: Float[Tensor, "V J"],
    k_vertices: int = 8,
) -> tuple[Float[Tensor, "N J"], Float[Tensor, " N"]]:
    """Skinning weights of arbitrary points interpolated (barycentric) at their closest point on the
    mesh (:func:`closest_surface_points`).

    Returns (weights [N, J], distance to the surface [N])."""
    face, bary, dist = closest_surface_points(points, vertices, faces, k_vertices)
    w = (vertex_weights[faces[face]] * bary[..., None]).sum(1)
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12), dist


def smooth_weights(
    points: Float[Tensor, "N 3"], weights: Float[Tensor, "N J"], k: int = 8, iterations: int = 2, alpha: float = 0.5
) -> Float[Tensor, "N J"]:
    """Blend each Gaussian's weights with the mean of its k nearest Gaussians (neighbours agree)."""
    from scipy.spatial import cKDTree

    _, nn = cKDTree(points.detach().cpu().numpy()).query(points.detach().cpu().numpy(), k=k + 1)
    nn = torch.as_tensor(nn[:, 1:], dtype=torch.long, device=weights.device)
    for _ in range(iterations):
        weights = (1 - alpha) * weights + alpha * weights[nn].mean(1)
    return weights / weights.sum(-1, keepdim=True)


def lbs_gaussians(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    weights: Float[Tensor, "N J"],
    transforms: Float[Tensor, "J 4 4"],
) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 4"]]:
    """Linear blend skinning of Gaussian centres and rotations.

    ``T = I + Σ_j w_j (G_j − I)`` (= Σ_j w_j G_j for normalised weights, but exact where the bones do
    not move); centres ``x' = T x``; rotations ``q' = q(polar(T_3x3)) ⊗ q`` (the nearest rotation to
    the blended matrix, via SVD). Scales are unchanged. With all ``G_j = I`` the output equals the
    input bit for bit.
    """
    import roma

    eye = torch.eye(4, dtype=transforms.dtype, device=transforms.device)
    D = torch.einsum("nj,jab->nab", weights, transforms - eye)
    x = means + (D[:, :3, :3] @ means[..., None])[..., 0] + D[:, :3, 3]
    R = roma.special_procrustes(eye[:3, :3] + D[:, :3, :3])
    q = quat_multiply(matrix_to_quat(R), quats)
    return x, q
