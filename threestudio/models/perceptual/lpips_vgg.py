"""LPIPS with a VGG-16 backbone (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric", Eq. 1), the 15·LPIPS-VGG term of stage 3 (method §8).

The network is the standard one, loaded from the standard files, without importing torchvision (PyPI
has no CPU build of it; DESIGN.md §4):

* the VGG-16 feature stack (13 convolutions, torchvision's layer indices ``features.0 … features.28``)
  from torchvision's ImageNet weight file ``vgg16-397923af.pth`` (a plain state dict, read with
  ``torch.load(weights_only=True)``);
* the five linear heads ``lin0 … lin4`` of LPIPS v0.1 from the ``lpips`` package's
  ``weights/v0.1/vgg.pth`` (shipped inside its wheel; the package itself is not imported because its
  ``__init__`` imports torchvision).

``d(x, y) = Σ_l mean_{h,w} ‖ w_l ⊙ (φ̂_l(x) − φ̂_l(y)) ‖²`` with φ̂_l the channel-normalised relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3 activations of the input scaled as LPIPS does.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from threestudio.utils.config import parse_structured
from threestudio.utils.errors import ConfigError, MissingModelError
from threestudio.utils.typing import Float, Tensor

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
"""torchvision's VGG-16 configuration "D" (``M`` = 2x2 max-pool)."""
SLICE_ENDS = (4, 9, 16, 23, 30)
"""``features[:4]`` -> relu1_2, ``[4:9]`` -> relu2_2, ``[9:16]`` -> relu3_3, ``[16:23]`` -> relu4_3,
``[23:30]`` -> relu5_3."""
CHANNELS = (64, 128, 256, 512, 512)
MIN_SIDE = 32
"""Inputs smaller than this (four 2x2 pools) are upsampled, keeping their aspect ratio."""


def default_vgg_path() -> str:
    """Where torchvision keeps ``vgg16-397923af.pth``: ``$TORCH_HOME/hub/checkpoints`` (default
    ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    return os.path.join(home, "hub", "checkpoints", VGG16_FILE)


def package_heads_path() -> str:
    """``weights/v0.1/vgg.pth`` inside the installed ``lpips`` package ('' if it is not installed)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "vgg.pth")


@dataclass
class LPIPSConfig:
    vgg_path: str = ""
    """VGG-16 ImageNet weights in torchvision's format; '' = ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    heads_path: str = ""
    """LPIPS v0.1 VGG linear heads; '' = the file inside the ``lpips`` package."""
    trunk_precision: str = "fp32"
    """Precision of the VGG trunk (its 13 convolutions, ReLUs and pools): ``fp32`` (on CUDA the
    convolutions run as TF32, cuDNN's default), ``bf16`` (autocast; the input scaling, the channel
    normalisation φ̂, the differences and the heads stay float32), or ``auto`` = bf16 on CUDA, fp32 on
    the CPU. bf16 is an opt-in speed-up, not the default: the distance agrees to about 0.1 % but the
    image gradient only to about 15 % (cosine 0.99; ``tests/models/perceptual/test_lpips_vgg.py``
    bounds both)."""


def resolve_paths(cfg: dict | DictConfig | None) -> tuple[Path, Path]:
    """(VGG-16 file, heads file) of ``cfg``, defaults filled in.

    Raises:
        ConfigError: ``trunk_precision`` is not ``auto``, ``bf16`` or ``fp32``.
    """
    c = parse_structured(LPIPSConfig, cfg)
    if c.trunk_precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"system.lpips.trunk_precision must be auto, bf16 or fp32, got {c.trunk_precision!r}")
    vgg = Path(os.path.expanduser(c.vgg_path or default_vgg_path()))
    heads = Path(os.path.expanduser(c.heads_path or package_heads_path() or "lpips/weights/v0.1/vgg.pth"))
    return vgg, heads


def missing(cfg: dict | DictConfig | None = None) -> list[str]:
    """One line per missing LPIPS weight file with how to obtain it (fast; no network)."""
    vgg, heads = resolve_paths(cfg)
    out = []
    if not vgg.is_file():
        out.append(
            f"LPIPS backbone (VGG-16 ImageNet weights, {VGG16_FILE}): {vgg} not found -> "
            f"mkdir -p {vgg.parent} && curl -L -o {vgg} {VGG16_URL}   (or set system.lpips.vgg_path; "
            "system.lambda_lpips=0 runs stage 3 without LPIPS)"
        )
    if not heads.is_file():
        out.append(
            f"LPIPS linear heads (lpips v0.1 vgg.pth): {heads} not found -> pip install --no-deps lpips==0.1.4 "
            "(or set system.lpips.heads_path)"
        )
    return out


def vgg16_features() -> nn.Sequential:
    """The 30 first layers of torchvision's ``vgg16().features`` (same indices, so its state dict loads)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CONVS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


class LPIPSVGG(nn.Module):
    """LPIPS-VGG distance. ``forward(x, y)`` with images [B, 3, H, W] in [0, 1] returns [B] distances
    (0 for identical images; differentiable in both inputs). Frozen; any input size (inputs with a side
    below 32 px are upsampled first, aspect ratio kept)."""

    def __init__(self, cfg: dict | DictConfig | None = None):
        """Raises:
        MissingModelError: a weight file is missing (the message says how to fetch it).
        ValueError: a weight file does not have the expected keys/shapes.
        """
        super().__init__()
        self.trunk_precision = parse_structured(LPIPSConfig, cfg).trunk_precision
        miss = missing(cfg)
        if miss:
            raise MissingModelError("missing pretrained models:\n  " + "\n  ".join(miss))
        vgg_path, heads_path = resolve_paths(cfg)
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        sd = torch.load(vgg_path, map_location="cpu", weights_only=True)
        feats = {
            k[len("features.") :]: v.float()
            for k, v in sd.items()
            if k.startswith("features.") and int(k.split(".")[1]) < SLICE_ENDS[-1]
        }
        try:
            self.features.load_state_dict(feats, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{vgg_path} is not a torchvision VGG-16 state dict: {str(e).splitlines()[0]}") from None
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        try:
            for i, lin in enumerate(self.lins):
                lin.weight.data.copy_(heads[f"lin{i}.model.1.weight"].float())
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"{heads_path} is not an LPIPS v0.1 VGG head file: {e}") from None
        self.eval().requires_grad_(False)

    def forward(self, x: Float[Tensor, "B 3 H W"], y: Float[Tensor, "B 3 H W"]) -> Float[Tensor, " B"]:
        """LPIPS distance of each pair (x[b], y[b]) (Eq. 1), [B] >= 0.

        Each image runs through the VGG trunk on its own, and an input that needs no gradient (in
        stage 3, the target) under ``torch.no_grad``: no backward pass is spent on it. On CUDA the
        trunk runs channels-last (cuDNN's native layout, no conversion kernels). Both give the same
        numbers as one trunk pass over ``cat([x, y])``, up to float rounding."""
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE:
            s = MIN_SIDE / min(h, w)
            size = (max(MIN_SIDE, round(h * s)), max(MIN_SIDE, round(w * s)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        fx, fy = self.features_of(x), self.features_of(y)
        d = 0.0
        for a, b, lin in zip(fx, fy, self.lins, strict=True):
            d = d + lin((a - b) ** 2).mean(dim=(2, 3))[:, 0]
        return d

    def features_of(self, img: Float[Tensor, "B 3 H W"]) -> list[Tensor]:
        """The five channel-normalised activations φ̂_l (relu1_2 ... relu5_3, [B, C_l, H_l, W_l],
        float32) of images in [0, 1]; without autograd when ``img`` needs no gradient."""
        grad = torch.is_grad_enabled() and img.requires_grad
        dev = img.device.type
        bf16 = self.trunk_precision == "bf16" or (self.trunk_precision == "auto" and dev == "cuda")
        with torch.set_grad_enabled(grad):
            z = ((2 * img.to(self.shift.dtype) - 1) - self.shift) / self.scale
            if dev == "cuda":
                z = z.contiguous(memory_format=torch.channels_last)
                if not self.features[0].weight.is_contiguous(memory_format=torch.channels_last):
                    self.features.to(memory_format=torch.channels_last)  # once, on the first CUDA call
            out, start = [], 0
            for end in SLICE_ENDS:
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                    z = self.features[start:end](z)
                start = end
                out.append(_unit(z.float()))
        return out


def _unit(f: Tensor, eps: float = 1e-10) -> Tensor:
    """Normalise each pixel's feature vector to unit length (LPIPS ``normalize_tensor``). The norm is
    one fused reduction (no squared copy of the activations), and finite at an all-zero pixel,
    where the gradient of ``sqrt(sum(f²))`` is NaN."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)
