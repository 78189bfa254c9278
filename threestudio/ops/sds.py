"""Score distillation math of GaussianIP stage 1 ("AHDS", method §6).

* :func:`fit_ahds_prior` / :func:`ahds_tau_schedule` / :func:`ahds_window`: the annealed timestep
  schedule (DreamTime-style monotone schedule from a fitted asymmetric Gaussian prior + piecewise
  lower bounds), derived from the configured number of steps instead of hard-wired to 2400
  (fix of method §12.5) and solved exactly by cumulative tail sums.
* :func:`anpg_gradient`: HumanGaussian's annealed negative prompt guidance (NFSD, Katzir et al.
  2024, Eq. 6) as GaussianIP uses it (method §6.1 step 5).
* :func:`clip_grad_per_pixel`: latent-gradient clipping per latent pixel over channels (the
  reference clipped along the latent width: method §12.7).
* :func:`sds_loss`: a loss whose gradient w.r.t. the latents is ``g / B``.
"""

from __future__ import annotations

import numpy as np
import torch

from threestudio.utils.typing import Float, Int, Tensor

AHDS_TARGET_MASSES = (0.41, 0.21, 0.375)
AHDS_EDGES = (0, 350, 450, 800)
REFERENCE_STEPS = 2400
"""Step count the reference schedule was designed for; window boundaries scale from it."""
REFERENCE_WINDOW_STEPS = (700, 900, 1400)
WINDOW_LOWER_T = (500, 400, 150, 20)


def dual_gaussian_pdf(T: float, s1: float, s2: float, max_t: int = 800) -> np.ndarray:
    """Asymmetric Gaussian prior over t in {0..max_t-1}, normalised to sum 1 (method §6.2 step 1)."""
    t = np.arange(max_t, dtype=np.float64)
    w = np.where(t <= T, np.exp(-((t - T) ** 2) / (2 * s1**2)), np.exp(-((t - T) ** 2) / (2 * s2**2)))
    return w / w.sum()


def window_masses(w: np.ndarray, edges=AHDS_EDGES) -> np.ndarray:
    return np.array([w[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])


def fit_ahds_prior(
    targets=AHDS_TARGET_MASSES,
    edges=AHDS_EDGES,
    init=(260.0, 60.0, 280.0),
    bounds=((200.0, 400.0), (20.0, 100.0), (100.0, 300.0)),
) -> tuple[float, float, float]:
    """Fit (T, σ₁, σ₂) so the prior's masses over ``edges`` match ``targets`` (L-BFGS-B, method §6.2
    step 2; the reference's (1, 3)-shaped x0 fails on SciPy >= 1.11, here x0 is 1-D)."""
    from scipy.optimize import minimize

    def loss(x):
        return float(((window_masses(dual_gaussian_pdf(*x, max_t=edges[-1]), edges) - np.asarray(targets)) ** 2).sum())

    res = minimize(loss, np.asarray(init, dtype=np.float64), method="L-BFGS-B", bounds=bounds)
    T, s1, s2 = (float(v) for v in res.x)
    return T, s1, s2


def ahds_tau_schedule(n_steps: int, prior: np.ndarray) -> Int[Tensor, " n_steps"]:
    """Monotone schedule ``τ(i) = argmin_t |Σ_{u≥t} W(u) − i/N|`` for i = 0..N-1 (method §6.2 step 3).

    Raises:
        ValueError: ``n_steps`` < 1.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    tail = np.cumsum(prior[::-1])[::-1]  # tail[t] = sum_{u >= t} W(u), decreasing in t
    targets = np.arange(n_steps, dtype=np.float64) / n_steps
    tau = np.abs(tail[None, :] - targets[:, None]).argmin(axis=1)
    return torch.from_numpy(tau.astype(np.int64))


def ahds_window(step: int, n_steps: int, tau: int, max_t: int = 800) -> tuple[int, int]:
    """Inclusive timestep window ``[lo, hi]`` for a training step (method §6.2 table).

    The step boundaries 700/900/1400 of the 2400-step reference scale with ``n_steps``.
    """
    b1, b2, b3 = (b * n_steps / REFERENCE_STEPS for b in REFERENCE_WINDOW_STEPS)
    if step < b1:
        lo, hi = WINDOW_LOWER_T[0], max_t - 1
    else:
        lo = WINDOW_LOWER_T[1] if step < b2 else WINDOW_LOWER_T[2] if step < b3 else WINDOW_LOWER_T[3]
        hi = int(tau) + 49
    hi = min(max(hi, lo), max_t - 1)
    return lo, hi


class AHDSSchedule:
    """Precomputed AHDS schedule for ``n_steps`` training steps."""

    def __init__(self, n_steps: int, max_t: int = 800):
        self.n_steps, self.max_t = int(n_steps), max_t
        self.params = fit_ahds_prior()
        self.prior = dual_gaussian_pdf(*self.params, max_t=max_t)
        self.tau = ahds_tau_schedule(self.n_steps, self.prior)

    def window(self, step: int) -> tuple[int, int]:
        s = min(max(int(step), 0), self.n_steps - 1)
        return ahds_window(s, self.n_steps, int(self.tau[s]), self.max_t)

    def sample(self, step: int, batch: int, generator: torch.Generator | None = None) -> Int[Tensor, " B"]:
        """i.i.d. timesteps for the views of one batch."""
        lo, hi = self.window(step)
        return torch.randint(lo, hi + 1, (batch,), generator=generator)


def anpg_gradient(
    eps_pos: Float[Tensor, "B C h w"],
    eps_neg: Float[Tensor, "B C h w"],
    eps_null: Float[Tensor, "B C h w"],
    t: Int[Tensor, " B"],
    alphas_cumprod: Float[Tensor, " T"],
    guidance_scale: float = 7.5,
    t_threshold: int = 170,
) -> Float[Tensor, "B C h w"]:
    """Noise-free score-distillation direction (method §6.1 step 5):

    ``g = (1 − ᾱ_t) [ s (ε_pos − ε_null) + (ε_null if t < t_thr else ε_null − ε_neg) ]``.
    """
    w = (1.0 - alphas_cumprod.to(eps_pos.device)[t.to(eps_pos.device)]).to(eps_pos.dtype).view(-1, 1, 1, 1)
    delta_c = guidance_scale * (eps_pos - eps_null)
    small = (t.to(eps_pos.device) < t_threshold).view(-1, 1, 1, 1)
    delta_d = torch.where(small, eps_null, eps_null - eps_neg)
    return w * (delta_c + delta_d)


def clip_grad_per_pixel(g: Float[Tensor, "B C h w"], threshold: float = 1.0) -> Float[Tensor, "B C h w"]:
    """Scale each latent pixel's C-vector to L2 norm <= ``threshold``."""
    n = g.norm(dim=1, keepdim=True)
    return g * (threshold / (n + 1e-8)).clamp_max(1.0)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return torch.nan_to_num(g * ctx.scale, nan=0.0, posinf=0.0, neginf=0.0), None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` (non-finite values
    zeroed) in the backward pass. A pair ``scale_grad(·, 1/s)`` … ``scale_grad(·, s)`` around an fp16
    sub-network keeps its backward pass away from fp16 underflow (static loss scaling)."""
    return _ScaleGrad.apply(x, float(scale))


def sds_loss(latents: Float[Tensor, "B C h w"], grad: Float[Tensor, "B C h w"]) -> Tensor:
    """``0.5 Σ (z − sg(z − g))² / B``: its gradient w.r.t. ``latents`` is exactly ``grad / B``."""
    grad = torch.nan_to_num(grad.float())
    target = (latents.float() - grad).detach()
    return 0.5 * ((latents.float() - target) ** 2).sum() / latents.shape[0]


def sparsity_loss(opacity: Float[Tensor, "B H W 1"]) -> Tensor:
    """``mean(sqrt(o² + 0.01))`` on the rendered alpha (method §2.5; the reference used normalised
    depth as "opacity": §12.6)."""
    return torch.sqrt(opacity.float() ** 2 + 0.01).mean()
