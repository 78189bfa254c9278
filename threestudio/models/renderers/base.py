"""Renderer interface shared by the gsplat (CUDA) and pure-torch (CPU) rasterizers."""
from __future__ import annotations

from dataclasses import dataclass

from threestudio.data.cameras import Cameras
from threestudio.models.geometry.gaussian_model import GaussianModel
from threestudio.utils.base import BaseObject


class Renderer(BaseObject):
    """``render(model, cameras)`` -> dict:

    * ``comp_rgb`` [B, H, W, 3] in [0, 1] (composited over ``background``),
    * ``opacity`` [B, H, W, 1] accumulated alpha,
    * ``depth`` [B, H, W, 1] expected camera-z depth (0 where empty),
    * ``radii`` [B, N] int screen radius (0 = not visible),
    * ``means2d`` [B, N, 2] pixel positions; ``retain_grad()`` has been called when
      ``requires_grad`` so that ``means2d.grad`` holds dL/d(pixel) after backward.
    """

    @dataclass
    class Config:
        background: list = (0.0, 0.0, 0.0)  # type: ignore[assignment]
        """RGB in [0, 1]; black as in the reference (method §4)."""
        near_plane: float = 0.01
        eps2d: float = 0.3

    def render(self, model: GaussianModel, cameras: Cameras, colors=None) -> dict:
        raise NotImplementedError
