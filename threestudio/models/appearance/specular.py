"""View-dependent specular appearance (SpecularIP, method §10, done properly): every Gaussian carries
a latent feature; a small MLP maps it to L anisotropic spherical-Gaussian lobes (RGB amplitude, two
sharpnesses, a rotation of the lobe's tangent frame about the Gaussian's normal); the lobes are
evaluated at the reflection of the view direction about the normal and their sum is the specular
RGB added to the diffuse (SH) colour, per Gaussian and per view, before rasterisation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

import threestudio
from threestudio.ops.asg import asg, camera_directions, lobe_frames, normal_frames, reflect
from threestudio.utils.config import parse_structured
from threestudio.utils.io import atomic_path


@dataclass
class SpecularConfig:
    feature_dim: int = 32
    """Latent feature per Gaussian (stored in the PLY as spec_0..spec_{D-1})."""
    num_lobes: int = 4
    hidden_dim: int = 64
    max_sharpness: float = 64.0
    """Upper bound of both ASG sharpnesses (lobes from broad sheen to tight highlights)."""
    lr_network: float = 1.0e-3
    lr_features: float = 0.0125


@threestudio.register("asg-specular-appearance")
class SpecularAppearance(nn.Module):
    """``colors(model, c2w)`` -> [B, N, 3] diffuse + specular RGB for B cameras."""

    def __init__(self, cfg: dict | None = None):
        super().__init__()
        self.cfg = parse_structured(SpecularConfig, cfg)
        c = self.cfg
        self.mlp = nn.Sequential(nn.Linear(c.feature_dim, c.hidden_dim), nn.ReLU(),
                                 nn.Linear(c.hidden_dim, c.num_lobes * 6))
        with torch.no_grad():  # start nearly diffuse: small amplitudes
            self.mlp[-1].bias.view(c.num_lobes, 6)[:, :3] = -4.0

    def lobes(self, features: torch.Tensor) -> dict:
        """Per-Gaussian lobe parameters: amplitude [N, L, 3] >= 0, λ, μ [N, L] in (0, max], angle [N, L]."""
        p = self.mlp(features).view(features.shape[0], self.cfg.num_lobes, 6)
        s = self.cfg.max_sharpness
        return {"amplitude": F.softplus(p[..., :3]), "lam": s * torch.sigmoid(p[..., 3]) + 1e-3,
                "mu": s * torch.sigmoid(p[..., 4]) + 1e-3, "angle": torch.pi * torch.tanh(p[..., 5])}

    def specular(self, means, quats, scales, features, c2w) -> torch.Tensor:
        """Specular RGB [B, N, 3] for Gaussians (world-frame means, quats, activated scales)."""
        lob = self.lobes(features)
        n, t1, t2 = normal_frames(quats, scales)
        v = camera_directions(means, c2w)  # B N 3
        x, y, z = lobe_frames(n, t1, t2, v, lob["angle"])
        nz = z[:, :, 0]  # the camera-facing normal
        r = reflect(v, nz)[:, :, None, :].expand_as(x)
        g = asg(r, x, y, z, lob["lam"][None], lob["mu"][None])  # B N L
        return (g[..., None] * lob["amplitude"][None]).sum(2)

    def colors(self, model, c2w: torch.Tensor) -> torch.Tensor:
        base = model.colors
        return base[None] + self.specular(model.means, model.rotations, model.scales, model.spec_features, c2w)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.mlp.parameters()), "lr": self.cfg.lr_network, "name": "specular_mlp"}]

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"config": OmegaConf.to_container(self.cfg), "state_dict": self.state_dict()}, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "SpecularAppearance":
        d = torch.load(path, map_location="cpu", weights_only=False)
        m = cls(d["config"])
        m.load_state_dict(d["state_dict"])
        return m
