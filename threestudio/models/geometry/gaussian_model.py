"""3D Gaussians initialised on a body template (method §2.2) with per-attribute learning rates
(method §2.3) and standard 3DGS PLY import/export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import threestudio
from threestudio.models.body.template import BodyTemplate, sample_surface
from threestudio.ops.gaussians import (
    inverse_sigmoid,
    knn_isotropic_log_scale,
    rgb_to_sh0,
    sh0_to_rgb,
)
from threestudio.utils.base import BaseModule
from threestudio.utils.ply import read_gaussian_ply, write_gaussian_ply
from threestudio.utils.typing import Float, Tensor

PARAM_NAMES = ("means", "f_dc", "f_rest", "opacity_logit", "log_scales", "quats")


@threestudio.register("body-gaussian-geometry")
class GaussianModel(BaseModule):
    """N Gaussians stored as raw parameters (``nn.Parameter``, so they live in checkpoints):

    * ``means`` [N, 3] world positions (template frame, normalised body units);
    * ``f_dc`` [N, 3] SH degree-0 colour, ``f_rest`` [N, (d+1)²-1, 3] higher SH bands;
    * ``opacity_logit`` [N] (opacity = sigmoid), ``log_scales`` [N, 3] (scale = exp),
      ``quats`` [N, 4] (w, x, y, z; normalised on use).
    """

    @dataclass
    class Config:
        num_points: int = 100_000
        """Surface samples at initialisation (method §2.2)."""
        sh_degree: int = 0
        """Spherical-harmonics degree of the colour (method §2.2: 0, view-independent)."""
        init_color: float = 0.5
        """Grey level of every Gaussian at start (SH DC = RGB2SH(0.5) = 0)."""
        init_opacity: float = 0.1
        """Opacity of every Gaussian at start (method §2.2)."""
        knn: int = 3
        """Nearest neighbours whose mean squared distance sets the initial isotropic scale (method §2.2)."""
        seed: int = 0
        """Seed of the surface sampling."""
        spatial_lr_scale: float = 4.0
        """Camera extent of the reference; multiplies the position learning rate (method §2.3)."""
        lr_means: float = 5.0e-5
        """Initial Adam learning rate of the centres (times ``spatial_lr_scale``; method §2.3)."""
        lr_means_final: float = 2.5e-5
        """Learning rate of the centres at ``lr_means_max_steps`` (log-linear decay)."""
        lr_means_max_steps: int = 30_000
        """Log-linear decay horizon of the position lr (the reference never reaches its end)."""
        lr_f_dc: float = 0.0125
        """Adam learning rate of the SH DC colour (method §2.3)."""
        lr_f_rest: float = 0.0125 / 20
        """Adam learning rate of the higher SH bands."""
        lr_opacity: float = 0.01
        """Adam learning rate of the opacity logits."""
        lr_scales: float = 0.005
        """Adam learning rate of the log-scales."""
        lr_quats: float = 0.001
        """Adam learning rate of the rotation quaternions."""
        spec_feature_dim: int = 0
        """Latent specular feature per Gaussian (0 = diffuse only; the specular preset sets 32)."""
        lr_spec_features: float = 0.0125
        """Adam learning rate of the specular features."""

    def configure(self) -> None:
        n = 1
        k = (self.cfg.sh_degree + 1) ** 2 - 1
        self.means = nn.Parameter(torch.zeros(n, 3))
        self.f_dc = nn.Parameter(torch.zeros(n, 3))
        self.f_rest = nn.Parameter(torch.zeros(n, k, 3))
        self.opacity_logit = nn.Parameter(torch.zeros(n))
        self.log_scales = nn.Parameter(torch.zeros(n, 3))
        self.quats = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        if self.cfg.spec_feature_dim > 0:
            self.spec_features = nn.Parameter(torch.zeros(n, self.cfg.spec_feature_dim))

    @property
    def param_names(self) -> tuple[str, ...]:
        """Per-Gaussian parameters (densify/prune edits all of them)."""
        return PARAM_NAMES + (("spec_features",) if self.cfg.spec_feature_dim > 0 else ())

    # ----------------------------------------------------------------- construction
    def init_from_template(self, template: BodyTemplate) -> GaussianModel:
        """Sample ``num_points`` Gaussians on the template surface (method §2.2)."""
        pts, _, _ = sample_surface(template, self.cfg.num_points, seed=self.cfg.seed)
        n = pts.shape[0]
        self.set_params(
            {
                "means": pts,
                "f_dc": rgb_to_sh0(torch.full((n, 3), self.cfg.init_color)),
                "f_rest": torch.zeros(n, (self.cfg.sh_degree + 1) ** 2 - 1, 3),
                "opacity_logit": inverse_sigmoid(torch.full((n,), self.cfg.init_opacity)),
                "log_scales": knn_isotropic_log_scale(pts, self.cfg.knn),
                "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
                **(
                    {
                        "spec_features": 0.1
                        * torch.randn(
                            n, self.cfg.spec_feature_dim, generator=torch.Generator().manual_seed(self.cfg.seed)
                        )
                    }
                    if self.cfg.spec_feature_dim > 0
                    else {}
                ),
            }
        )
        return self

    def set_params(self, params: dict[str, Tensor]) -> None:
        """Replace all parameters (new ``nn.Parameter`` objects; rebuild optimisers after)."""
        dev = self.means.device
        for name in self.param_names:
            setattr(self, name, nn.Parameter(torch.as_tensor(params[name], dtype=torch.float32).to(dev).contiguous()))

    @property
    def num_points(self) -> int:
        return self.means.shape[0]

    # ----------------------------------------------------------------- activations
    @property
    def opacities(self) -> Float[Tensor, " N"]:
        return torch.sigmoid(self.opacity_logit)

    @property
    def scales(self) -> Float[Tensor, "N 3"]:
        return torch.exp(self.log_scales)

    @property
    def rotations(self) -> Float[Tensor, "N 4"]:
        return F.normalize(self.quats, dim=-1)

    @property
    def colors(self) -> Float[Tensor, "N 3"]:
        """View-independent RGB from the SH DC term (SH degree 0, method §2.2)."""
        return sh0_to_rgb(self.f_dc)

    # ----------------------------------------------------------------- optimisation
    def param_groups(self) -> list[dict]:
        """Adam parameter groups with the learning rates of method §2.3 (eps 1e-15 set by caller)."""
        c = self.cfg
        return [
            {"params": [self.means], "lr": c.lr_means * c.spatial_lr_scale, "name": "means"},
            {"params": [self.f_dc], "lr": c.lr_f_dc, "name": "f_dc"},
            {"params": [self.f_rest], "lr": c.lr_f_rest, "name": "f_rest"},
            {"params": [self.opacity_logit], "lr": c.lr_opacity, "name": "opacity_logit"},
            {"params": [self.log_scales], "lr": c.lr_scales, "name": "log_scales"},
            {"params": [self.quats], "lr": c.lr_quats, "name": "quats"},
        ] + (
            [{"params": [self.spec_features], "lr": c.lr_spec_features, "name": "spec_features"}]
            if c.spec_feature_dim > 0
            else []
        )

    def means_lr(self, step: int) -> float:
        """Log-linear position lr (3DGS ``get_expon_lr_func`` without delay)."""
        c = self.cfg
        t = min(max(step / max(c.lr_means_max_steps, 1), 0.0), 1.0)
        lr0, lr1 = c.lr_means * c.spatial_lr_scale, c.lr_means_final * c.spatial_lr_scale
        return float(np.exp(np.log(lr0) * (1 - t) + np.log(lr1) * t))

    # ----------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The Gaussian count changes with densification: resize before the copy so that a
        # checkpoint of any size loads (resume, method §12.15).
        for name in self.param_names:
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, nn.Parameter(torch.empty_like(state_dict[key], device=self.means.device)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- PLY
    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().float().cpu().numpy() for k in PARAM_NAMES}

    def save_ply(self, path: str | Path, extra: dict | None = None, writer=None) -> None:
        """Write a standard 3DGS PLY (see :mod:`threestudio.utils.ply`) atomically; specular features,
        if any, as the extra properties ``spec_0..spec_{D-1}`` (ignored by other 3DGS tools). With a
        ``writer`` (:class:`~threestudio.utils.io.BackgroundWriter`) the Gaussians are copied to host
        memory now and the file is written on its worker thread (``writer.wait()`` finishes it)."""
        extra = dict(extra or {})
        if self.cfg.spec_feature_dim > 0:
            extra["spec"] = self.spec_features.detach().float().cpu().numpy()
        args = (path, self.numpy_params(), extra)
        if writer is None:
            write_gaussian_ply(*args)
        else:
            writer.submit(write_gaussian_ply, *args)

    def load_ply(self, path: str | Path) -> dict:
        """Load Gaussians from a 3DGS PLY; returns the extra per-vertex properties.

        Raises:
            UserError: not a 3DGS PLY, or its SH degree / specular features do not match the config.
        """
        params, extra = read_gaussian_ply(path)
        self.load_params(params, extra, str(path))
        return extra

    def load_params(self, params: dict[str, np.ndarray], extra: dict[str, np.ndarray], source: str = "PLY") -> None:
        """Set the Gaussians from :func:`read_gaussian_ply` output (``spec_*`` extras become the
        specular features when ``cfg.spec_feature_dim`` > 0; ``params`` may already hold them).

        Raises:
            UserError: the SH degree or the specular feature count does not match the config.
        """
        from threestudio.utils.errors import UserError

        k = (self.cfg.sh_degree + 1) ** 2 - 1
        if params["f_rest"].shape[1] != k:
            raise UserError(
                f"{source}: has {params['f_rest'].shape[1]} f_rest bands per channel, this "
                f"model expects SH degree {self.cfg.sh_degree} ({k}); set "
                "system.geometry.sh_degree accordingly"
            )
        d = self.cfg.spec_feature_dim
        if d > 0 and "spec_features" not in params:
            spec = sorted([k_ for k_ in extra if k_.startswith("spec_")], key=lambda q: int(q.split("_")[1]))
            if len(spec) != d:
                raise UserError(
                    f"{source}: has {len(spec)} specular features per Gaussian, expected {d} "
                    "(a diffuse-only PLY loads with system.geometry.spec_feature_dim=0)"
                )
            params = {**params, "spec_features": np.stack([extra[k_] for k_ in spec], 1).astype(np.float32)}
        self.set_params({k_: torch.as_tensor(v) for k_, v in params.items()})


@dataclass
class PosedGaussians:
    """The attributes a renderer reads, activated (a posed animation frame, world frame): ``means`` [N, 3],
    ``rotations`` [N, 4] unit (w, x, y, z), ``scales`` [N, 3] world units, ``opacities`` [N] in (0, 1),
    ``colors`` [N, 3] RGB. A :class:`GaussianModel` offers the same attributes."""

    means: torch.Tensor
    rotations: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
