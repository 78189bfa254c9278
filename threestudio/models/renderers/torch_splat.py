"""Pure-PyTorch tile rasterizer: the CPU path and the reference the gsplat path is checked against.

Per 16x16 tile it gathers the Gaussians whose 3-sigma box overlaps the tile, sorts them by depth
and alpha-composites densely (``ops/gaussians.py``). Differentiable by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import threestudio
from threestudio.models.geometry.gaussian_model import GaussianModel, PosedGaussians
from threestudio.models.renderers.base import Renderer
from threestudio.ops.camera import Cameras
from threestudio.ops.gaussians import composite_weights, covariance_3d, gaussian_alpha, project_gaussians


@threestudio.register("torch-splat-renderer")
class TorchSplatRenderer(Renderer):
    @dataclass
    class Config(Renderer.Config):
        tile_size: int = 16
        """Square tile side in pixels; each tile composites its overlapping Gaussians densely."""

    def render(self, model: GaussianModel | PosedGaussians, cameras: Cameras, colors=None) -> dict:
        colors = model.colors if colors is None else colors  # N 3 or B N 3
        return rasterize_torch(
            model.means,
            model.scales,
            model.rotations,
            model.opacities,
            colors,
            cameras.w2c.to(model.means),
            cameras.K.to(model.means),
            cameras.width,
            cameras.height,
            self.cfg.background,
            self.cfg.near_plane,
            self.cfg.eps2d,
            self.cfg.tile_size,
            self.cfg.depth,
        )


def rasterize_torch(
    means,
    scales,
    quats,
    opacities,
    colors,
    w2c,
    K,
    width,
    height,
    background=(0, 0, 0),
    near=0.01,
    eps2d=0.3,
    tile=16,
    depth: bool = True,
) -> dict:
    """Rasterize N Gaussians into B views; see :class:`Renderer` for the outputs (``depth`` only when
    ``depth``) and ``ops/gaussians.py`` for the conventions. ``colors`` is [N, 3] or per-view [B, N, 3]."""
    B = w2c.shape[0]
    proj = project_gaussians(means, covariance_3d(scales, quats), w2c, K, width, height, near, eps2d)
    means2d = proj["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    bg = torch.as_tensor(list(background), dtype=means.dtype, device=means.device)
    nty, ntx = -(-height // tile), -(-width // tile)
    ty0, tx0 = torch.meshgrid(
        torch.arange(nty, device=means.device) * tile, torch.arange(ntx, device=means.device) * tile, indexing="ij"
    )
    oy, ox = torch.meshgrid(
        torch.arange(tile, device=means.device), torch.arange(tile, device=means.device), indexing="ij"
    )
    outs = []
    for b in range(B):
        col_b = colors[b] if colors.dim() == 3 else colors
        vis = torch.nonzero(proj["radii"][b] > 0).squeeze(1)
        vis = vis[torch.argsort(proj["depths"][b, vis].detach())]
        m2, r = means2d[b, vis], proj["radii"][b, vis].float()
        con, op, feat = (
            proj["conics"][b, vis],
            opacities[vis],
            torch.cat([col_b[vis], proj["depths"][b, vis, None]], -1),
        )
        lo, hi = m2.detach() - r[:, None], m2.detach() + r[:, None]
        tiles = []
        for ty, tx in zip(ty0.reshape(-1).tolist(), tx0.reshape(-1).tolist(), strict=True):
            pix = torch.stack([(ox + tx).reshape(-1), (oy + ty).reshape(-1)], -1).to(means.dtype) + 0.5
            sel = torch.nonzero(
                (hi[:, 0] >= tx) & (lo[:, 0] <= tx + tile) & (hi[:, 1] >= ty) & (lo[:, 1] <= ty + tile)
            ).squeeze(1)
            if sel.numel() == 0:
                tiles.append(means.new_zeros(tile * tile, 5))
                continue
            w = composite_weights(gaussian_alpha(pix, m2[sel], con[sel], op[sel]))
            tiles.append(torch.cat([w @ feat[sel], w.sum(1, keepdim=True)], -1))  # rgb, depth*acc, acc
        img = (
            torch.stack(tiles)
            .reshape(nty, ntx, tile, tile, 5)
            .permute(0, 2, 1, 3, 4)
            .reshape(nty * tile, ntx * tile, 5)
        )
        outs.append(img[:height, :width])
    out = torch.stack(outs)
    acc = out[..., 4:5]
    res = {"comp_rgb": out[..., :3] + (1 - acc) * bg, "opacity": acc, "radii": proj["radii"], "means2d": means2d}
    if depth:
        res["depth"] = out[..., 3:4] / acc.clamp_min(1e-10)
    return res
