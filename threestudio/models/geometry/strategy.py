"""Densify/prune strategy (gsplat style: a policy dataclass + the pure ops of ``ops/densify.py``).

Which Gaussians grow (``select``):

* ``visible`` (default, the reference's *effective* behaviour, kept on purpose, method §2.4): every
  Gaussian that was seen with a non-zero gradient since the last event is cloned (small) or split
  (large). The reference compared its 2e-4 threshold with screen-space gradients still multiplied by
  fp16's loss scale (>= 2^16), i.e. with ~3e-9 in true units, so in effect it densified nearly every
  visible Gaussian at 500/1000/1500; GaussianIP's published avatars were made that way, and a
  threshold on true gradients would need re-tuning with the real weights, which we cannot do here.
* ``gradient``: 3DGS's rule (Kerbl et al. 2023, §5.2) on the true, unscaled gradients.

Either way the count is capped at ``max_points`` (the candidates with the largest mean gradient win)
and every event reports its counts. Other fixes (method §12.2, §12.4): the configured opacity
thresholds are used as given; prune-only events fire on their schedule; optimiser moments are carried
over for kept Gaussians and zero for new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from omegaconf import DictConfig

from threestudio.models.geometry.gaussian_model import GaussianModel
from threestudio.ops.densify import cap_growth, densify_masks, ndc_grad_norm, prune_mask, split_children
from threestudio.utils.config import parse_structured


class DensifySelect(str, Enum):
    """Which Gaussians an event densifies (see the module docstring)."""

    visible = "visible"
    gradient = "gradient"


@dataclass
class DensifyPolicy:
    densify_steps: list = field(default_factory=lambda: [500, 1000, 1500])
    """Steps at which clone/split + prune run (reference: every 500 in (200, 1700))."""
    prune_steps: list = field(default_factory=lambda: [1800])
    """Steps of prune-only events (reference: 1800)."""
    stats_until: int = 1900
    """Accumulate gradient statistics up to this step."""
    select: DensifySelect = DensifySelect.visible
    """``visible``: densify every Gaussian seen with a non-zero gradient (the reference's effective
    behaviour, see the module docstring); ``gradient``: only those above ``grad_threshold``."""
    grad_threshold: float = 2.0e-4
    """Mean NDC gradient norm above which a Gaussian is densified (``select: gradient``)."""
    percent_dense: float = 0.01
    """Clone/split boundary as a fraction of ``scene_extent`` (3DGS)."""
    scene_extent: float = 4.0
    """Clone if max scale <= percent_dense * scene_extent, else split (0.04 world units)."""
    n_split: int = 2
    """Children per split Gaussian (3DGS: 2)."""
    densify_min_opacity: float = 0.05
    """Densify events also prune Gaussians below this opacity."""
    prune_min_opacity: float = 0.04
    """Prune-only events remove Gaussians below this opacity."""
    prune_max_world_size: float = 0.015
    """Prune-only: remove Gaussians whose largest scale exceeds this (world units); <=0 disables."""
    max_screen_size: float = 0.0
    """Also prune Gaussians whose 2-D radius exceeded this many pixels; 0 disables (reference)."""
    seed: int = 0
    """Seed of the split children's centres; each event draws from its own generator seeded with it and
    the step, so every replica of a data-parallel run (and a resumed run) draws the same ones."""
    max_points: int = 1_000_000
    """Cap on the Gaussian count: an event grows at most up to it, the candidates with the largest mean
    gradient first. Sized so that every stage at paper settings stays within 24 GB (bench/full_pipeline.py)."""


class DensifyStrategy:
    """Accumulates statistics after each backward and edits the model + Adam state at events."""

    def __init__(self, cfg: dict | DictConfig | None = None):
        self.cfg = parse_structured(DensifyPolicy, cfg)
        self.reset(0)

    def reset(self, n: int, device=None) -> None:
        self.grad_accum = torch.zeros(n, device=device)
        self.denom = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    def collects(self, step: int) -> bool:
        """Whether :meth:`accumulate` uses the statistics of ``step``."""
        return step <= self.cfg.stats_until

    @torch.no_grad()
    def accumulate(self, step: int, means2d_grad, radii, width: int, height: int) -> None:
        """Add one step's statistics. ``means2d_grad`` [B, N, 2] dL/d(pixel), ``radii`` [B, N] (B may be 1:
        the view-summed gradient and the view-wise maximum radii of a data-parallel step)."""
        if not self.collects(step) or means2d_grad is None:
            return
        n = radii.shape[1]
        if self.grad_accum.shape[0] != n:
            self.reset(n, radii.device)
        vis = (radii > 0).any(0)
        grad_norm = ndc_grad_norm(means2d_grad.float(), width, height)
        # masked updates without boolean indexing: no host synchronisation inside the training step
        self.grad_accum += torch.where(vis, grad_norm, 0.0)
        self.denom += vis.float()
        self.max_radii = torch.where(vis, torch.maximum(self.max_radii, radii.max(0).values.float()), self.max_radii)

    @torch.no_grad()
    def step(self, step: int, model: GaussianModel, optimizer) -> dict:
        """Run the densify / prune event scheduled at ``step`` (if any). Returns counts for logging."""
        c = self.cfg
        info = {}
        if step in c.densify_steps and self.denom.shape[0] == model.num_points:
            grad_mean = torch.nan_to_num(self.grad_accum / self.denom.clamp_min(1))
            grad_mean[self.denom == 0] = 0
            params = {k: getattr(model, k).detach() for k in model.param_names}
            max_scale = torch.exp(params["log_scales"]).max(-1).values
            # visible: any non-zero gradient (the smallest positive float as threshold)
            thr = c.grad_threshold if c.select is DensifySelect.gradient else float(torch.finfo(torch.float32).tiny)
            clone, split = densify_masks(grad_mean, max_scale, thr, c.percent_dense * c.scene_extent)
            clone, split = cap_growth(grad_mean, clone, split, c.max_points - model.num_points, c.n_split)
            gen = torch.Generator(device=model.means.device).manual_seed(c.seed * 1_000_003 + step)
            children = split_children(params, split, c.n_split, gen)
            new = {k: torch.cat([params[k][clone], v]) for k, v in children.items()}
            keep = ~split
            _edit(model, optimizer, keep, new)
            n_after_grow = model.num_points
            opac = torch.sigmoid(model.opacity_logit.detach())
            radii = torch.cat([self.max_radii[keep], torch.zeros(new["means"].shape[0], device=opac.device)])
            pm = prune_mask(
                opac,
                torch.exp(model.log_scales.detach()).max(-1).values,
                c.densify_min_opacity,
                None,
                radii,
                c.max_screen_size or None,
            )
            _edit(model, optimizer, ~pm, None)
            info = {
                "cloned": int(clone.sum()),
                "split": int(split.sum()),
                "pruned": int(pm.sum()),
                "grown_to": n_after_grow,
                "points": model.num_points,
                "cap": c.max_points,
            }
            self.reset(model.num_points, model.means.device)
        elif step in c.prune_steps:
            opac = torch.sigmoid(model.opacity_logit.detach())
            pm = prune_mask(
                opac,
                torch.exp(model.log_scales.detach()).max(-1).values,
                c.prune_min_opacity,
                c.prune_max_world_size if c.prune_max_world_size > 0 else None,
            )
            _edit(model, optimizer, ~pm, None)
            info = {"pruned": int(pm.sum()), "points": model.num_points}
            self.reset(model.num_points, model.means.device)
        return info


def gaussian_adam(groups: list[dict], fused: bool | None = None) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) over the Gaussian parameter groups, as 3DGS trains them: ``lr`` per
    group (the groups carry it; 0 as the default), ``eps`` 1e-15, the betas at PyTorch's (0.9, 0.999).

    ``fused`` None = PyTorch's fused kernel when every parameter is on CUDA (one kernel per group and
    step instead of a dozen elementwise passes of the multi-tensor implementation; the same update
    rule, equal up to float rounding: ``tests/models/geometry/test_strategy.py``), otherwise PyTorch's
    default implementation. Densify events edit its state as that of any Adam (:func:`_edit`).

    Raises:
        RuntimeError: (PyTorch's) ``fused`` is True and a parameter is on a device without a fused Adam.
    """
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=fused or None)


def _edit(model: GaussianModel, optimizer, keep: torch.Tensor, new: dict | None) -> None:
    """Keep ``keep``-masked Gaussians, append ``new`` ones; carry Adam moments (zeros for new)."""
    by_param = {}
    if optimizer is not None:
        for group in optimizer.param_groups:
            p = group["params"][0]
            by_param[id(p)] = group
    for name in model.param_names:
        old = getattr(model, name)
        data = old.detach()[keep]
        if new is not None:
            data = torch.cat([data, new[name].to(data)])
        p_new = torch.nn.Parameter(data.contiguous())
        group = by_param.get(id(old))
        if group is not None:
            state = optimizer.state.pop(old, None)
            group["params"][0] = p_new
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        s = state[key][keep]
                        if new is not None:
                            s = torch.cat([s, torch.zeros_like(new[name]).to(s)])
                        state[key] = s.contiguous()
                optimizer.state[p_new] = state
        setattr(model, name, p_new)
