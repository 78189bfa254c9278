"""Stage-2 view-consistent refinement (VCR, method §7): SDEdit of turntable renders with mutual
attention and distance-guided attention fusion installed on the UNet's decoder self-attention
layers, denoising the views tier by tier (primaries, keys, in-betweens), each tier in as few batches
as the memory budget allows.

Fixes over the reference: the DDIM update uses the actual previous timestep of the custom grid
(method §12.10); any multiple of 8 views; batched tiers instead of 32 sequential passes; the ControlNet
sees text tokens only; VAE posterior mean (deterministic) instead of a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from threestudio.ops.vcr import SDEDIT_GRID, attention, ddim_step, fused_attention, tiers, view_roles
from threestudio.utils.gpu import BatchSizer, MemoryBudget
from threestudio.utils.typing import Float, Tensor


@dataclass
class VCRContext:
    """State shared by the VCR processors of one UNet."""

    lam: float = 0.55
    enabled: bool = False
    step: int = 0
    views: list = field(default_factory=list)
    roles: list = field(default_factory=list)
    store: dict = field(default_factory=dict)
    """(layer, view, step) -> attention input [2 (uncond, cond), L, C] of a primary/key view."""
    weights: dict = field(default_factory=dict)
    """(views, device, dtype) -> fusion weights [2·V, 2] of in-between views, made once on the device
    (a tensor built from a Python list in every layer would be a host-to-device copy that waits for the GPU)."""

    def fusion_weights(self, device, dtype) -> Tensor:
        """The in-between views' anchor weights (w_a, w_b) for the CFG batch [uncond, cond] of ``views``."""
        key = (tuple(self.views), str(device), dtype)
        if key not in self.weights:
            w = torch.tensor([self.roles[v].weights for v in self.views], dtype=dtype)
            self.weights[key] = w.repeat(2, 1).to(device)
        return self.weights[key]


class VCRAttnProcessor:
    """Self-attention processor implementing method §7.4 for the views in ``ctx.views``.

    The batch is the CFG batch ``[uncond views..., cond views...]``; each half attends to the same
    half of its partners. Outside refinement (``ctx.enabled`` false) it defers to ``base``.
    """

    def __init__(self, name: str, ctx: VCRContext, base):
        self.name, self.ctx, self.base = name, ctx, base

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        ctx = self.ctx
        if not ctx.enabled or encoder_hidden_states is not None or hidden_states.dim() != 3:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        V = len(ctx.views)
        B2, L, C = hidden_states.shape
        assert B2 == 2 * V, f"VCR expects the CFG batch [uncond, cond] of {V} views, got {B2}"
        kinds = {ctx.roles[v].kind for v in ctx.views}
        assert len(kinds) == 1, "one tier (one role kind) per batch"
        kind = kinds.pop()
        h = hidden_states.view(2, V, L, C)
        if kind != "between":
            for j, v in enumerate(ctx.views):
                ctx.store[(self.name, v, ctx.step)] = h[:, j].detach()

        def heads(x):
            return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        def partner(pos: int):
            hp = torch.stack([ctx.store[(self.name, ctx.roles[v].partners[pos], ctx.step)] for v in ctx.views], 1)
            return hp.reshape(B2, L, C)

        q = heads(attn.to_q(hidden_states))
        if kind == "primary":
            out = attention(q, heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states)))
        elif kind == "key":
            kv = torch.cat([hidden_states, partner(0)], dim=1)
            out = attention(q, heads(attn.to_k(kv)), heads(attn.to_v(kv)))
        else:
            ha, hb = partner(0), partner(1)
            w = ctx.fusion_weights(q.device, q.dtype)
            out = fused_attention(
                q,
                heads(attn.to_k(hidden_states)),
                heads(attn.to_v(hidden_states)),
                heads(attn.to_k(ha)),
                heads(attn.to_v(ha)),
                heads(attn.to_k(hb)),
                heads(attn.to_v(hb)),
                w[:, 0],
                w[:, 1],
                ctx.lam,
            )
        out = out.transpose(1, 2).reshape(B2, L, C).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def decoder_self_attention_layers(unet) -> list[str]:
    """Processor names of the decoder self-attentions (SD-1.5: the 9 of up_blocks.1-3)."""
    return [n for n in unet.attn_processors if n.startswith("up_blocks.") and n.endswith("attn1.processor")]


def install_vcr(unet, lam: float = 0.55) -> VCRContext:
    """Install VCR processors on the decoder self-attention layers (other processors kept)."""
    ctx = VCRContext(lam=lam)
    procs = dict(unet.attn_processors)
    for name in decoder_self_attention_layers(unet):
        base = procs[name]
        procs[name] = VCRAttnProcessor(name, ctx, base.base if isinstance(base, VCRAttnProcessor) else base)
    unet.set_attn_processor(procs)
    return ctx


class VCRRefiner:
    """Runs VCR with a loaded :class:`FaceIDControlNetGuidance` (its UNet, ControlNet, VAE and
    identity branches).

    Each UNet batch's latents are VAE-decoded at once, inside the batch's memory measurement, unless
    ``decode_apart``.

    Attributes:
        decode_apart: False (default): as above. True: decoded in batches measured on their own. A
            view's 1024² decode needs about three times the memory of its two UNet rows at 128²
            latents (estimated: the decoder's last up block holds 1024² × 256-channel activations), so
            under a budget the UNet batches can then be about three times larger. Each view is denoised
            and decoded on its own either way, so the images are the same. Opt-in because it was
            slower: on an H100 under a 22 GiB cap the last tier's UNet batches grew from 4 to 7 views,
            the first of them ran out of memory and was run again smaller (:meth:`BatchSizer.attempt`),
            and the refinement took 24.6 s against 22.4 s for the default
            (``bench/results/refine_views_h100_cap22_decode_apart.json``).
        batches: the last :meth:`refine`'s batches in order, ``[what, views]`` with ``what`` one of
            ``encode``, ``unet`` (one batch of a tier, all its DDIM steps), ``decode``.
    """

    def __init__(
        self,
        guidance,
        lam: float = 0.55,
        guidance_scale: float = 7.5,
        ip_adapter_scale: float = 0.6,
        ip_adapter_shortcut_scale: float = 0.5,
        grid=SDEDIT_GRID,
        seed: int = 2024,
        decode_apart: bool = False,
    ):
        self.guidance, self.guidance_scale, self.grid, self.seed = guidance, guidance_scale, list(grid), seed
        self.decode_apart = bool(decode_apart)
        self.ctx = install_vcr(guidance.unet, lam)
        self.batches: list[list] = []
        guidance.set_ip_adapter_scale(ip_adapter_scale, ip_adapter_shortcut_scale)

    @torch.no_grad()
    def encode(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 4 h w"]:
        """VAE posterior mean of renders in [0, 1] (scaled latents)."""
        x = (2 * rgb.permute(0, 3, 1, 2) - 1).to(self.guidance.device, self.guidance.dtype)
        return self.guidance.vae.encode(x).latent_dist.mode() * self.guidance.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, z: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B H W 3"]:
        """Images in [0, 1]; a non-finite fp16 decode (VAE overflow) is redone in fp32."""
        return self.guidance.decode_latents(z)

    def _chunked(self, fn, n: int, sizer: BatchSizer, what: str) -> list:
        """``fn(slice)`` over 0..n-1 in batches sized by ``sizer`` (recorded in :attr:`batches` as ``what``)."""
        outs, s = [], 0
        while s < n:
            size = sizer.size(n - s)
            done, out = sizer.attempt(size, lambda: fn(slice(s, s + size)))  # noqa: B023 - called at once
            if done:
                outs.append(out)
                self.batches.append([what, size])
                s += size
        return outs

    @torch.no_grad()
    def refine(
        self,
        rgb: Float[Tensor, "n H W 3"],
        pose: Float[Tensor, "n H W 3"],
        text_cond: Tensor,
        text_uncond: Tensor,
        chunk: int = 0,
        sequential: bool = False,
        budget: MemoryBudget | None = None,
        on_refined: Callable[[list[int], Tensor], None] | None = None,
    ) -> Float[Tensor, "n H W 3"]:
        """Refine n ring views (method §7.2-7.4).

        Args:
            rgb, pose: [n, H, W, 3] renders and OpenPose images in [0, 1], ring order (n % 8 == 0);
                any device (moved to the guidance device one batch at a time).
            text_cond, text_uncond: [n, 77, D] per-view prompt and negative-prompt embeddings.
            chunk: views per UNet batch (and per VAE decode) inside a tier; 0 = as many as ``budget``
                allows (measured: each tier's first UNet batch, and with ``decode_apart`` the first
                decode, are one view), or the whole tier without a limited budget.
            sequential: one view at a time in the reference order (for tests/benchmarks).
            budget: GPU memory budget that sizes the batches (None or CPU: unlimited).
            on_refined: called with each batch's views and their refined images [k, H, W, 3] (on the
                CPU) as soon as they are done, e.g. to write them while the next batch is refined.

        Returns:
            refined images [n, H, W, 3] in [0, 1] (float32, on the CPU).
        """
        dev = self.guidance.device
        n = rgb.shape[0]
        self.ctx.roles = view_roles(n)
        self.ctx.store.clear()
        self.ctx.weights.clear()
        fixed = 1 if sequential else chunk
        self.batches = []
        z0 = torch.cat(self._chunked(lambda sl: self.encode(rgb[sl]), n, BatchSizer(budget, fixed), "encode"))
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn((1,) + z0.shape[1:], generator=gen).to(dev, z0.dtype)
        out = torch.zeros(n, *rgb.shape[1:3], 3)
        decoding = BatchSizer(budget, fixed)  # one view's 1024² decode costs the same in every tier
        levels = tiers(n)
        anchors = len(levels[0]) + len(levels[1])
        store_per_view, stored = 0, 0
        self.ctx.enabled = True
        try:
            for tier in levels:
                sizer = BatchSizer(budget, fixed)  # each tier measures its own per-view cost
                s = 0
                while s < len(tier):
                    between = self.ctx.roles[tier[s]].kind == "between"
                    pending = 0 if between else (anchors - stored) * store_per_view
                    grp = tier[s : s + sizer.size(len(tier) - s, reserve=pending)]
                    before = budget.allocated() if budget is not None else 0

                    def batch(grp=grp):  # its latents, or (default) their decoded images, in one measurement
                        z = self._denoise(grp, z0, noise, pose, text_cond, text_uncond)
                        return z if self.decode_apart else self.decode(z).cpu()

                    done, res = sizer.attempt(len(grp), batch)
                    if not done:  # out of memory: the same views again in smaller batches
                        continue
                    self.batches.append(["unet", len(grp)])
                    if self.decode_apart:
                        res = torch.cat(
                            self._chunked(lambda sl, z=res: self.decode(z[sl]).cpu(), len(grp), decoding, "decode")
                        )
                    else:
                        self.batches.append(["decode", len(grp)])
                    out[grp] = res
                    del res
                    if on_refined is not None:
                        on_refined(grp, out[grp])
                    if not between:
                        stored += len(grp)
                        if budget is not None and budget.limited:
                            store_per_view = max(store_per_view, (budget.allocated() - before) // len(grp))
                    s += len(grp)
        finally:
            self.ctx.enabled = False
            self.ctx.store.clear()
        return out

    def _denoise(self, grp: list[int], z0, noise, pose, text_cond, text_uncond) -> Float[Tensor, "k 4 h w"]:
        """SDEdit of the views ``grp`` (one batch of one tier) from t = grid[0] to 0: their clean latents."""
        guidance = self.guidance
        dev, ac = guidance.device, guidance.alphas_cumprod
        self.ctx.views = grp
        t0 = self.grid[0]
        z = ac[t0].sqrt() * z0[grp] + (1 - ac[t0]).sqrt() * noise
        text = torch.cat([text_uncond[grp], text_cond[grp]]).to(dev, guidance.dtype)
        size = (z0.shape[-2] * guidance.vae_scale_factor, z0.shape[-1] * guidance.vae_scale_factor)
        p = F.interpolate(
            pose[grp].permute(0, 3, 1, 2).float().to(dev), size=size, mode="bilinear", align_corners=False
        ).to(guidance.dtype)
        br = guidance.branches
        for k, t in enumerate(self.grid):
            self.ctx.step = k
            tt = torch.full((2 * len(grp),), t, device=dev, dtype=torch.long)
            eps = guidance.predict_noise(torch.cat([z, z]), tt, text, [br["neg"], br["pos"]], p).float()
            e_u, e_c = eps.chunk(2)
            e = e_u + self.guidance_scale * (e_c - e_u)
            a_prev = ac[self.grid[k + 1]] if k + 1 < len(self.grid) else ac[0]
            z = ddim_step(z.float(), e, ac[t], a_prev).to(guidance.dtype)
        return z
