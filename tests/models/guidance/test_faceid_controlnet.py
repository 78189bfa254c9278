import copy

import pytest
import torch

from tests.conftest import face, tiny_guidance_cfg
from threestudio.models.guidance.faceid_controlnet import (
    ChannelStatsGroupNorm,
    FaceIDControlNetGuidance,
    TwoStreamNoisePrediction,
    compiled_noise_prediction,
    noise_prediction,
    use_channel_stats_group_norm,
)
from threestudio.models.guidance.unet_halves import supports_halves, unet_forward
from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor
from threestudio.ops.sds import (
    clip_grad_per_pixel,
    scale_grad,
)
from threestudio.utils.aot import DiskCompiledModule
from threestudio.utils.gpu import resolve_dtype


def _encoder_grad(vae, x, upstream, scale=None):
    """d(sum(upstream * z)) / dx through the VAE encoder in the VAE's dtype, x fp32 [1, 3, H, W]."""
    x = x.clone().requires_grad_(True)
    xin = scale_grad(x, 1.0 / scale) if scale else x
    z = vae.encode((2 * xin - 1).to(vae.dtype)).latent_dist.mean.float()
    if scale:
        z = scale_grad(z, scale)
    (z * upstream).sum().backward()
    return x.grad


def test_default_clip_threshold_matches_the_reference_budget():
    """The reference clipped each of the 4 x 64 latent rows of a [4, 64, 64] gradient to L2 norm 1.0
    (method §6.1 step 6): the whole gradient's norm is at most 16. Our per-pixel clip (over the 4
    channels) at the default threshold gives the same bound, reached by the same saturated gradient."""
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance

    thr = FaceIDControlNetGuidance.Config.grad_clip_threshold
    big = torch.full((1, 4, 64, 64), 10.0)
    ours = clip_grad_per_pixel(big, thr)
    ref = big * (1.0 / big.norm(dim=-1, keepdim=True)).clamp(max=1.0)  # the reference's row clip
    assert abs(float(ours.norm()) - 16.0) < 1e-3 and abs(float(ref.norm()) - 16.0) < 1e-3
    torch.testing.assert_close(ours, ref)  # a uniform saturated gradient is clipped identically


def test_real_loading_code_on_tiny_models(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    assert g.missing() == []
    g.load("cpu")
    # IP-Adapter FaceID-Plus-v2 installed: LoRA merged into the projections (fuse_lora), IP processors,
    # shortcut projection
    assert not getattr(g.unet, "peft_config", None) and "lora" not in str(list(g.unet.state_dict()))
    procs = g.unet.attn_processors
    assert any("IPAdapter" in type(p).__name__ for p in procs.values())
    assert type(g.ip_projection).__name__ == "IPAdapterFaceIDPlusImageProjection"
    assert g.ip_projection.shortcut and abs(g.ip_projection.shortcut_scale - 0.4) < 1e-6
    br = g.prepare_identity(str(face("man.png")))
    assert set(br) == {"pos", "neg", "null"} and br["neg"].id_embeds.abs().sum() == 0
    assert not torch.allclose(br["pos"].id_embeds, br["null"].id_embeds)
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare("cpu")
    assert len(list((tmp_path / "text_embeddings").glob("*.pt"))) == len(pp.all_prompts())
    e = pp(torch.tensor([90.0, -90.0]), "body", torch.tensor([True, False]))
    assert e["prompts"] == ["A man, full body photo, front view", "A man, back view"]
    assert not torch.equal(e["pos"][0], e["pos"][1])
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    out = g(rgb, torch.rand(2, 32, 32, 3), e["pos"], e["neg"], e["null"], step=0)
    assert ((out["t"] >= 500) & (out["t"] <= 799)).all()  # first AHDS window
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # the identity reaches the UNet: another face changes the prediction
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([500, 500])
    pose = torch.rand(2, 3, 32, 32)
    e1 = g.predict_noise(z, t, e["pos"], [br["pos"]], pose)
    e2 = g.predict_noise(z, t, e["pos"], [br["null"]], pose)
    assert (e1 - e2).abs().max() > 1e-6


def test_missing_real_models_listed(tmp_path):
    g = FaceIDControlNetGuidance(
        {"pretrained_model_name_or_path": str(tmp_path / "rv"), "face": {"root": str(tmp_path)}}
    )
    miss = g.missing()
    text = "\n".join(miss)
    for what in ("UNet", "VAE", "ControlNet", "IP-Adapter", "CLIP ViT-H", "insightface"):
        assert what in text
    assert "hf download stabilityai/sd-vae-ft-mse" in text


def test_guidance_without_bf16_loads_in_fp16(tiny_dir, monkeypatch):
    """With a no-bf16 card the guidance picks fp16 by itself (device type faked: only the choice is checked)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    assert resolve_dtype(torch.device("cuda", 0), g.cfg.dtype) == torch.float16


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
        empty = torch.zeros(1, 77, 64)
        g(torch.rand(1, 64, 64, 3), torch.rand(1, 32, 32, 3), empty, empty, empty, step=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_guidance_step_on_cuda_in_both_precisions(tiny_dir, tmp_path, monkeypatch, dtype):
    """The fp16 path (V100, T4, RTX 20xx) and the bf16 path run a finite, non-zero SDS step on CUDA."""
    from tests.conftest import face, tiny_guidance_cfg
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance
    from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor

    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype=dtype))
    g.load("cuda")
    assert g.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    g.prepare_identity(str(face("man.png")))
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare("cuda")
    e = pp(torch.tensor([90.0, -90.0]), "body", torch.tensor([True, False]))
    rgb = torch.rand(2, 64, 64, 3, device="cuda", requires_grad=True)
    out = g(rgb, torch.rand(2, 32, 32, 3, device="cuda"), e["pos"].cuda(), e["neg"].cuda(), e["null"].cuda(), step=0)
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    img = g.decode_latents(torch.randn(1, 4, 16, 16, device="cuda"))
    assert img.shape == (1, 32, 32, 3) and torch.isfinite(img).all()


def _sds_step(g, e, seed=0, device="cpu", step=300):
    """One guidance step on fixed renders and RNG: (loss, d loss / d renders)."""
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(2, 64, 64, 3, generator=gen).to(device).requires_grad_(True)
    pose = torch.rand(2, 32, 32, 3, generator=gen).to(device)
    torch.manual_seed(seed)
    out = g(rgb, pose, e["pos"].to(device), e["neg"].to(device), e["null"].to(device), step=step)
    out["loss_sds"].backward()
    return out["loss_sds"].detach(), rgb.grad


def _pair(tiny_dir, device, **fast):
    """The plain guidance (eager, default attention and layout) and the optimised one, same weights."""
    plain = FaceIDControlNetGuidance(
        tiny_guidance_cfg(
            tiny_dir,
            dtype="fp32",
            channels_last=False,
            vae_attention="auto",
            cuda_graph=False,
            compile_vae_encoder=False,
            compile_denoiser=False,
            skip_unused_negative=False,
            fuse_lora=False,
            share_pose_embedding=False,
            controlnet_stream=False,
        )
    )
    opt = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype="fp32", **fast))
    for g in (plain, opt):
        g.load(device)
        g.prepare_identity(str(face("man.png")))
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare(device)
    return plain, opt, pp(torch.tensor([90.0, 30.0]), "body", torch.tensor([True, False]))


@pytest.mark.parametrize("vae_attention", ["bmm", "math"])
def test_optimised_step_computes_the_same_sds_gradient(tiny_dir, tmp_path, monkeypatch, vae_attention):
    """Channels-last layout, bmm / SDPA-math attention in the VAE encoder and GroupNorms from
    per-channel statistics (which the compiled CUDA step uses) change speed, not the method: the SDS
    loss and its gradient on the renders agree with the plain step to float32 round-off."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    plain, opt, e = _pair(tiny_dir, "cpu", vae_attention=vae_attention)
    procs = {type(p).__name__ for p in opt.vae.attn_processors.values()}
    assert procs == ({"AttnProcessor"} if vae_attention == "bmm" else {"AttnProcessor2_0"})
    state = copy.deepcopy(opt.vae.encoder.state_dict())
    assert use_channel_stats_group_norm(opt.vae.encoder) > 0
    assert use_channel_stats_group_norm(opt.unet) > 0 and use_channel_stats_group_norm(opt.controlnet) > 0
    assert opt.vae.encoder.state_dict().keys() == state.keys()  # weights load as before
    opt.set_channels_last(True)
    assert opt.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    loss0, grad0 = _sds_step(plain, e)
    loss1, grad1 = _sds_step(opt, e)
    assert grad0.abs().sum() > 0
    torch.testing.assert_close(loss1, loss0, rtol=1e-4, atol=1e-7)
    assert float((grad1 - grad0).norm() / grad0.norm()) < 1e-4
    _, other = _sds_step(opt, e, seed=1)  # and the comparison can fail: another noise draw differs
    assert float((other - grad0).norm() / grad0.norm()) > 1e-2


def test_fused_lora_predicts_the_noise_of_the_separate_lora(tiny_dir, tmp_path, monkeypatch):
    """``fuse_lora`` merges FaceID-Plus-v2's LoRA into the UNet's attention projections: no LoRA layer is
    left and the noise prediction (every branch, pose embedded per row or per view) is the one of the
    separate low-rank matmuls, which do change it (the LoRA is not zero)."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    plain, opt, e = _pair(tiny_dir, "cpu")
    assert "faceid_0" in plain.unet.peft_config and not getattr(opt.unet, "peft_config", None)
    lora = lambda unet: sum(hasattr(m, "lora_A") for m in unet.modules())  # noqa: E731
    assert lora(plain.unet) > 0 and lora(opt.unet) == 0
    torch.manual_seed(0)
    z, pose, t = torch.randn(2, 4, 16, 16), torch.rand(2, 3, 32, 32), torch.tensor([500, 300])
    text, names = torch.cat([e["neg"], e["pos"], e["null"]]), ["neg", "pos", "null"]
    with torch.no_grad():
        ref = plain.predict_noise(torch.cat([z] * 3), t.repeat(3), text, [plain.branches[n] for n in names], pose)
        ours = opt.predict_noise(torch.cat([z] * 3), t.repeat(3), text, [opt.branches[n] for n in names], pose)
        plain.unet.disable_adapters()  # the same UNet without its LoRA: another prediction
        bare = plain.predict_noise(torch.cat([z] * 3), t.repeat(3), text, [plain.branches[n] for n in names], pose)
        plain.unet.enable_adapters()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert (bare - ref).abs().max() > 1e-4


def test_sds_noise_does_not_depend_on_the_latents_memory_layout(tiny_dir, tmp_path, monkeypatch):
    """The compiled encoder may hand back its latents in another memory layout than the eager one (on
    an H200 with channel-stats GroupNorms the CUDA step drew other noise than the eager step until this
    was fixed); the SDS noise of a seed, and so the step, must not depend on it (``randn_like`` fills
    memory order and did)."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    _, g, e = _pair(tiny_dir, "cpu")
    encode = g.encode_images
    out = []
    for layout in (torch.contiguous_format, torch.channels_last):
        monkeypatch.setattr(g, "encode_images", lambda rgb, m=layout: encode(rgb).contiguous(memory_format=m))
        out.append(_sds_step(g, e))
    (loss0, grad0), (loss1, grad1) = out
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad1, grad0, rtol=1e-4, atol=1e-7)


def test_pose_embedding_is_shared_by_the_branches(tiny_dir, tmp_path, monkeypatch):
    """The ControlNet embeds each view's pose once for all branches: a 3-branch batch predicts the same
    noise as three one-branch calls (each embedding the pose itself), and a pose batch that is not one
    image per view of a branch is one clear error."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    _, g, e = _pair(tiny_dir, "cpu")
    torch.manual_seed(0)
    z, pose = torch.randn(2, 4, 16, 16), torch.rand(2, 3, 32, 32)
    t = torch.tensor([500, 300])
    text = [e["neg"], e["pos"], e["null"]]
    names = ["neg", "pos", "null"]
    with torch.no_grad():
        branches = [g.branches[n] for n in names]
        batched = g.predict_noise(torch.cat([z] * 3), t.repeat(3), torch.cat(text), branches, pose)
        alone = torch.cat([g.predict_noise(z, t, x, [g.branches[n]], pose) for x, n in zip(text, names, strict=True)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    assert (alone[:2] - alone[2:4]).abs().max() > 1e-4  # the branches differ, so the check can fail
    with pytest.raises(ValueError, match="so n must be 18"):
        g.predict_noise(torch.cat([z] * 3), t.repeat(3), torch.cat(text), branches, pose.repeat(3, 1, 1, 1))
    # rows for a subset of the views (the negative branch of view 1 only): those rows of the full batch
    views = [torch.tensor([1]), torch.arange(2), torch.arange(2)]
    with torch.no_grad():
        subset = g.predict_noise(
            torch.cat([z[1:], z, z]),
            torch.cat([t[1:], t, t]),
            torch.cat([text[0][1:], *text[1:]]),
            branches,
            pose,
            views,
        )
    torch.testing.assert_close(subset, batched[1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[1, 2, 2\] rows"):
        g.predict_noise(torch.cat([z] * 3), t.repeat(3), torch.cat(text), branches, pose, views)


def test_negative_rows_below_the_threshold_are_skipped_with_the_same_step(tiny_dir, tmp_path, monkeypatch):
    """ANPG does not read ε_neg of a view whose timestep is below ``anpg_t_threshold`` (method §6.1
    step 5): the step that skips those rows (fewer UNet + ControlNet rows) gives the loss and gradient
    of the step that computes every row, also when only some views of a batch are below it."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    plain, opt, e = _pair(tiny_dir, "cpu")
    assert plain.cfg.skip_unused_negative is False and opt.cfg.skip_unused_negative is True
    rows, denoise = [], opt._denoise
    monkeypatch.setattr(opt, "_denoise", lambda *a: rows.append(a[2].shape[0]) or denoise(*a))
    for seed in range(4):  # step 15 of 20: window [20, 332], about half of the timesteps below 170
        loss0, grad0 = _sds_step(plain, e, seed, step=15)
        loss1, grad1 = _sds_step(opt, e, seed, step=15)
        torch.testing.assert_close(loss1, loss0, rtol=1e-4, atol=1e-7)
        assert float((grad1 - grad0).norm() / grad0.norm()) < 1e-4
    assert {4, 5} <= set(rows) and max(rows) <= 6  # no / one negative row of two views were computed


def test_channel_stats_group_norm_module_is_a_group_norm():
    """The swapped module keeps nn.GroupNorm's parameters and computes its function."""
    m = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(m.weight)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 8, 5, 5) * 2 + 3
    ref = m(x)
    assert use_channel_stats_group_norm(torch.nn.Sequential(m)) == 1 and isinstance(m, ChannelStatsGroupNorm)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert use_channel_stats_group_norm(torch.nn.Sequential(m)) == 0  # already swapped


def test_noise_prediction_and_encoder_compile_whole_and_load_from_disk(tiny_dir, tmp_path, monkeypatch):
    """The compiled stage-1 networks trace without graph breaks (``fullgraph``, the condition for
    keeping them on disk): the noise prediction of the three branches and the VAE encoder's forward and
    backward, compiled and then loaded by a fresh instance, give the eager numbers."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype="fp32"))
    g.load("cpu")
    g.prepare_identity(str(face("man.png")))
    torch.manual_seed(0)
    z, pose, t = torch.randn(6, 4, 16, 16), torch.rand(2, 3, 32, 32), torch.tensor([500, 300] * 3)
    text = torch.randn(6, 77, g.unet.config.cross_attention_dim)
    branches = [g.branches[n] for n in ("neg", "pos", "null")]
    x, up = torch.rand(2, 3, 32, 32, requires_grad=True), torch.randn(2, 8, 16, 16)
    encoder = g.vae.encoder
    assert use_channel_stats_group_norm(encoder) > 0  # as compiled on CUDA
    with torch.no_grad():
        ref = g.predict_noise(z, t, text, branches, pose)
    (encoder(x) * up).sum().backward()
    ref_grad, x.grad = x.grad.clone(), None
    for source in ("compiled", "disk"):
        torch._dynamo.reset()
        g._denoise = compiled_noise_prediction(backend="aot_eager")  # as stage 1 compiles it on CUDA
        with torch.no_grad():
            torch.testing.assert_close(g.predict_noise(z, t, text, branches, pose), ref)
            assert g._denoise.last_source == source
            # fewer rows (no negative row of view 0): the same compiled function
            views = [torch.tensor([1]), torch.arange(2), torch.arange(2)]
            torch.testing.assert_close(g.predict_noise(z[1:], t[1:], text[1:], branches, pose, views), ref[1:])
        wrapped = DiskCompiledModule(encoder, "vae-encoder", backend="aot_eager")
        (wrapped(x) * up).sum().backward()
        torch.testing.assert_close(x.grad, ref_grad)
        assert wrapped.compiled.last_source == source
        x.grad = None
    assert len(list((tmp_path / "aot").glob("*.bin"))) == 2


def test_unet_halves_compute_the_unet_forward(tiny_dir, tmp_path, monkeypatch):
    """unet_decode(unet_encode(...)) is diffusers' UNet forward: the same numbers with the ControlNet's
    residuals, without them, and at a latent size the up-samplers do not divide (upsample_size path)."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype="fp32"))
    g.load("cpu")
    br = g.prepare_identity(str(face("man.png")))["pos"]
    assert supports_halves(g.unet) and not supports_halves(g.controlnet)
    torch.manual_seed(0)
    n, D = 3, g.unet.config.cross_attention_dim
    t, text = torch.tensor([500, 300, 100]), torch.randn(n, 77, D)
    ids, clip = br.id_embeds.expand(n, -1)[:, None], br.clip_embeds.expand(n, -1, -1)[:, None]
    g.ip_projection.clip_embeds = clip
    image = {"image_embeds": [ids]}
    with torch.no_grad():
        for size in ((16, 16), (12, 20)):
            z = torch.randn(n, 4, *size)
            ref = g.unet(z, t, encoder_hidden_states=text, added_cond_kwargs=image).sample
            assert torch.equal(unet_forward(g.unet, z, t, text, ids), ref)
        z, pose = torch.randn(n, 4, 16, 16), torch.rand(n, 3, 32, 32)
        down, mid = g.controlnet(z, t, text, controlnet_cond=pose, return_dict=False)
        down, mid = [torch.randn_like(d) for d in down], torch.randn_like(mid)  # (the tiny zero convs give 0)
        kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        ref = g.unet(z, t, encoder_hidden_states=text, added_cond_kwargs=image, **kw).sample
        assert torch.equal(unet_forward(g.unet, z, t, text, ids, down, mid), ref)
        plain = g.unet(z, t, encoder_hidden_states=text, added_cond_kwargs=image).sample
        assert (ref - plain).abs().max() > 1e-4  # the residuals matter, so the comparison can fail


def test_controlnet_beside_the_unet_encoder_predicts_the_same_noise(tiny_dir, tmp_path, monkeypatch):
    """``controlnet_stream`` (the ControlNet apart from the UNet's encoder half; on CUDA on a second
    stream) predicts the noise of the one-piece :func:`noise_prediction` for every branch and for a
    subset of rows, eager, and compiled to disk and loaded again (aot_eager on the CPU)."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir, dtype="fp32"))
    g.load("cpu")
    g.prepare_identity(str(face("man.png")))
    assert isinstance(g._denoise, TwoStreamNoisePrediction) and g._denoise.last_source is None
    torch.manual_seed(0)
    z, pose, t = torch.randn(6, 4, 16, 16), torch.rand(2, 3, 32, 32), torch.tensor([500, 300] * 3)
    text = torch.randn(6, 77, g.unet.config.cross_attention_dim)
    branches = [g.branches[n] for n in ("neg", "pos", "null")]
    views = [torch.tensor([1]), torch.arange(2), torch.arange(2)]

    def both(subset_first=False):
        with torch.no_grad():
            sub = g.predict_noise(z[1:], t[1:], text[1:], branches, pose, views) if subset_first else None
            full = g.predict_noise(z, t, text, branches, pose)
            return full, sub if subset_first else g.predict_noise(z[1:], t[1:], text[1:], branches, pose, views)

    ours = both()
    two = g._denoise
    g._denoise = noise_prediction
    ref = both()
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    assert (ref[0][:2] - ref[0][2:4]).abs().max() > 1e-4  # the branches differ, so the check can fail
    for source in ("compiled", "disk"):
        torch._dynamo.reset()
        g._denoise = TwoStreamNoisePrediction(compiled=True, backend="aot_eager")
        # a new process may meet another row count first (the pipeline starts at 12 rows, the step
        # benchmark at fewer): the files saved at one row count serve it
        compiled = both(subset_first=source == "disk")
        torch.testing.assert_close(compiled[0], ref[0])
        torch.testing.assert_close(compiled[1], ref[1])  # fewer rows: the same compiled functions
        assert g._denoise.last_source == source
        # the manifest's compile_events: each part prepared once (one dynamic-row signature for both calls)
        events = g.compile_events()
        assert sorted(e["name"] for e in events) == ["controlnet-residuals", "unet-decode", "unet-encode"]
        assert {e["source"] for e in events} == {source}
    assert sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (tmp_path / "aot").glob("*.bin")) == [
        "controlnet-residuals",
        "unet-decode",
        "unet-encode",
    ]
    g.set_ip_adapter_scale(0.6, 0.5)  # a new scale: the compiled parts are prepared again
    assert g._denoise is not two and g._denoise.control._fns == {}


@pytest.mark.gpu
def test_cuda_graph_replay_computes_the_same_sds_gradient(tiny_dir, tmp_path, monkeypatch):
    """The default fast step on CUDA (compiled VAE encoder with bmm attention, compiled UNet and
    ControlNet whose noise prediction is captured in a CUDA graph per row count, the negative rows below
    the ANPG threshold skipped) against the plain eager step; a repeated step replays its graph. TF32 is
    off here: with it, matmul and fused attention round differently (~0.6 % of the gradient)."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    plain, opt, e = _pair(tiny_dir, "cuda")
    for seed in (0, 1):
        loss0, grad0 = _sds_step(plain, e, seed, "cuda")
        loss1, grad1 = _sds_step(opt, e, seed, "cuda")
        torch.testing.assert_close(loss1, loss0, rtol=1e-3, atol=1e-6)
        assert float((grad1 - grad0).norm() / grad0.norm()) < 1e-3
    graphs = len(opt._graphs)
    assert 1 <= graphs <= 3  # one per row count (4, 5 or 6 rows for two views)
    again0, _ = _sds_step(opt, e, 1, "cuda")  # seed 1 again: replayed, nothing captured
    assert len(opt._graphs) == graphs
    torch.testing.assert_close(again0, loss1, rtol=0, atol=0)
    assert opt._denoise.last_source == "compiled" and opt.vae.encoder.compiled.last_source == "compiled"
    events = opt.compile_events()  # what the stage-1 manifest records as compile_events
    assert [e["rows"] for e in events if e["name"] == "cuda-graph"] == [k[0][0] for k in opt._graphs]
    assert {e["source"] for e in events if e["name"] != "cuda-graph"} == {"compiled"}
    torch._dynamo.reset()  # as a new process: the compiled networks come from the disk cache
    again = FaceIDControlNetGuidance(opt.cfg)
    again.load("cuda")
    again.prepare_identity(str(face("man.png")))
    loss1, grad1 = _sds_step(again, e, 1, "cuda")
    assert again._denoise.last_source == "disk" and again.vae.encoder.compiled.last_source == "disk"
    torch.testing.assert_close(loss1, loss0, rtol=1e-3, atol=1e-6)
    assert float((grad1 - grad0).norm() / grad0.norm()) < 1e-3


def test_vae_layout_optimization_is_an_inductor_option_of_this_torch():
    """``vae_layout_optimization`` passes ``force_layout_optimization`` to ``torch.compile``; an option
    this torch's Inductor does not know would only fail on the first CUDA step, so check it here."""
    import torch._inductor.config as inductor_config

    assert FaceIDControlNetGuidance.Config().vae_layout_optimization is True
    assert isinstance(inductor_config.force_layout_optimization, bool)
    torch.compile(torch.nn.Identity(), options={"force_layout_optimization": True})  # validates the name
    with pytest.raises(RuntimeError, match="Unexpected optimization option"):
        torch.compile(torch.nn.Identity(), options={"force_layout_optimisation": True})


def _half_copy(tiny_dir, dst):
    """The tiny models with every safetensors weight file stored in fp16 (as the real checkpoints are)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_dir, dst)
    for f in dst.rglob("*.safetensors"):
        sd = load_file(f)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f, metadata={"format": "pt"})
    return dst


def test_stored_float_dtype_reads_the_safetensors_headers(tiny_dir, tmp_path):
    import json

    from safetensors.torch import save_file

    from threestudio.models.guidance.hub import stored_float_dtype

    half = _half_copy(tiny_dir, tmp_path / "half")
    w = "diffusion_pytorch_model.safetensors"
    assert stored_float_dtype(str(tiny_dir / "rv"), w, "unet") is torch.float32
    assert stored_float_dtype(str(half / "rv"), w, "unet") is torch.float16
    assert stored_float_dtype(str(half / "image_encoder"), "model.safetensors") is torch.float16
    assert stored_float_dtype(str(tmp_path / "nowhere"), w) is None
    shard = tmp_path / "sharded"
    shard.mkdir()
    save_file(
        {"a": torch.zeros(2, dtype=torch.bfloat16), "i": torch.zeros(2, dtype=torch.int64)}, shard / "s1.safetensors"
    )
    save_file({"b": torch.zeros(2, dtype=torch.bfloat16)}, shard / "s2.safetensors")
    (shard / f"{w}.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    assert stored_float_dtype(str(shard), w) is torch.bfloat16  # integer tensors do not count
    save_file({"b": torch.zeros(2, dtype=torch.float32)}, shard / "s2.safetensors")
    assert stored_float_dtype(str(shard), w) is None  # mixed: let from_pretrained decide
    (shard / "s2.safetensors").write_bytes(b"not safetensors")
    assert stored_float_dtype(str(shard), w) is None


def test_weights_read_in_their_stored_dtype_load_the_same_values(tiny_dir, tmp_path, monkeypatch):
    """fp16 files read as fp16 and cast on the device give the networks that reading them in fp32 gave
    (fp16 -> fp32 is exact; the LoRA merge still runs in fp32)."""
    import threestudio.models.guidance.faceid_controlnet as fc

    half = _half_copy(tiny_dir, tmp_path / "half")
    cfg = tiny_guidance_cfg(half)
    ours = FaceIDControlNetGuidance(cfg)
    ours.load("cpu")
    monkeypatch.setattr(fc, "stored_float_dtype", lambda *a: None)  # from_pretrained's own fp32 read
    plain = FaceIDControlNetGuidance(cfg)
    plain.load("cpu")
    for name in ("unet", "vae", "controlnet", "image_encoder"):
        a, b = getattr(ours, name).state_dict(), getattr(plain, name).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{name}.{k}"
