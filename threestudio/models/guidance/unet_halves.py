"""The SD-1.5 UNet forward of diffusers' ``UNet2DConditionModel`` in two halves, so that the
ControlNet can run beside the UNet's encoder half.

A ControlNet's residuals enter the UNet only after its last down block (they are added to the skip
connections and to the mid block's output), so the UNet's time embedding, ``conv_in`` and down
blocks do not depend on the ControlNet. :func:`unet_encode` is that first half, :func:`unet_decode`
the rest (residual sums, mid block, up blocks, output head). ``unet_decode(unet, *unet_encode(...))``
runs the same modules on the same tensors in the same order as ``unet(...)``: the same numbers.

Only the configurations the guidance uses are covered (:func:`supports_halves`): no class or
addition embedding, no time-embedding activation, no centred input, no attention masks, no GLIGEN or
T2I-Adapter inputs; IP-Adapter image tokens through ``added_cond_kwargs={"image_embeds": [...]}``.
"""

from __future__ import annotations

import typing

from threestudio.utils.typing import Tensor


def supports_halves(unet) -> bool:
    """Whether :func:`unet_encode` / :func:`unet_decode` reproduce ``unet``'s forward: a
    ``UNet2DConditionModel`` without the optional inputs those functions leave out (module docstring)."""
    c = getattr(unet, "config", None)
    if c is None or type(unet).__name__ != "UNet2DConditionModel":
        return False
    return (
        getattr(unet, "class_embedding", None) is None
        and c.get("addition_embed_type") is None
        and getattr(unet, "time_embed_act", None) is None
        and not c.get("center_input_sample", False)
        and getattr(unet, "mid_block", None) is not None
        and getattr(unet, "position_net", None) is None
    )


@typing.no_type_check  # compiled and saved by reference (threestudio.utils.aot): no test-time type-check wrapper
def unet_encode(unet, latents_t: Tensor, t: Tensor, text: Tensor, ids: Tensor) -> tuple:
    """The UNet's first half: time embedding, encoder tokens (text + IP-Adapter image tokens), ``conv_in``
    and the down blocks.

    Args:
        unet: a ``UNet2DConditionModel`` for which :func:`supports_halves` holds.
        latents_t: [n, 4, h, w] noisy latents; t: [n] timesteps; text: [n, L, D] text tokens;
        ids: the IP-Adapter image embeddings (FaceID: [n, 1, 512]), or None without an IP-Adapter.

    Returns:
        ``(sample, emb, text_tokens, image_tokens, *skips)``: the last down block's output (None when it
        is the last skip connection, as in SD-1.5), the time
        embedding [n, E], the encoder tokens the cross-attentions read (``image_tokens`` None without an
        IP-Adapter) and the skip connections of every down block, in diffusers' order."""
    emb = unet.time_embedding(unet.get_time_embed(sample=latents_t, timestep=t), None)
    added = {"image_embeds": [ids]} if ids is not None else None
    ehs = unet.process_encoder_hidden_states(encoder_hidden_states=text, added_cond_kwargs=added)
    sample = unet.conv_in(latents_t)
    skips = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=ehs)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        skips += res
    text_tokens, image_tokens = ehs if isinstance(ehs, tuple) else (ehs, None)
    image_tokens = image_tokens[0] if isinstance(image_tokens, list) else image_tokens
    # SD-1.5's last down block has no down-sampler: its output is also its last skip connection; the
    # same tensor twice would be an aliased argument of a compiled unet_decode
    return (None if sample is skips[-1] else sample, emb, text_tokens, image_tokens, *skips)


@typing.no_type_check  # compiled and saved by reference (threestudio.utils.aot): no test-time type-check wrapper
def unet_decode(unet, n_skips: int, sample, emb, text_tokens, image_tokens, *rest) -> Tensor:
    """The UNet's second half after :func:`unet_encode`: the ControlNet residuals added to the skip
    connections and to the mid block's output, the mid block, the up blocks and the output head.

    Args:
        n_skips: how many skip connections :func:`unet_encode` returned (12 for SD-1.5).
        sample, emb, text_tokens, image_tokens: :func:`unet_encode`'s first four outputs.
        rest: the ``n_skips`` skip connections, then the ControlNet's ``n_skips`` down-block residuals
            and its mid-block residual (or nothing after the skips: no ControlNet).

    Returns:
        [n, 4, h, w] predicted noise."""
    skips, control = rest[:n_skips], rest[n_skips:]
    sample = skips[-1] if sample is None else sample
    ehs = text_tokens if image_tokens is None else (text_tokens, [image_tokens])
    if control:
        skips = tuple(s + r for s, r in zip(skips, control[:n_skips], strict=True))
    sample = unet.mid_block(sample, emb, encoder_hidden_states=ehs)
    if control:
        sample = sample + control[n_skips]
    factor = 2**unet.num_upsamplers
    uneven = any(d % factor for d in skips[0].shape[-2:])  # conv_in keeps the latents' size
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and uneven:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                encoder_hidden_states=ehs,
                upsample_size=upsample_size,
            )
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def unet_forward(unet, latents_t: Tensor, t: Tensor, text: Tensor, ids, down=(), mid=None) -> Tensor:
    """``unet(latents_t, t, text, added_cond_kwargs=..., down_block_additional_residuals=down,
    mid_block_additional_residual=mid).sample`` through the two halves (the same numbers)."""
    enc = unet_encode(unet, latents_t, t, text, ids)
    control = (*down, mid) if mid is not None else ()
    return unet_decode(unet, len(enc) - 4, *enc, *control)
