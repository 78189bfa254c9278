"""View-dependent specular appearance (SpecularIP's idea, method §10, built as in Spec-Gaussian, Yang et
al. 2024): every Gaussian carries a latent feature; a small MLP maps it to L anisotropic spherical-
Gaussian lobes, each with a bounded RGB amplitude, two sharpnesses, its own axis in the Gaussian's local
frame (tangents t1, t2 and normal n = the shortest axis, turned to face the camera) and a twist of its
tangent axes. The lobes are evaluated at the reflection of the view direction about the normal and
their sum is the specular RGB added to the diffuse (SH) colour, per Gaussian and per view, before
rasterisation. See :mod:`threestudio.ops.asg` for why the lobe axes must not be the normal.

Files: the network is saved beside the avatar as ``avatar.specular.safetensors`` (weights + the config
as JSON metadata; loading never runs code). The feature vectors live in the PLY (``spec_*``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

import threestudio
from threestudio.ops.asg import asg, camera_directions, facing_frames, lobe_frames, normal_frames, reflect
from threestudio.utils.config import parse_structured
from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path

FILE_SUFFIX = ".specular.safetensors"
FORMAT = "gaussianip-asg-specular"
FORMAT_VERSION = "2"
"""2: lobe axes in the local frame (this module). 1 was ``avatar.specular.pt`` with normal-aligned lobes."""
PARAMS_PER_LOBE = 9  # rgb amplitude 3, sharpness 2, axis 3, twist 1


@threestudio.register("asg-specular-appearance")
class SpecularAppearance(nn.Module):
    """``colors(model, c2w)`` -> [B, N, 3] diffuse + specular RGB for B cameras."""

    @dataclass
    class Config:
        feature_dim: int = 32
        """Latent feature per Gaussian (stored in the PLY as spec_0..spec_{D-1})."""
        num_lobes: int = 4
        """Anisotropic spherical-Gaussian lobes L per Gaussian."""
        hidden_dim: int = 64
        """Width of the MLP's hidden layer."""
        max_sharpness: float = 64.0
        """Upper bound of both ASG sharpnesses (lobes from broad sheen to tight highlights)."""
        max_amplitude: float = 1.0
        """Upper bound of the summed specular RGB (each lobe's amplitude is at most max_amplitude / L per
        channel): highlights can reach white on a mid-grey surface but not blow up."""
        lr_network: float = 1.0e-3
        """Adam learning rate of the MLP."""

    def __init__(self, cfg: dict | DictConfig | None = None):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        c = self.cfg
        self.mlp = nn.Sequential(
            nn.Linear(c.feature_dim, c.hidden_dim), nn.ReLU(), nn.Linear(c.hidden_dim, c.num_lobes * PARAMS_PER_LOBE)
        )
        with torch.no_grad():  # start nearly diffuse: small amplitudes; lobe axes near the normal
            b = self.mlp[-1].bias.view(c.num_lobes, PARAMS_PER_LOBE)
            b[:, :3] = -4.0
            b[:, 5:8] = torch.tensor([0.0, 0.0, 1.0])

    def lobes(self, features: torch.Tensor) -> dict:
        """Per-Gaussian lobe parameters: ``amplitude`` [N, L, 3] in [0, max_amplitude / L], ``lam``,
        ``mu`` [N, L] in (0, max_sharpness], ``axis`` [N, L, 3] unit (local frame), ``twist`` [N, L]."""
        c = self.cfg
        p = self.mlp(features).view(features.shape[0], c.num_lobes, PARAMS_PER_LOBE)
        s = c.max_sharpness
        return {
            "amplitude": (c.max_amplitude / c.num_lobes) * torch.sigmoid(p[..., :3]),
            "lam": s * torch.sigmoid(p[..., 3]) + 1e-3,
            "mu": s * torch.sigmoid(p[..., 4]) + 1e-3,
            "axis": F.normalize(p[..., 5:8], dim=-1, eps=1e-6),
            "twist": torch.pi * torch.tanh(p[..., 8]),
        }

    def specular(self, means, quats, scales, features, c2w) -> torch.Tensor:
        """Specular RGB [B, N, 3] for Gaussians (world-frame means [N, 3], quats [N, 4], activated
        scales [N, 3], features [N, D]) seen from cameras ``c2w`` [B, 4, 4]."""
        lob = self.lobes(features)
        n, t1, t2 = normal_frames(quats, scales)
        v = camera_directions(means, c2w)  # B N 3
        n, t1, t2 = facing_frames(n, t1, t2, v)
        x, y, z = lobe_frames(n, t1, t2, lob["axis"], lob["twist"])
        r = reflect(v, n)[:, :, None, :]
        response = asg(r, x, y, z, lob["lam"][None], lob["mu"][None])  # B N L
        return (response[..., None] * lob["amplitude"][None]).sum(2)

    def colors(self, model, c2w: torch.Tensor) -> torch.Tensor:
        base = model.colors
        return base[None] + self.specular(model.means, model.rotations, model.scales, model.spec_features, c2w)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.mlp.parameters()), "lr": self.cfg.lr_network, "name": "specular_mlp"}]

    def save(self, path: str | Path) -> None:
        """Write the network as safetensors (config in the metadata), atomically."""
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": json.dumps(OmegaConf.to_container(self.cfg))}
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, tmp, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> SpecularAppearance:
        """Read a network written by :meth:`save` (no code is run: safetensors + JSON).

        Raises:
            UserError: not a safetensors file of this format (e.g. a pickle), or its weights do not
                match its config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(
                f"{path}: not a specular network file (expected safetensors written by this tool; "
                f"nothing in it was run): {e}"
            ) from None
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise UserError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file (metadata {meta})")
        m = cls(json.loads(meta["config"]))
        try:
            m.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{path}: weights do not match its config: {str(e).splitlines()[0]}") from None
        return m
