"""Skinning a Gaussian avatar with a body template and rendering / exporting the posed frames."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from threestudio.models.body.template import BodyTemplate
from threestudio.models.geometry.gaussian_model import GaussianModel, PosedGaussians
from threestudio.ops.lbs import lbs_gaussians, smooth_weights, surface_skinning_weights
from threestudio.utils.ply import write_gaussian_ply


class GaussianAnimator:
    """Binds a :class:`GaussianModel` (trained on ``template``'s A-pose) to the template's skeleton.

    Each Gaussian's skinning weights are interpolated at its closest point on the template surface
    and smoothed over its nearest Gaussians; :meth:`pose` applies LBS to centres and rotations.
    """

    def __init__(
        self, model: GaussianModel, template: BodyTemplate, smooth_k: int = 8, smooth_iters: int = 2, appearance=None
    ):
        self.model, self.template, self.appearance = model, template, appearance
        dev = model.means.device
        V, J = template.vertices.shape[0], template.joints.shape[0]
        W = torch.zeros(V, J).scatter_(1, template.skin_indices, template.skin_weights)
        w, self.surface_distance = surface_skinning_weights(
            model.means.detach().cpu(), template.vertices, template.faces, W
        )
        if smooth_iters > 0 and model.num_points > smooth_k:
            w = smooth_weights(model.means.detach().cpu(), w, smooth_k, smooth_iters)
        self.weights = w.to(dev)
        self.quats = F.normalize(model.quats.detach(), dim=-1)

    @torch.no_grad()
    def pose(self, transforms: torch.Tensor) -> PosedGaussians:
        """Posed Gaussians for joint transforms [J, 4, 4] (identity = the canonical A-pose)."""
        m = self.model
        x, q = lbs_gaussians(m.means.detach(), self.quats, self.weights, transforms.to(self.weights))
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
    def export_ply(self, path: str | Path, transforms: torch.Tensor) -> None:
        """Write one posed frame as a standard 3DGS PLY."""
        m = self.model
        x, q = lbs_gaussians(m.means.detach(), self.quats, self.weights, transforms.to(self.weights))
        params = m.numpy_params()
        params["means"], params["quats"] = x.cpu().numpy(), q.cpu().numpy()
        extra = {"spec": m.spec_features.detach().cpu().numpy()} if m.cfg.spec_feature_dim > 0 else None
        write_gaussian_ply(path, params, extra)
