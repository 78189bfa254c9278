"""Normalisation functions written for the compiler, same math as PyTorch's.

* :func:`group_norm_channel_stats`: GroupNorm (Wu & He, ECCV 2018, Eq. 1-2) computed from
  per-channel spatial statistics, so that a compiler's reductions run along the spatial axes only.
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor


# runs inside compiled code that is saved to disk (threestudio.utils.aot): no test-time type-check
# wrapper, whose memo stack is Python state that a saved function cannot replay
@typing.no_type_check
def group_norm_channel_stats(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """``torch.nn.functional.group_norm`` computed from per-channel statistics.

    GroupNorm (Wu & He 2018, Eq. 1-2) normalises each group of ``C / num_groups`` channels by the
    mean and the biased variance over the group's channels and all spatial positions. Here the mean
    and variance of each channel over the spatial axes come first (one Welford pass per channel, in
    fp32), and the group's statistics follow exactly from them, as the channels of a group hold the
    same number of values (law of total variance):

        mean_g = mean_c(mean_c),   var_g = mean_c(var_c) + mean_c((mean_c - mean_g)²).

    The output is ``x · a + b`` per channel, with ``a = γ / sqrt(var_g + eps)`` and ``b = β - a · mean_g``,
    computed in fp32 and cast back to ``x.dtype`` (as PyTorch's CUDA kernel does).

    Why: a channels-last tensor keeps one pixel's channels together, so a group's values (a few
    channels of every pixel) are scattered in memory; reducing each channel over the pixels reads
    whole pixel rows instead. In the VAE encoder compiled by Inductor with channels-last activations
    this turns its slowest GroupNorm kernels into coalesced ones. Same function, different rounding
    (fp32 accumulation either way). Runs inside ``torch.compile``d networks, so its annotations are
    plain ``Tensor`` (no run-time shape checking there).

    Args:
        x: [B, C, *S] input, any float dtype and memory layout; at least one spatial axis.
        num_groups: G, which divides C.
        weight, bias: [C] affine parameters γ, β, or None (identity).
        eps: added to the group variance.

    Returns:
        [B, C, *S] tensor of ``x``'s dtype.

    Raises:
        ValueError: ``x`` has no spatial axis or ``num_groups`` does not divide C.
    """
    if x.dim() < 3:
        raise ValueError(f"group_norm_channel_stats: x must be [B, C, *spatial], got shape {tuple(x.shape)}")
    B, C = x.shape[:2]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm_channel_stats: {num_groups} groups do not divide {C} channels")
    var_c, mean_c = torch.var_mean(x.float(), dim=tuple(range(2, x.dim())), correction=0)  # [B, C]
    mean_c, var_c = mean_c.view(B, num_groups, -1), var_c.view(B, num_groups, -1)
    mean_g = mean_c.mean(-1, keepdim=True)
    var_g = var_c.mean(-1, keepdim=True) + (mean_c - mean_g).square().mean(-1, keepdim=True)
    a = torch.rsqrt(var_g + eps).expand(B, num_groups, C // num_groups)
    if weight is not None:
        a = a * weight.float().view(num_groups, -1)
    b = -a * mean_g
    if bias is not None:
        b = b + bias.float().view(num_groups, -1)
    shape = (B, C) + (1,) * (x.dim() - 2)
    return (x.float() * a.reshape(shape) + b.reshape(shape)).to(x.dtype)
