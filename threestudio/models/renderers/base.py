"""Renderer interface shared by the gsplat (CUDA) and pure-torch (CPU) rasterizers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from threestudio.models.geometry.gaussian_model import GaussianModel, PosedGaussians
from threestudio.ops.camera import Cameras
from threestudio.utils.base import BaseObject
from threestudio.utils.typing import Tensor


class Renderer(BaseObject):
    """``render(model, cameras)`` -> dict:

    * ``comp_rgb`` [B, H, W, 3] in [0, 1] (composited over ``background``),
    * ``opacity`` [B, H, W, 1] accumulated alpha,
    * ``depth`` [B, H, W, 1] expected camera-z depth (0 where empty), only with ``Config.depth``,
    * ``radii`` [B, N] int screen radius (0 = not visible),
    * ``means2d`` [B, N, 2] pixel positions; ``retain_grad()`` has been called when
      ``requires_grad`` so that ``means2d.grad`` holds dL/d(pixel) after backward.
    """

    @dataclass
    class Config:
        background: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
        """RGB in [0, 1]; black as in the reference (method §4)."""
        near_plane: float = 0.01
        """Gaussians closer to the camera than this (camera z, world units) are culled."""
        eps2d: float = 0.3
        """Low-pass filter added to the 2-D covariance diagonal, pixels² (3DGS / gsplat)."""
        depth: bool = False
        """Also render the expected depth (``depth`` in the output): one more channel for the
        rasterizer to blend and, in training, to backpropagate. No stage reads it; the RGB, alpha and
        their gradients are the same either way (each channel is blended on its own)."""

    def render(self, model: GaussianModel | PosedGaussians, cameras: Cameras, colors=None) -> dict:
        raise NotImplementedError

    def background(self, device) -> Tensor:
        """``background`` as a float32 [3] tensor on ``device``, made once per device (a fresh host-to-GPU
        copy every render would make the host wait for the GPU)."""
        cache = self.__dict__.setdefault("_background", {})  # BaseObject has no __init__ hook for it
        key = str(device)
        if key not in cache:
            cache[key] = torch.as_tensor(list(self.cfg.background), dtype=torch.float32, device=device)
        return cache[key]


def resolve_renderer_type(name: str, device_type: str) -> str:
    """The renderer plugin for ``name`` on a device of ``device_type``: ``auto`` is gsplat on CUDA and
    the pure-torch rasterizer elsewhere; any other name is returned as is."""
    if name != "auto":
        return name
    return "gsplat-renderer" if device_type == "cuda" else "torch-splat-renderer"


def render_avatar(renderer: Renderer, model: GaussianModel, cameras: Cameras, appearance=None) -> dict:
    """Render ``model`` with ``renderer``; with a view-dependent ``appearance`` (the specular model)
    its per-view colours [B, N, 3] replace the SH colour. Returns the :meth:`Renderer.render` dict."""
    colors = None if appearance is None else appearance.colors(model, cameras.c2w.to(model.means))
    return renderer.render(model, cameras, colors)
