"""Precision rule (DESIGN.md §8): bf16 where the card supports it, else fp16 with its guards (V100, T4,
RTX 20xx); fp32 on the CPU. The fp16 path is forced here on the CPU with the tiny models."""

import copy

import pytest
import torch

from tests.conftest import face
from tests.test_guidance import tiny_guidance_cfg
from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance
from threestudio.ops.sds import scale_grad
from threestudio.utils.gpu import resolve_dtype


@pytest.mark.parametrize("bf16_ok,want", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_follows_the_card(monkeypatch, bf16_ok, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)  # a card without bf16 (V100, T4)
    assert resolve_dtype(torch.device("cuda", 0), "auto") == want
    assert resolve_dtype("cpu", "auto") == torch.float32
    assert resolve_dtype("cuda", "fp32") == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("cpu", "half")


def test_guidance_without_bf16_loads_in_fp16(tiny_dir, monkeypatch):
    """With a no-bf16 card the guidance picks fp16 by itself (device type faked: only the choice is checked)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    assert resolve_dtype(torch.device("cuda", 0), g.cfg.dtype) == torch.float16


def _encoder_grad(vae, x, upstream, scale=None):
    """d(sum(upstream * z)) / dx through the VAE encoder in the VAE's dtype, x fp32 [1, 3, H, W]."""
    x = x.clone().requires_grad_(True)
    xin = scale_grad(x, 1.0 / scale) if scale else x
    z = vae.encode((2 * xin - 1).to(vae.dtype)).latent_dist.mean.float()
    if scale:
        z = scale_grad(z, scale)
    (z * upstream).sum().backward()
    return x.grad


def test_fp16_gradient_scaling_prevents_underflow(tiny_dir):
    """SDS gradients are small (|dL/dz| <= 0.25 / B); through an fp16 encoder they underflow. Scaling
    them by ``fp16_grad_scale`` on the way in and back at the fp32 input recovers the fp32 gradient."""
    from diffusers import AutoencoderKL

    vae32 = AutoencoderKL.from_pretrained(str(tiny_dir / "vae")).eval().requires_grad_(False)
    vae16 = copy.deepcopy(vae32).half()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    up = 2e-6 * torch.randn(1, 4, 16, 16, generator=g)
    ref = _encoder_grad(vae32, x, up)
    plain = _encoder_grad(vae16, x, up)
    guarded = _encoder_grad(vae16, x, up, scale=1024.0)

    def rel(a):
        return float((a - ref).norm() / ref.norm())

    assert torch.isfinite(guarded).all()
    assert rel(guarded) < 0.05, rel(guarded)
    assert rel(plain) > 3 * rel(guarded), (rel(plain), rel(guarded))


def test_fp16_sds_step_and_decode_guard(tiny_dir, tmp_path, monkeypatch):
    """The whole forced-fp16 guidance step gives a finite, non-zero gradient on the renders; an fp16 VAE
    decode that overflows is redone in fp32."""
    from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor

    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype="fp16"))
    g.load("cpu")
    assert g.dtype == torch.float16 and g.unet.dtype == torch.float16
    g.prepare_identity(str(face("man.png")))
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare("cpu")
    e = pp(torch.tensor([90.0, 0.0]), "body", torch.tensor([True, True]))
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    out = g(rgb, torch.rand(2, 32, 32, 3), e["pos"], e["neg"], e["null"], step=0)
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    huge = torch.full((1, 4, 8, 8), 3.0e4)  # overflows fp16 activations in the decoder
    with torch.no_grad():
        raw = g.vae.decode(huge.half() / g.vae.config.scaling_factor).sample
    img = g.decode_latents(huge)
    assert not torch.isfinite(raw).all()  # the unguarded fp16 decode fails ...
    assert torch.isfinite(img).all() and img.dtype == torch.float32  # ... the guarded one does not
    assert g.vae.dtype == torch.float16  # and the VAE is back in fp16


def test_guidance_refuses_an_unset_schedule(tiny_dir):
    """``n_steps: 0`` outside AHDSSystem used to build a 1-step schedule silently; now it is an error."""
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, n_steps=0))
    g.load("cpu")
    g.branches = {}
    with pytest.raises(ValueError, match="n_steps is 0"):
        g(torch.rand(1, 64, 64, 3), torch.rand(1, 32, 32, 3), None, None, None, step=0)
