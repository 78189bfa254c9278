"""Skinning a Gaussian avatar with a body template (expressions, then body pose) and rendering /
exporting the posed frames."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from threestudio.models.body.template import BodyTemplate
from threestudio.models.geometry.gaussian_model import GaussianModel, PosedGaussians
from threestudio.ops.blendshapes import blend_gaussians
from threestudio.ops.lbs import closest_surface_points, lbs_gaussians, smooth_weights
from threestudio.utils.ply import write_gaussian_ply


class GaussianAnimator:
    """Binds a :class:`GaussianModel` (trained on ``template``'s A-pose) to the template's skeleton and
    expression blendshapes.

    Each Gaussian is bound to its closest point on the template surface (triangle + barycentric
    coordinates). Its skinning weights are interpolated there and smoothed over its nearest Gaussians;
    its expression offsets are interpolated there too (not smoothed, so the lips can part).
    :meth:`pose` applies the blendshapes (:func:`~threestudio.ops.blendshapes.blend_gaussians`), then
    LBS to centres and rotations.
    """

    def __init__(
        self, model: GaussianModel, template: BodyTemplate, smooth_k: int = 8, smooth_iters: int = 2, appearance=None
    ):
        self.model, self.template, self.appearance = model, template, appearance
        dev = model.means.device
        V, J = template.vertices.shape[0], template.joints.shape[0]
        W = torch.zeros(V, J).scatter_(1, template.skin_indices, template.skin_weights)
        means = model.means.detach().cpu()
        face, bary, self.surface_distance = closest_surface_points(means, template.vertices, template.faces)
        corners = template.faces[face]  # N 3
        w = (W[corners] * bary[..., None]).sum(1)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        if smooth_iters > 0 and model.num_points > smooth_k:
            w = smooth_weights(means, w, smooth_k, smooth_iters)
        self.weights = w.to(dev)
        self.quats = F.normalize(model.quats.detach(), dim=-1)
        self.expression = None
        if template.expressions is not None and len(template.expressions):
            self.expression = self._bind_expressions(corners, bary, dev)

    def _bind_expressions(self, corners: torch.Tensor, bary: torch.Tensor, dev: torch.device) -> dict:
        """Blendshape binding of the Gaussians whose triangle has a vertex some blendshape moves."""
        tpl, basis = self.template, self.template.expressions
        moved = basis.moved_vertices()
        slot = torch.full((tpl.vertices.shape[0],), -1, dtype=torch.long)
        slot[moved] = torch.arange(len(moved))
        local = slot[corners]  # N 3, -1 = not moved
        g = (local >= 0).any(1).nonzero()[:, 0]
        return {
            "basis": basis.dense(tpl.vertices.shape[0])[:, moved].to(dev),  # E M 3
            "gaussians": g.to(dev),
            "corners": torch.where(local[g] >= 0, local[g], len(moved)).to(dev),
            "bary": bary[g].to(dev),
            "rest": tpl.vertices[corners[g]].to(dev),
        }

    @property
    def num_expressions(self) -> int:
        """Blendshapes this animator can play (0 without any)."""
        return 0 if self.expression is None else self.expression["basis"].shape[0]

    def _posed_params(self, transforms: torch.Tensor, weights: torch.Tensor | None):
        m = self.model
        means, quats = m.means.detach(), self.quats
        if weights is not None and self.expression is not None:
            b = self.expression
            means, quats = blend_gaussians(
                means, quats, weights.to(means), b["basis"], b["gaussians"], b["corners"], b["bary"], b["rest"]
            )
        return lbs_gaussians(means, quats, self.weights, transforms.to(self.weights))

    @torch.no_grad()
    def pose(self, transforms: torch.Tensor, weights: torch.Tensor | None = None) -> PosedGaussians:
        """Posed Gaussians for joint transforms [J, 4, 4] (identity = the canonical A-pose) and blendshape
        weights [E] in the template's order (None or zeros = the neutral face)."""
        m = self.model
        x, q = self._posed_params(transforms, weights)
        return PosedGaussians(x, q, m.scales.detach(), m.opacities.detach(), m.colors.detach())

    @torch.no_grad()
    def colors(self, posed: PosedGaussians, c2w: torch.Tensor) -> torch.Tensor | None:
        """Per-view colours [B, N, 3] with specular highlights for the posed normals (None = the
        view-independent colour)."""
        if self.appearance is None:
            return None
        spec = self.appearance.specular(
            posed.means, posed.rotations, posed.scales, self.model.spec_features.detach(), c2w
        )
        return posed.colors[None] + spec

    @torch.no_grad()
    def export_ply(self, path: str | Path, transforms: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Write one posed frame (joint transforms [J, 4, 4], blendshape weights [E]) as a standard 3DGS PLY."""
        m = self.model
        x, q = self._posed_params(transforms, weights)
        params = m.numpy_params()
        params["means"], params["quats"] = x.cpu().numpy(), q.cpu().numpy()
        extra = {"spec": m.spec_features.detach().cpu().numpy()} if m.cfg.spec_feature_dim > 0 else None
        write_gaussian_ply(path, params, extra)
