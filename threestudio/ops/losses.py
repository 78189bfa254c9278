"""Photometric losses of stage 3 (method §8)."""
from __future__ import annotations

import torch

from threestudio.utils.typing import Float, Tensor


def crop_boxes(img: Float[Tensor, "B H W C"], boxes, size: int | None = None) -> Float[Tensor, "B C h w"]:
    """Crop each image to its [x0, y0, x1, y1) box and resize all crops to a common square ``size``
    (default: the largest box side), channels-first for the SSIM/LPIPS networks."""
    import torch.nn.functional as F

    boxes = [[int(v) for v in b] for b in boxes]
    size = size or max(max(b[2] - b[0], b[3] - b[1]) for b in boxes)
    out = [F.interpolate(img[i:i + 1, b[1]:b[3], b[0]:b[2]].permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                         align_corners=False) for i, b in enumerate(boxes)]
    return torch.cat(out)


def ssim_loss(x: Float[Tensor, "B C h w"], y: Float[Tensor, "B C h w"]) -> Tensor:
    """``1 - SSIM`` (Wang et al. 2004; 11x11 Gaussian window, σ 1.5; pytorch-msssim)."""
    from pytorch_msssim import ssim

    return 1.0 - ssim(x.float(), y.float(), data_range=1.0, size_average=True)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    mse = ((x.float() - y.float()) ** 2).mean().clamp_min(1e-12)
    return -10.0 * torch.log10(mse)
