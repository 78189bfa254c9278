import numpy as np
import pytest
import torch

from threestudio.models.guidance.vcr import VCRAttnProcessor, VCRContext
from threestudio.ops.vcr import SDEDIT_GRID, ddim_step, sdedit_timesteps, tiers, view_roles


@pytest.mark.parametrize("n", [32, 16, 8, 40])
def test_roles_and_fusion_weights(n):
    roles = view_roles(n)
    az = {r.index: r.azimuth for r in roles}
    prim = [r for r in roles if r.kind == "primary"]
    keys = [r for r in roles if r.kind == "key"]
    betw = [r for r in roles if r.kind == "between"]
    assert sorted(az[r.index] for r in prim) == [-180.0, -90.0, 0.0, 90.0]
    assert sorted(az[r.index] for r in keys) == [-135.0, -45.0, 45.0, 135.0]
    assert len(betw) == n - 8
    front, back = [r.index for r in prim if az[r.index] == 90.0][0], [r.index for r in prim if az[r.index] == -90.0][0]
    for k in keys:
        assert k.partners == ((front,) if az[k.index] > 0 else (back,))
    for b in betw:
        a, c = b.partners
        assert roles[a].kind != "between" and roles[c].kind != "between"
        d_a = (b.azimuth - az[a]) % 360
        d_c = (az[c] - b.azimuth) % 360
        assert abs(d_a + d_c - 45.0) < 1e-6
        np.testing.assert_allclose(b.weights, (1 - d_a / 45.0, 1 - d_c / 45.0), atol=1e-9)
    t = tiers(n)
    assert [len(x) for x in t] == [4, 4] + ([n - 8] if n > 8 else []) and sorted(sum(t, [])) == list(range(n))


def test_reference_assignment_32():
    r = view_roles(32)
    assert r[24].azimuth == 90.0 and r[8].azimuth == -90.0 and r[24].kind == "primary"
    assert r[20].partners == (24,) and r[28].partners == (24,) and r[4].partners == (8,) and r[12].partners == (8,)
    assert r[17].partners == (16, 20) and r[17].weights == (0.75, 0.25)
    assert r[31].partners == (28, 0) and r[31].weights == (0.25, 0.75)
    with pytest.raises(ValueError, match="multiple of 8"):
        view_roles(30)


def test_sdedit_grid_and_ddim():
    assert tuple(sdedit_timesteps()) == SDEDIT_GRID and SDEDIT_GRID[0] == 142 and SDEDIT_GRID[-1] == 0
    steps = np.diff(SDEDIT_GRID)
    assert (steps < 0).all() and set(-steps) <= {20, 21}
    # consistent DDIM: with the true noise, every step lands exactly on the clean sample's trajectory
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ac = torch.linspace(0.9999, 0.01, 1000)
    x = ac[142].sqrt() * x0 + (1 - ac[142]).sqrt() * eps
    for k, t in enumerate(SDEDIT_GRID[:-1]):
        x = ddim_step(x, eps, ac[t], ac[SDEDIT_GRID[k + 1]])
        tp = SDEDIT_GRID[k + 1]
        np.testing.assert_allclose(x, ac[tp].sqrt() * x0 + (1 - ac[tp]).sqrt() * eps, atol=1e-5)
    np.testing.assert_allclose(ddim_step(x, eps, ac[0], torch.tensor(1.0)), x0, atol=1e-4)


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
    from tests.conftest import face
    from tests.test_guidance import tiny_guidance_cfg
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
    chunked = r.refine(rgb, pose, tc, tu, chunk=3)
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
