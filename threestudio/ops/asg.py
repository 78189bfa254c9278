"""Anisotropic spherical Gaussians (ASG, Xu et al. 2013, Eq. 4) for view-dependent specular colour, as
in Spec-Gaussian (Yang et al. 2024, §3.2): each lobe has its *own* axis, predicted per Gaussian in the
Gaussian's local frame, and is evaluated at the reflection of the view direction about the Gaussian's
normal, so a highlight sits where the mirror direction meets the lobe axis and moves across a surface
as the view moves.

Two degenerate designs are avoided on purpose (method §10.2, DESIGN.md §6): SpecularIP built the lobe
frame around the reflection direction itself (``r·μ = cos θ`` for every view), and a lobe whose axis is
the normal, evaluated at the reflection about that same normal, only sees ``r·n = v·n``, so reflecting
changes nothing. Also :func:`blinn_phong`, an independent shading model for known-answer benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from threestudio.ops.gaussians import quat_to_rotmat
from threestudio.utils.typing import Float, Tensor


def asg(r: Float[Tensor, "*B 3"], x: Tensor, y: Tensor, z: Tensor, lam: Tensor, mu: Tensor) -> Tensor:
    """``ASG(r; [x, y, z], λ, μ) = max(r·z, 0) · exp(−λ (r·x)² − μ (r·y)²)`` (unit amplitude).
    ``x, y, z`` orthonormal lobe frame (z the lobe axis); λ, μ > 0 the two sharpnesses."""
    return (r * z).sum(-1).clamp_min(0) * torch.exp(-lam * (r * x).sum(-1) ** 2 - mu * (r * y).sum(-1) ** 2)


def reflect(v: Float[Tensor, "*B 3"], n: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
    """Reflection of the unit direction-to-camera ``v`` about the unit normal ``n``: ``2(v·n)n − v``."""
    return 2 * (v * n).sum(-1, keepdim=True) * n - v


def normal_frames(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> tuple[Tensor, Tensor, Tensor]:
    """(normal, tangent1, tangent2) [N, 3] each: the normal is the Gaussian's shortest axis, the tangents
    its other two axes (in axis order), all unit and right-handed (t1 × t2 = n)."""
    R = quat_to_rotmat(quats)  # columns are the local axes
    k = scales.argmin(-1)
    idx = torch.stack([(k + 1) % 3, (k + 2) % 3, k], -1)  # cyclic order keeps handedness
    axes = torch.gather(R, 2, idx[:, None, :].expand(-1, 3, -1))
    return axes[..., 2], axes[..., 0], axes[..., 1]


def facing_frames(n: Tensor, t1: Tensor, t2: Tensor, view: Float[Tensor, "B N 3"]) -> tuple[Tensor, Tensor, Tensor]:
    """The local frame turned to face each camera: where ``n·v < 0`` the frame is rotated by 180° about
    ``t2`` (n → −n, t1 → −t1), so a two-sided Gaussian shows the same lobes from either side.

    Returns:
        (n, t1, t2) [B, N, 3] each.
    """
    s = torch.where((n[None] * view).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return n[None] * s, t1[None] * s, t2[None].expand_as(view)


def lobe_frames(
    n: Tensor, t1: Tensor, t2: Tensor, axis_local: Float[Tensor, "N L 3"], twist: Float[Tensor, "N L"]
) -> tuple[Tensor, Tensor, Tensor]:
    """World lobe frames from lobe axes given in the local frame ``[t1, t2, n]``.

    Args:
        n, t1, t2: [B, N, 3] (camera-facing) local frames; axis_local: unit lobe axes in local
            coordinates (x along t1, y along t2, z along n); twist: rotation of the lobe's tangent axes
            about its axis (radians).

    Returns:
        x, y, z [B, N, L, 3]: z the lobe axis in the world, x/y its tangent axes (right-handed).
    """
    a = axis_local[None]
    z = a[..., 0:1] * t1[:, :, None] + a[..., 1:2] * t2[:, :, None] + a[..., 2:3] * n[:, :, None]
    x0 = t1[:, :, None].expand_as(z)
    x0 = F.normalize(x0 - (x0 * z).sum(-1, keepdim=True) * z, dim=-1)  # t1 made orthogonal to the axis
    y0 = torch.linalg.cross(z, x0, dim=-1)
    c, s = torch.cos(twist)[None, ..., None], torch.sin(twist)[None, ..., None]
    x = c * x0 + s * y0
    return x, torch.linalg.cross(z, x, dim=-1), z


def camera_directions(means: Float[Tensor, "N 3"], c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B N 3"]:
    """Unit directions from each Gaussian to each camera centre."""
    return F.normalize(c2w[:, None, :3, 3] - means[None], dim=-1)


def blinn_phong(
    n: Float[Tensor, "B N 3"], v: Float[Tensor, "B N 3"], lights: Float[Tensor, "K 3"], shininess: float
) -> Float[Tensor, "B N"]:
    """Blinn–Phong specular term (Blinn 1977) summed over directional lights:
    ``Σ_k [n·l_k > 0] max(n·h_k, 0)^p`` with ``h_k = normalize(l_k + v)``; unit normals ``n``, unit
    directions to the camera ``v`` and to the lights ``lights`` (world frame)."""
    light = F.normalize(lights, dim=-1)[None, None]  # 1 1 K 3
    h = F.normalize(light + v[:, :, None], dim=-1)
    nh = (n[:, :, None] * h).sum(-1).clamp_min(0)
    lit = (n[:, :, None] * light).sum(-1) > 0
    return (nh**shininess * lit).sum(-1)
