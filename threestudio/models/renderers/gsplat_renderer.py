"""gsplat (CUDA) renderer: batched cameras, RGB (+ expected depth when asked) + alpha in one call."""

from __future__ import annotations

from dataclasses import dataclass

import threestudio
from threestudio.models.geometry.gaussian_model import GaussianModel, PosedGaussians
from threestudio.models.renderers.base import Renderer
from threestudio.ops.camera import Cameras
from threestudio.utils.errors import UserError


@threestudio.register("gsplat-renderer")
class GsplatRenderer(Renderer):
    @dataclass
    class Config(Renderer.Config):
        packed: bool = False
        """gsplat's packed mode (less memory for many cameras, slightly slower)."""
        absgrad: bool = False
        """Also accumulate absolute screen-space gradients (gsplat AbsGS); unused by our densify policy."""

    def configure(self) -> None:
        try:
            import gsplat  # noqa: F401
        except ImportError as e:
            raise UserError(
                "renderer 'gsplat-renderer' needs `pip install gsplat` and a CUDA GPU; on CPU use "
                "system.renderer_type=torch-splat-renderer"
            ) from e

    def render(self, model: GaussianModel | PosedGaussians, cameras: Cameras, colors=None) -> dict:
        from gsplat import rasterization

        if not model.means.is_cuda:
            raise UserError("gsplat-renderer needs the Gaussians on a CUDA device; on CPU use torch-splat-renderer")
        colors = model.colors if colors is None else colors
        B = len(cameras)
        bg = self.background(model.means.device)
        rgbd, alpha, info = rasterization(
            means=model.means,
            quats=model.rotations,
            scales=model.scales,
            opacities=model.opacities,
            colors=colors.float(),
            viewmats=cameras.w2c.to(model.means),
            Ks=cameras.K.to(model.means),
            width=cameras.width,
            height=cameras.height,
            near_plane=self.cfg.near_plane,
            eps2d=self.cfg.eps2d,
            render_mode="RGB+ED" if self.cfg.depth else "RGB",
            backgrounds=bg.expand(B, 3),
            packed=self.cfg.packed,
            absgrad=self.cfg.absgrad,
        )
        means2d = info["means2d"]
        if means2d.requires_grad:
            means2d.retain_grad()
        radii = info["radii"]
        if radii.dim() == 3:  # gsplat >= 1.5 returns per-axis radii
            radii = radii.max(-1).values
        out = {"comp_rgb": rgbd[..., :3], "opacity": alpha, "radii": radii, "means2d": means2d}
        if self.cfg.depth:
            out["depth"] = rgbd[..., 3:4]
        return out
