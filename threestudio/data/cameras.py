"""A batch of pinhole cameras shared by data, renderers, OpenPose drawing and prompts."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from threestudio.ops.camera import c2w_gl_to_w2c_cv, intrinsics
from threestudio.utils.typing import Float, Tensor


@dataclass
class Cameras:
    """B cameras of one resolution.

    Attributes:
        c2w: [B, 4, 4] OpenGL camera-to-world (world frame of ``models/body/template.py``).
        fovy: [B] vertical field of view, radians.
        height, width: image size in pixels.
        azimuth, elevation: [B] degrees (method §3.1 convention: +90 = front).
        distance: [B] camera distance to ``center`` (world units).
        center: [B, 3] look-at point (origin for full body, head/back offset for close-ups).
        mode: ``"body"``, ``"head"`` or ``"back"`` (close-up kind; same for the whole batch).
    """

    c2w: Float[Tensor, "B 4 4"]
    fovy: Float[Tensor, "B"]
    height: int
    width: int
    azimuth: Float[Tensor, "B"]
    elevation: Float[Tensor, "B"]
    distance: Float[Tensor, "B"]
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
        return intrinsics(self.fovy, self.height, self.width)

    def to(self, device) -> "Cameras":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("c2w", "fovy", "azimuth", "elevation", "distance", "center")})

    def resized(self, height: int, width: int) -> "Cameras":
        """Same views at another resolution (the field of view is kept)."""
        return replace(self, height=height, width=width)

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return replace(self, **{k: getattr(self, k)[idx] for k in
                                ("c2w", "fovy", "azimuth", "elevation", "distance", "center")})

    @staticmethod
    def cat(cams: list["Cameras"]) -> "Cameras":
        f = cams[0]
        return replace(f, **{k: torch.cat([getattr(c, k) for c in cams]) for k in
                             ("c2w", "fovy", "azimuth", "elevation", "distance", "center")})
