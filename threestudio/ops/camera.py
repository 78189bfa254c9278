"""Camera conventions (method §3.1, with the world frame of ``models/body/template.py``).

World: z up; the person faces +y. Spherical camera position
``pos = center + d (cos e cos a, cos e sin a, sin e)``: azimuth a = +90° is the front view,
a = -90° the back view, a = 0° looks at the person's right side (+x), a = ±180° at their left side.
``c2w`` matrices are OpenGL (columns: right, up, backward; camera looks along -z). The renderers
use OpenCV ``w2c`` (x right, y down, z forward); :func:`c2w_gl_to_w2c_cv` converts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from threestudio.utils.gpu import to_device_async
from threestudio.utils.typing import Float, Tensor


def spherical_to_position(
    elevation_deg: Float[Tensor, " B"], azimuth_deg: Float[Tensor, " B"], distance: Float[Tensor, " B"]
) -> Float[Tensor, "B 3"]:
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack(
        [distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a), distance * torch.sin(e)],
        dim=-1,
    )


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
    c2w_cv = torch.cat([c2w[..., :1], -c2w[..., 1:3], c2w[..., 3:]], dim=-1)  # c2w @ diag(1, -1, -1, 1)
    R, t = c2w_cv[:, :3, :3], c2w_cv[:, :3, 3:]
    w2c = torch.eye(4, dtype=c2w.dtype, device=c2w.device).repeat(c2w.shape[0], 1, 1)
    w2c[:, :3, :3] = R.transpose(1, 2)
    w2c[:, :3, 3:] = -R.transpose(1, 2) @ t
    return w2c


def intrinsics(fovy: Float[Tensor, " B"], height: int, width: int) -> Float[Tensor, "B 3 3"]:
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
) -> Float[Tensor, " B"]:
    """``a_i = lo + (u_i + i) / B (hi - lo)`` with u_i ~ U[0,1) (method §3.2)."""
    u = torch.rand(batch, generator=generator)
    return lo + (u + torch.arange(batch)) / batch * (hi - lo)


def wrap_degrees(a: float) -> float:
    """Wrap an angle in degrees to (-180, 180]."""
    return -((-float(a) + 180.0) % 360.0 - 180.0)


_PER_VIEW = ("c2w", "fovy_rad", "azimuth_deg", "elevation_deg", "distance", "center")


@dataclass
class Cameras:
    """B pinhole cameras of one resolution: the batch type shared by data, renderers, OpenPose drawing
    and prompts (pure data: no I/O, no plugin).

    Attributes:
        c2w: [B, 4, 4] OpenGL camera-to-world (world frame of ``models/body/template.py``).
        fovy_rad: [B] vertical field of view, radians.
        height, width: image size in pixels.
        azimuth_deg, elevation_deg: [B] degrees (method §3.1 convention: +90 = front).
        distance: [B] camera distance to ``center`` (world units).
        center: [B, 3] look-at point (origin for full body, head/back offset for close-ups).
        mode: ``"body"``, ``"head"`` or ``"back"`` (close-up kind; same for the whole batch).
    """

    c2w: Float[Tensor, "B 4 4"]
    fovy_rad: Float[Tensor, " B"]
    height: int
    width: int
    azimuth_deg: Float[Tensor, " B"]
    elevation_deg: Float[Tensor, " B"]
    distance: Float[Tensor, " B"]
    center: Float[Tensor, "B 3"]
    mode: str = "body"

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def w2c(self) -> Float[Tensor, "B 4 4"]:
        """OpenCV world-to-camera."""
        return c2w_gl_to_w2c_cv(self.c2w)

    @property
    def K(self) -> Float[Tensor, "B 3 3"]:
        """Pinhole intrinsics in pixels (:func:`intrinsics`)."""
        return intrinsics(self.fovy_rad, self.height, self.width)

    def to(self, device) -> Cameras:
        """The same views on ``device`` (to a GPU without making the host wait: :func:`to_device_async`)."""
        return replace(self, **{k: to_device_async(getattr(self, k), device) for k in _PER_VIEW})

    def resized(self, height: int, width: int) -> Cameras:
        """Same views at another resolution (the field of view is kept)."""
        return replace(self, height=height, width=width)

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return replace(self, **{k: getattr(self, k)[idx] for k in _PER_VIEW})

    @staticmethod
    def cat(cams: list[Cameras]) -> Cameras:
        """Concatenate batches of one resolution and mode."""
        return replace(cams[0], **{k: torch.cat([getattr(c, k) for c in cams]) for k in _PER_VIEW})


def orbit_cameras(
    azimuth_deg, elevation_deg, distance, fovy_deg, height: int, width: int, center_z: float, mode: str
) -> Cameras:
    """Cameras on spheres around (0, 0, ``center_z``) looking at it. ``azimuth_deg`` [B] (or a list);
    ``elevation_deg``, ``distance`` (world units) and ``fovy_deg`` per view or one for all."""
    az = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)
    B = az.shape[0]
    el = torch.as_tensor(elevation_deg, dtype=torch.float32).expand(B).clone()
    d = torch.as_tensor(distance, dtype=torch.float32).expand(B).clone()
    fov = torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32).expand(B).clone())
    center = torch.tensor([0.0, 0.0, center_z]).repeat(B, 1)
    return Cameras(orbit_c2w(el, az, d, center), fov, height, width, az, el, d, center, mode)


def ring_cameras(
    n: int,
    elevation_deg: float,
    distance: float,
    fovy_deg: float,
    size: int,
    center_z: float = 0.0,
    start_azimuth_deg: float = -180.0,
    mode: str = "body",
) -> Cameras:
    """n square views evenly spaced in azimuth from ``start_azimuth_deg`` (method §3.4 ring:
    -180 + 360 i / n)."""
    az = start_azimuth_deg + 360.0 * torch.arange(n) / n
    return orbit_cameras(az, elevation_deg, distance, fovy_deg, size, size, center_z, mode)
