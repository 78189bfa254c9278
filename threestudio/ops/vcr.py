"""View-consistent refinement (VCR, method §7) bookkeeping and math: the view roles on a turntable
ring, distance-guided fusion weights, the dependency tiers, the SDEdit DDIM grid, and the mutual /
fused attention of one self-attention layer.

Ring: n views (a multiple of 8) at azimuths ``-180 + 360 i / n``. Every n/8-th view is a 45° anchor:
the four *primary* views (front +90°, back -90°, the two sides 0° and ±180°) attend to themselves;
the four *key* views (±45°, ±135°) attend jointly to themselves and to the front view (+45°, +135°)
or the back view (-45°, -135°) ("mutual attention"); every other view blends its own attention with
that of its two neighbouring anchors, weighted by azimuth distance ("distance-guided attention
fusion", ``out = λ A_self + (1-λ)(w_a A_a + w_b A_b)``, w = 1 - Δ/45°).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from threestudio.utils.typing import Float, Tensor

SDEDIT_GRID = (142, 122, 101, 81, 61, 40, 20, 0)
"""Last 8 of ``flip(linspace(0, 999, 50))`` (method §7.2): the SDEdit start t = 142."""


def sdedit_timesteps(n_grid: int = 50, n_steps: int = 8, n_train: int = 1000) -> list[int]:
    """The reference's custom grid: the last ``n_steps`` of ``int(flip(linspace(0, n_train-1, n_grid)))``."""
    import numpy as np

    return [int(t) for t in np.flip(np.linspace(0, n_train - 1, n_grid).astype(np.int64))[-n_steps:]]


@dataclass
class ViewRole:
    index: int
    azimuth_deg: float
    kind: str  # "primary" | "key" | "between"
    partners: tuple = ()
    """Indices of the views it reads (key: the front/back view; between: its two anchors)."""
    weights: tuple = ()
    """Fusion weights of ``partners`` (between views only)."""


def ring_azimuths(n: int) -> list[float]:
    return [-180.0 + 360.0 * i / n for i in range(n)]


def view_roles(n: int) -> list[ViewRole]:
    """Roles of the n ring views (method §7.3 generalised to any multiple of 8).

    Raises:
        ValueError: n is not a positive multiple of 8.
    """
    if n <= 0 or n % 8:
        raise ValueError(f"the VCR ring needs a multiple of 8 views (45° anchors), got {n}")
    s = n // 8
    front, back = 6 * s, 2 * s  # +90°, -90°
    roles = []
    for i, az in enumerate(ring_azimuths(n)):
        if i % s == 0:
            a = i // s  # anchor number 0..7 at -180 + 45 a
            if a % 2 == 0:
                roles.append(ViewRole(i, az, "primary"))
            else:
                roles.append(ViewRole(i, az, "key", (front if az > 0 else back,)))
        else:
            lo = (i // s) * s
            hi = (lo + s) % n
            d = (i - lo) / s
            roles.append(ViewRole(i, az, "between", (lo, hi), (1.0 - d, d)))
    return roles


def tiers(n: int) -> list[list[int]]:
    """Dependency order: [primaries (front, back, sides)], [keys], [in-between views], without empty
    tiers (an 8-view ring has no in-between views). Views of one tier only read views of earlier
    tiers, so each tier can be denoised as one batch."""
    r = view_roles(n)
    prim = sorted((v.index for v in r if v.kind == "primary"), key=lambda i: (abs(r[i].azimuth_deg - 90.0), i))
    levels = [prim, [v.index for v in r if v.kind == "key"], [v.index for v in r if v.kind == "between"]]
    return [t for t in levels if t]


def ddim_step(x_t: Tensor, eps: Tensor, alpha_t: float | Tensor, alpha_prev: float | Tensor) -> Tensor:
    """Deterministic DDIM update (η = 0) between two arbitrary timesteps of a grid:
    ``x_prev = √ᾱ_prev x̂₀ + √(1-ᾱ_prev) ε`` with ``x̂₀ = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t``."""
    alpha_t = torch.as_tensor(alpha_t, dtype=x_t.dtype, device=x_t.device)
    alpha_prev = torch.as_tensor(alpha_prev, dtype=x_t.dtype, device=x_t.device)
    x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def attention(q: Float[Tensor, "B h Lq d"], k: Float[Tensor, "B h Lk d"], v: Float[Tensor, "B h Lk d"]) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def fused_attention(
    q: Tensor,
    k_self: Tensor,
    v_self: Tensor,
    k_a: Tensor,
    v_a: Tensor,
    k_b: Tensor,
    v_b: Tensor,
    w_a: Float[Tensor, " B"],
    w_b: Float[Tensor, " B"],
    lam: float,
) -> Tensor:
    """Distance-guided attention fusion: three separate softmaxes, outputs blended (method §7.4)."""
    w_a, w_b = w_a.view(-1, 1, 1, 1).to(q), w_b.view(-1, 1, 1, 1).to(q)
    return lam * attention(q, k_self, v_self) + (1 - lam) * (
        w_a * attention(q, k_a, v_a) + w_b * attention(q, k_b, v_b)
    )
