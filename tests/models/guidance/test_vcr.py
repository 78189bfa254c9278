import numpy as np
import pytest
import torch

from threestudio.models.guidance.vcr import VCRAttnProcessor, VCRContext
from threestudio.ops.vcr import view_roles


def _attn(C=64, heads=2):  # noqa: D103
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    a = Attention(query_dim=C, heads=heads, dim_head=C // heads).requires_grad_(False)
    return a, AttnProcessor2_0()


def test_mutual_and_fused_attention_shapes_and_known_answers():
    a, base = _attn()
    ctx = VCRContext(lam=0.55, enabled=True, roles=view_roles(8))
    proc = VCRAttnProcessor("layer", ctx, base)
    L, C = 10, 64
    hp = torch.randn(2, 4, L, C)  # primaries 0, 2, 4, 6 (CFG halves x views)
    ctx.views, ctx.step = [0, 2, 4, 6], 0
    out = proc(a, hp.reshape(8, L, C))
    assert out.shape == (8, L, C)
    np.testing.assert_allclose(out, base(a, hp.reshape(8, L, C)).detach(), atol=1e-5)  # plain self-attention
    assert ctx.store[("layer", 6, 0)].shape == (2, L, C)
    # key views read the front (index 6, +90°) / back (index 2, -90°) view: keys/values concatenated
    ctx.views = [1, 3, 5, 7]
    hk = torch.stack([ctx.store[("layer", ctx.roles[v].partners[0], 0)] for v in ctx.views], 1)  # same as partner
    out_k = proc(a, hk.reshape(8, L, C))
    assert out_k.shape == (8, L, C)
    # attending to [h, h] is attending to h: equals plain self-attention of the same states
    np.testing.assert_allclose(out_k, base(a, hk.reshape(8, L, C)).detach(), atol=1e-5)
    hk2 = torch.randn(2, 4, L, C)
    assert (proc(a, hk2.reshape(8, L, C)) - base(a, hk2.reshape(8, L, C))).abs().max() > 1e-3


def test_fusion_blend():
    a, base = _attn()
    roles = view_roles(16)
    ctx = VCRContext(lam=0.55, enabled=True, roles=roles)
    proc = VCRAttnProcessor("l", ctx, base)
    L, C = 6, 64
    h = torch.randn(2, 1, L, C)
    for anchor in (0, 2):  # view 1 sits between anchors 0 and 2 with weights (0.5, 0.5)
        ctx.store[("l", anchor, 0)] = h[:, 0]
    ctx.views, ctx.step = [1], 0
    assert roles[1].weights == (0.5, 0.5)
    out = proc(a, h.reshape(2, L, C))
    np.testing.assert_allclose(out, base(a, h.reshape(2, L, C)).detach(), atol=1e-5)  # all three are the same
    other = torch.randn(2, L, C)
    ctx.store[("l", 0, 0)] = other
    out2 = proc(a, h.reshape(2, L, C))
    assert (out2 - out).abs().max() > 1e-4


def test_tier_batching_equals_sequential(tiny_dir):
    from tests.conftest import face, tiny_guidance_cfg
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance
    from threestudio.models.guidance.vcr import VCRRefiner

    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    g.load("cpu")
    g.prepare_identity(str(face()))
    r = VCRRefiner(g)
    n = 16
    gen = torch.Generator().manual_seed(0)
    rgb, pose = torch.rand(n, 32, 32, 3, generator=gen), torch.rand(n, 32, 32, 3, generator=gen)
    tc, tu = torch.randn(n, 77, 64, generator=gen), torch.randn(n, 77, 64, generator=gen)
    batched = r.refine(rgb, pose, tc, tu)
    seq = r.refine(rgb, pose, tc, tu, sequential=True)
    seen = {}
    chunked = r.refine(
        rgb, pose, tc, tu, chunk=3, on_refined=lambda v, im: seen.update(zip(v, im.clone(), strict=True))
    )
    assert sorted(seen) == list(range(n))  # every view handed out once its batch was done
    # tiers of 4, 4 and 8 views in UNet batches of at most 3, each decoded at once (the default)
    unet = [k for w, k in r.batches if w == "unet"]
    assert unet == [3, 1, 3, 1, 3, 3, 2] and [k for w, k in r.batches if w == "decode"] == unet
    assert all(torch.equal(seen[i], chunked[i]) for i in range(n))
    assert batched.shape == (n, 32, 32, 3)
    np.testing.assert_allclose(batched, seq, atol=1e-4)
    np.testing.assert_allclose(batched, chunked, atol=1e-4)
    ring8 = r.refine(rgb[::2], pose[::2], tc[::2], tu[::2])  # an 8-view ring has no in-between tier
    assert ring8.shape == (8, 32, 32, 3) and torch.isfinite(ring8).all()
    # the attention really couples views: changing a primary view changes an in-between view
    rgb2 = rgb.clone()
    rgb2[12] = 1 - rgb2[12]  # the front view (+90°)
    out2 = r.refine(rgb2, pose, tc, tu)
    assert (out2[13] - batched[13]).abs().max() > 1e-4


def _refined_ring(g):
    """Stage 2's refinement of the fixed 8-view ring of ``stage2_ring`` with ``g``."""
    from tests.conftest import stage2_ring

    refiner, inputs = stage2_ring(g)
    return refiner.refine(*inputs)


def test_stage_1_networks_handed_over_to_stage_2_refine_as_freshly_loaded_ones(tiny_dir, tmp_path):
    """run.sh's stage 2 takes the networks stage 1 left (``hand_over``), back in their eager form, and
    refines exactly as with networks loaded from the files; other models are never taken."""
    from tests.conftest import face, tiny_guidance_cfg
    from threestudio.models.guidance.faceid_controlnet import (
        ChannelStatsGroupNorm,
        FaceIDControlNetGuidance,
        TwoStreamNoisePrediction,
        noise_prediction,
        use_channel_stats_group_norm,
    )
    from threestudio.utils import handover
    from threestudio.utils.aot import DiskCompiled, DiskCompiledModule

    fresh = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    fresh.load("cpu")
    expected = _refined_ring(fresh)

    s1cfg = {**tiny_guidance_cfg(tiny_dir), "n_steps": 30}
    s1 = FaceIDControlNetGuidance(s1cfg)
    s1.load("cpu")
    s1.prepare_identity(str(face()))
    s1.free_image_encoder()
    # stage 1 on a GPU: compiled encoder with channel-statistics GroupNorms, compiled noise prediction
    use_channel_stats_group_norm(s1.vae.encoder)
    s1.vae.encoder = DiskCompiledModule(s1.vae.encoder, "enc", backend="aot_eager", cache_dir=tmp_path)
    s1._denoise = DiskCompiled(noise_prediction, "np", backend="aot_eager", cache_dir=tmp_path)
    unet = s1.unet
    try:
        s1.hand_over()
        assert handover.keys() == ["faceid-controlnet-guidance"]
        s2 = FaceIDControlNetGuidance({**tiny_guidance_cfg(tiny_dir), "compile_denoiser": False})
        s2.load("cpu")
        assert s2.reused and s2.unet is unet and handover.keys() == []
        assert isinstance(s2._denoise, TwoStreamNoisePrediction) and not s2._denoise.compiled  # eager
        # (RefineSystem itself turns controlnet_stream off: it saves nothing at stage 2's shapes)
        assert not isinstance(s2.vae.encoder, DiskCompiledModule)
        assert not any(isinstance(m, ChannelStatsGroupNorm) for m in s2.vae.modules())
        assert s2.image_encoder is None  # the same face: stage 1's branches, no image encoder needed
        torch.testing.assert_close(_refined_ring(s2), expected, rtol=0, atol=0)
        # another model (or device) is loaded from its files; what was left is dropped
        s2.hand_over()
        other = FaceIDControlNetGuidance({**tiny_guidance_cfg(tiny_dir), "controlnet_scale": 0.5})
        other.load("cpu")
        assert not other.reused and other.unet is not unet and handover.keys() == []
        # another face after a take-over: the image encoder comes back for its branches
        other.prepare_identity(str(face()))
        other.hand_over()
        s3 = FaceIDControlNetGuidance({**tiny_guidance_cfg(tiny_dir), "controlnet_scale": 0.5})
        s3.load("cpu")
        assert s3.reused and s3.image_encoder is not None  # other's encoder was never freed
        s3.free_image_encoder()
        before = s3.branches["pos"].id_embeds.clone()
        s3.prepare_identity(str(face("woman.png")))
        assert s3.image_encoder is not None and not torch.equal(s3.branches["pos"].id_embeds, before)
    finally:
        handover.clear()


def test_handover_keeps_an_object_for_one_launch_only():
    from threestudio.utils import handover

    try:
        handover.leave("a", 1)
        handover.expire()  # the launch that left it ended
        assert handover.keys() == ["a"]
        handover.expire()  # the next launch ended without taking it
        assert handover.keys() == [] and handover.take("a") is None
        handover.leave("b", 2)
        assert handover.take("b") == 2 and handover.take("b") is None
        handover.leave("c", 3)
    finally:
        handover.clear()
    assert handover.keys() == []


@pytest.mark.gpu
def test_compiled_stage_1_guidance_handed_over_on_cuda_refines_as_a_fresh_one(tiny_dir, tmp_path, monkeypatch):
    """On CUDA: a stage-1 guidance that compiled its VAE encoder and noise prediction and captured CUDA
    graphs in an SDS step is handed over; stage 2's refinement with it equals, to the bit, the one with
    networks loaded from the files (both eager), and stage 1's compiled forms are gone. Stage 1 loads on
    ``cuda:0`` (Lightning's device) and stage 2 asks for ``cuda`` (RefineSystem's), as in run.sh."""
    from tests.conftest import face, tiny_guidance_cfg
    from threestudio.models.guidance.faceid_controlnet import ChannelStatsGroupNorm, FaceIDControlNetGuidance
    from threestudio.models.prompt_processors.view_prompt import ViewPromptProcessor
    from threestudio.utils import handover
    from threestudio.utils.aot import DiskCompiledModule

    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    s2cfg = {**tiny_guidance_cfg(tiny_dir), "compile_denoiser": False, "compile_vae_encoder": False}
    fresh = FaceIDControlNetGuidance(s2cfg)
    fresh.load("cuda")
    expected = _refined_ring(fresh)
    del fresh
    s1 = FaceIDControlNetGuidance({**tiny_guidance_cfg(tiny_dir), "n_steps": 30})
    s1.load(torch.device("cuda", torch.cuda.current_device()))
    s1.prepare_identity(str(face()))
    s1.free_image_encoder()
    pp = ViewPromptProcessor({"prompt": "A man", "pretrained_model_name_or_path": str(tiny_dir / "rv")})
    pp.prepare("cuda")
    e = pp(torch.tensor([90.0, 30.0]), "body", torch.tensor([True, False]))
    x = torch.rand(2, 64, 64, 3, device="cuda", requires_grad=True)
    for step in (0, 1, 2):  # compiles, then captures a CUDA graph
        out = s1(x, torch.rand(2, 32, 32, 3, device="cuda"), e["pos"].cuda(), e["neg"].cuda(), e["null"].cuda(), step)
        out["loss_sds"].backward()
    assert isinstance(s1.vae.encoder, DiskCompiledModule) and s1._graphs
    unet = s1.unet
    try:
        s1.hand_over()
        s2 = FaceIDControlNetGuidance(s2cfg)
        s2.load("cuda")
        assert s2.reused and s2.unet is unet and not s2._graphs
        assert not isinstance(s2.vae.encoder, DiskCompiledModule)
        assert not any(isinstance(m, ChannelStatsGroupNorm) for m in s2.vae.modules())
        torch.testing.assert_close(_refined_ring(s2), expected, rtol=0, atol=0)
    finally:
        handover.clear()
