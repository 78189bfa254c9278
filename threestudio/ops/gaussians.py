"""3D Gaussian splatting math (Kerbl et al. 2023): activations, covariances, EWA projection and
front-to-back alpha compositing with the conventions of gsplat 1.x (pixel centres at +0.5,
``eps2d`` low-pass, alpha clamp 0.999, skip alpha < 1/255, stop when transmittance <= 1e-4).

Frames: means in world coordinates; ``w2c`` is an OpenCV world-to-camera matrix (x right, y down,
z forward); ``K`` the pinhole intrinsics in pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from threestudio.utils.typing import Float, Tensor

SH_C0 = 0.28209479177387814
"""Zeroth-order real spherical-harmonic constant: colour = SH_C0 * f_dc + 0.5."""


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(f_dc: Tensor) -> Tensor:
    """SH degree-0 coefficients -> RGB (clamped at 0 like the 3DGS rasterizers)."""
    return (f_dc * SH_C0 + 0.5).clamp_min(0.0)


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))


def quat_to_rotmat(q: Float[Tensor, "*N 4"]) -> Float[Tensor, "*N 3 3"]:
    """Unit quaternions (w, x, y, z; normalised here) -> rotation matrices."""
    q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))  # fmt: skip


def covariance_3d(scales: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Σ = R S Sᵀ Rᵀ with S = diag(scales) (activated, world units)."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Float[Tensor, "N 3"],
    cov3d: Float[Tensor, "N 3 3"],
    w2c: Float[Tensor, "B 4 4"],
    K: Float[Tensor, "B 3 3"],
    width: int,
    height: int,
    near: float = 0.01,
    eps2d: float = 0.3,
) -> dict:
    """EWA splatting projection (Zwicker et al. 2001; 3DGS Eq. 5) of N Gaussians into B cameras.

    Returns a dict with ``means2d`` [B, N, 2] (pixels), ``cov2d`` [B, N, 2, 2] (pixels², with
    ``eps2d`` added on the diagonal), ``conics`` [B, N, 3] (inverse 2-D covariance a, b, c),
    ``depths`` [B, N] (camera z), ``radii`` [B, N] (int pixels, 0 = culled) and ``opacity_scale``
    [B, N] (1; kept for API symmetry with anti-aliased variants).
    """
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    p_cam = torch.einsum("bij,nj->bni", R, means) + t[:, None, :]  # B N 3
    x, y, z = p_cam.unbind(-1)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    z_safe = torch.where(z > near, z, torch.full_like(z, near))
    # clamp the Jacobian's evaluation point to 1.3x the frustum like gsplat (stability off-screen)
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * width / fx, cx / fx + 0.3 * width / fx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * height / fy, cy / fy + 0.3 * height / fy
    tx = z_safe * torch.minimum(lim_xp, torch.maximum(-lim_xn, x / z_safe))
    ty = z_safe * torch.minimum(lim_yp, torch.maximum(-lim_yn, y / z_safe))
    zero = torch.zeros_like(z_safe)
    J = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2, zero, fy / z_safe, -fy * ty / z_safe**2], dim=-1).reshape(
        *z.shape, 2, 3
    )
    cov_cam = R[:, None] @ cov3d[None] @ R[:, None].transpose(-1, -2)  # B N 3 3
    cov2d = J @ cov_cam @ J.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, device=means.device, dtype=means.dtype)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
    radii = torch.ceil(3.0 * torch.sqrt(lam)).detach()
    inside = (
        (z > near)
        & (means2d[..., 0].detach() + radii > 0) & (means2d[..., 0].detach() - radii < width)
        & (means2d[..., 1].detach() + radii > 0) & (means2d[..., 1].detach() - radii < height)
    )  # fmt: skip
    radii = torch.where(inside, radii, torch.zeros_like(radii)).long()
    return {"means2d": means2d, "cov2d": cov2d, "conics": conics, "depths": z, "radii": radii}


def composite_weights(
    alphas: Float[Tensor, "P n"],
) -> Float[Tensor, "P n"]:
    """Front-to-back blending weights ``w_i = α_i T_i`` for depth-sorted alphas along dim 1, with the
    gsplat early stop: a Gaussian contributes only while ``T_i (1 - α_i) > 1e-4``."""
    one_minus = 1.0 - alphas
    T_before = torch.cumprod(torch.cat([torch.ones_like(alphas[:, :1]), one_minus[:, :-1]], dim=1), dim=1)
    keep = (T_before * one_minus) > 1e-4
    return alphas * T_before * keep


def gaussian_alpha(
    pix: Float[Tensor, "P 2"],
    means2d: Float[Tensor, "n 2"],
    conics: Float[Tensor, "n 3"],
    opacities: Float[Tensor, " n"],
) -> Float[Tensor, "P n"]:
    """Per-pixel alpha of each 2-D Gaussian: ``min(0.999, o·exp(-½ dᵀ Σ⁻¹ d))``, zero below 1/255."""
    d = means2d[None] - pix[:, None]  # P n 2
    sigma = (
        0.5 * (conics[None, :, 0] * d[..., 0] ** 2 + conics[None, :, 2] * d[..., 1] ** 2)
        + conics[None, :, 1] * d[..., 0] * d[..., 1]
    )
    alpha = (opacities[None] * torch.exp(-sigma)).clamp_max(0.999)
    valid = (sigma >= 0) & (alpha >= 1.0 / 255.0)
    return torch.where(valid, alpha, torch.zeros_like(alpha))


def knn_isotropic_log_scale(points: Float[Tensor, "N 3"], k: int = 3) -> Float[Tensor, "N 3"]:
    """Initial log-scales (method §2.2): ``log(sqrt(max(mean squared distance to k NN, 1e-7)))``."""
    from scipy.spatial import cKDTree

    p = points.detach().cpu().double().numpy()
    d, _ = cKDTree(p).query(p, k=k + 1)
    msq = torch.from_numpy((d[:, 1:] ** 2).mean(1)).clamp_min(1e-7)
    return torch.log(torch.sqrt(msq)).float()[:, None].repeat(1, 3).to(points.device)
