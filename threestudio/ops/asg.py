"""Anisotropic spherical Gaussians (ASG, Xu et al. 2013, Eq. 4) as used for view-dependent specular
colour by Spec-Gaussian (Yang et al. 2024) and SpecularIP (method §10), with the lobe frame anchored
to each Gaussian's normal so that the response really depends on the view (the SpecularIP code built
the frame around the reflection direction itself, making ``r·μ`` constant: method §10.2)."""
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


def lobe_frames(n: Tensor, t1: Tensor, t2: Tensor, view: Tensor, angle: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lobe frames for each Gaussian, view and lobe.

    Args:
        n, t1, t2: [N, 3] normal frame; view: [B, N, 3] unit directions from the Gaussians to the camera;
        angle: [N, L] rotation of each lobe's tangent axes about the normal (radians).

    Returns:
        x, y, z [B, N, L, 3]: z = the normal flipped to face the camera, x/y the rotated tangents.
    """
    flip = torch.where((n[None] * view).sum(-1, keepdim=True) < 0, -1.0, 1.0)  # B N 1
    z = (n[None] * flip)[:, :, None, :]
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]  # N L 1
    x = (c * t1[:, None] + s * t2[:, None])[None].expand(view.shape[0], -1, -1, -1)
    y = torch.linalg.cross(z.expand_as(x), x, dim=-1)
    return x, y, z.expand_as(x)


def camera_directions(means: Float[Tensor, "N 3"], c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B N 3"]:
    """Unit directions from each Gaussian to each camera centre."""
    return F.normalize(c2w[:, None, :3, 3] - means[None], dim=-1)
