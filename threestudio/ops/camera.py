"""Camera conventions (method §3.1, with the world frame of ``models/body/template.py``).

World: z up; the person faces +y. Spherical camera position
``pos = center + d (cos e cos a, cos e sin a, sin e)``: azimuth a = +90° is the front view,
a = -90° the back view, a = 0° looks at the person's right side (+x), a = ±180° at their left side.
``c2w`` matrices are OpenGL (columns: right, up, backward; camera looks along -z). The renderers
use OpenCV ``w2c`` (x right, y down, z forward); :func:`c2w_gl_to_w2c_cv` converts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from threestudio.utils.typing import Float, Tensor


def spherical_to_position(
    elevation_deg: Float[Tensor, "B"], azimuth_deg: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a),
                        distance * torch.sin(e)], dim=-1)


def look_at_c2w(position: Float[Tensor, "B 3"], center: Float[Tensor, "B 3"]) -> Float[Tensor, "B 4 4"]:
    """OpenGL camera-to-world matrices looking from ``position`` at ``center`` with world up +z."""
    forward = F.normalize(center - position, dim=-1)
    up_world = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device).expand_as(forward)
    right = F.normalize(torch.linalg.cross(forward, up_world, dim=-1), dim=-1)
    up = F.normalize(torch.linalg.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, position
    return c2w


def orbit_c2w(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, center: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """Camera on a sphere around ``center`` (world units), looking at it."""
    pos = center + spherical_to_position(elevation_deg, azimuth_deg, distance)
    return look_at_c2w(pos, center)


def c2w_gl_to_w2c_cv(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """OpenGL camera-to-world -> OpenCV world-to-camera (flip the camera's y and z axes, invert).

    Unlike the reference (method §3.1), the whole rigid inverse is used, so any translation works.
    """
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    c2w_cv = c2w @ flip
    R, t = c2w_cv[:, :3, :3], c2w_cv[:, :3, 3:]
    w2c = torch.eye(4, dtype=c2w.dtype, device=c2w.device).repeat(c2w.shape[0], 1, 1)
    w2c[:, :3, :3] = R.transpose(1, 2)
    w2c[:, :3, 3:] = -R.transpose(1, 2) @ t
    return w2c


def intrinsics(fovy: Float[Tensor, "B"], height: int, width: int) -> Float[Tensor, "B 3 3"]:
    """Pinhole K with square pixels from the vertical field of view (radians), principal point at the
    image centre."""
    f = height / (2.0 * torch.tan(fovy / 2.0))
    K = torch.zeros(fovy.shape[0], 3, 3, dtype=fovy.dtype, device=fovy.device)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    return K


def project_points(
    points: Float[Tensor, "N 3"], w2c: Float[Tensor, "B 4 4"], K: Float[Tensor, "B 3 3"]
) -> tuple[Float[Tensor, "B N 2"], Float[Tensor, "B N"]]:
    """World points -> pixel coordinates (x right, y down; pixel centres at +0.5) and camera depth."""
    p = torch.einsum("bij,nj->bni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    z = p[..., 2]
    uv = torch.einsum("bij,bnj->bni", K, p)[..., :2] / z.clamp_min(1e-8)[..., None]
    return uv, z


def stratified_azimuths(
    batch: int, lo: float, hi: float, generator: torch.Generator | None = None
) -> Float[Tensor, "B"]:
    """``a_i = lo + (u_i + i) / B (hi - lo)`` with u_i ~ U[0,1) (method §3.2)."""
    u = torch.rand(batch, generator=generator)
    return lo + (u + torch.arange(batch)) / batch * (hi - lo)


def wrap_degrees(a: Tensor) -> Tensor:
    """Wrap angles to (-180, 180]."""
    return -((-a + 180.0) % 360.0 - 180.0)

