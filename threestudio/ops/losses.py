"""Photometric losses of stage 3 (method §8)."""

from __future__ import annotations

import functools

import torch

from threestudio.utils.typing import Float, Tensor


def alpha_bbox(alpha: Float[Tensor, "H W 1"], margin: float = 0.05, thr: float = 0.02) -> list[int]:
    """Pixel box ``[x0, y0, x1, y1)`` around ``alpha > thr``, grown by ``margin`` of the image size on
    each side and clipped to the image; the whole image when nothing is above ``thr``."""
    H, W = alpha.shape[:2]
    ys, xs = torch.nonzero(alpha[..., 0] > thr, as_tuple=True)
    if ys.numel() == 0:
        return [0, 0, W, H]
    mx, my = int(margin * W), int(margin * H)
    return [
        max(int(xs.min()) - mx, 0),
        max(int(ys.min()) - my, 0),
        min(int(xs.max()) + 1 + mx, W),
        min(int(ys.max()) + 1 + my, H),
    ]


def common_size_boxes(boxes: list[list[int]], width: int, height: int, multiple: int = 1) -> list[list[int]]:
    """Grow every ``[x0, y0, x1, y1)`` box to the largest box width and height of the list, about its
    centre and shifted to stay inside the ``width`` x ``height`` image, so that all crops have one size
    without resampling any of them (no aspect-ratio distortion; method §12.19).

    ``multiple`` (px, >= 1) rounds that common width and height up to a multiple of it (at most the
    image size), so that the crops of all batches take a handful of sizes instead of one per
    combination of views: every new input size costs the loss networks (LPIPS-VGG, SSIM) new cuDNN
    convolution plans. Each box still contains its original box.

    Raises:
        ValueError: ``multiple`` < 1.
    """
    if multiple < 1:
        raise ValueError(f"box size multiple must be >= 1 px, got {multiple}")
    bw = max(b[2] - b[0] for b in boxes)
    bh = max(b[3] - b[1] for b in boxes)
    bw, bh = min(-(-bw // multiple) * multiple, width), min(-(-bh // multiple) * multiple, height)
    out = []
    for x0, y0, x1, y1 in boxes:
        nx = min(max(int(round((x0 + x1 - bw) / 2)), 0), width - bw)
        ny = min(max(int(round((y0 + y1 - bh) / 2)), 0), height - bh)
        out.append([nx, ny, nx + bw, ny + bh])
    return out


def crop_boxes(img: Float[Tensor, "B H W C"], boxes, scale: float = 1.0) -> Float[Tensor, "B C h w"]:
    """Crop each image to its box (grown to a common size by :func:`common_size_boxes`, so aspect
    ratios are kept) and resample all crops by the same ``scale`` (the reference computed its losses at
    half resolution: method §8), channels-first for the SSIM/LPIPS networks."""
    import torch.nn.functional as F

    B, H, W = img.shape[:3]
    boxes = common_size_boxes([[int(v) for v in b] for b in boxes], W, H)
    crops = torch.stack([img[i, b[1] : b[3], b[0] : b[2]] for i, b in enumerate(boxes)]).permute(0, 3, 1, 2)
    if scale == 1.0:
        return crops
    size = (max(1, round(crops.shape[2] * scale)), max(1, round(crops.shape[3] * scale)))
    return F.interpolate(crops, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


SSIM_WINDOW = (11, 1.5)
"""SSIM's separable Gaussian window: size in pixels, σ in pixels (Wang et al. 2004; pytorch-msssim's default)."""


@functools.cache
def ssim_window(channels: int, device) -> Float[Tensor, "C 1 1 S"]:
    """pytorch-msssim's default window (``_fspecial_gauss_1d(11, 1.5)`` repeated per channel, float32),
    made once per device and channel count. Left to pytorch-msssim, it is made on the CPU and copied to
    the GPU in every call, a copy that makes the host wait for the GPU in each stage-3 step."""
    size, sigma = SSIM_WINDOW
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, 1, size)
    return g.repeat(channels, 1, 1, 1).to(device)


def ssim_loss(x: Float[Tensor, "B C h w"], y: Float[Tensor, "B C h w"]) -> Tensor:
    """``1 - SSIM`` (Wang et al. 2004; 11x11 Gaussian window, σ 1.5; pytorch-msssim) of images in [0, 1],
    averaged over the batch and channels; the window is :func:`ssim_window` (no host-to-device copy)."""
    from pytorch_msssim import ssim

    x, y = x.float(), y.float()
    return 1.0 - ssim(x, y, data_range=1.0, size_average=True, win=ssim_window(x.shape[1], x.device))


def psnr(x: Tensor, y: Tensor) -> Tensor:
    mse = ((x.float() - y.float()) ** 2).mean().clamp_min(1e-12)
    return -10.0 * torch.log10(mse)
