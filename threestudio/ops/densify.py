"""Pure densify/prune operations of 3DGS (Kerbl et al. 2023, §5.2; method §2.4).

Everything works on dicts of raw Gaussian parameters (``means``, ``f_dc``, ``f_rest``,
``opacity_logit``, ``log_scales``, ``quats``), so the same ops serve any optimiser wrapper.
"""

from __future__ import annotations

import math

import torch

from threestudio.ops.gaussians import quat_to_rotmat
from threestudio.utils.typing import Bool, Float, Tensor


def ndc_grad_norm(means2d_grad: Float[Tensor, "B N 2"], width: int, height: int) -> Float[Tensor, " N"]:
    """Norm of the view-summed screen-space mean gradient in NDC units (method §2.4).

    ``means2d_grad`` is dL/d(pixel position); NDC spans 2 over the image, so
    dL/d(ndc) = dL/d(pixel) * (W/2, H/2). The reference sums the batch views' gradients first.
    It must be the true gradient (no loss scaling): Lightning's 16-mixed GradScaler leaves it
    multiplied by ≥2^16 (method §12.2), which is why GPU runs use bf16 (no scaler).
    """
    g = means2d_grad.sum(0)
    grad_ndc = torch.stack([g[:, 0] * (width / 2.0), g[:, 1] * (height / 2.0)], -1)  # no host-to-device copy
    return grad_ndc.norm(dim=-1)


def densify_masks(
    grad_mean: Float[Tensor, " N"], max_scale: Float[Tensor, " N"], grad_threshold: float, scale_threshold: float
) -> tuple[Bool[Tensor, " N"], Bool[Tensor, " N"]]:
    """``(clone, split)``: large-gradient Gaussians that are small (clone) or large (split)."""
    hot = grad_mean >= grad_threshold
    return hot & (max_scale <= scale_threshold), hot & (max_scale > scale_threshold)


def cap_growth(
    grad_mean: Float[Tensor, " N"], clone: Bool[Tensor, " N"], split: Bool[Tensor, " N"], budget: int, n_split: int = 2
) -> tuple[Bool[Tensor, " N"], Bool[Tensor, " N"]]:
    """Keep the clone/split candidates with the largest mean gradient such that the count grows by at
    most ``budget`` (a clone adds 1 Gaussian, a split ``n_split - 1``); none when ``budget <= 0``."""
    add = clone.long() + split.long() * (n_split - 1)
    if int(add.sum()) <= budget:
        return clone, split
    if budget <= 0:
        return torch.zeros_like(clone), torch.zeros_like(split)
    cand = torch.nonzero(add > 0, as_tuple=True)[0]
    order = cand[torch.argsort(grad_mean[cand], descending=True, stable=True)]
    keep = order[torch.cumsum(add[order], 0) <= budget]
    sel = torch.zeros_like(clone)
    sel[keep] = True
    return clone & sel, split & sel


def split_children(
    params: dict[str, Tensor],
    mask: Bool[Tensor, " N"],
    n_children: int = 2,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Children of the masked Gaussians: centres sampled from the parent's Gaussian, scales divided by
    ``0.8 * n_children`` (3DGS), all other attributes copied. ``generator`` (on the parameters' device)
    draws the centres; None = PyTorch's global generator."""
    sel = {k: v[mask] for k, v in params.items()}
    scales = torch.exp(sel["log_scales"]).repeat(n_children, 1)
    noise = torch.randn(scales.shape, generator=generator, device=scales.device, dtype=scales.dtype)
    offsets = (quat_to_rotmat(sel["quats"]).repeat(n_children, 1, 1) @ (noise * scales)[..., None])[..., 0]
    out = {k: v.repeat(n_children, *([1] * (v.dim() - 1))) for k, v in sel.items()}
    out["means"] = out["means"] + offsets
    out["log_scales"] = out["log_scales"] - math.log(0.8 * n_children)
    return out


def prune_mask(
    opacity: Float[Tensor, " N"],
    max_scale: Float[Tensor, " N"],
    min_opacity: float,
    max_world_size: float | None = None,
    max_radii2d: Float[Tensor, " N"] | None = None,
    max_screen_size: float | None = None,
) -> Bool[Tensor, " N"]:
    """True for Gaussians to remove: transparent, too large in the world, or too large on screen."""
    m = opacity < min_opacity
    if max_world_size is not None:
        m = m | (max_scale > max_world_size)
    if max_screen_size is not None and max_radii2d is not None:
        m = m | (max_radii2d > max_screen_size)
    return m
