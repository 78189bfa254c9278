"""Stage-1 guidance: Realistic Vision (SD-1.5) + sd-vae-ft-mse + OpenPose ControlNet + IP-Adapter
FaceID-Plus-v2 with the CLIP ViT-H image encoder (method §5), producing the AHDS / ANPG score
distillation gradient (method §6).

Everything is loaded with diffusers/transformers ``from_pretrained`` (hub ids or local folders) and
``load_ip_adapter``; the same code loads the tiny random models of the ``tiny`` preset. Fixes over
the reference: bf16 (not fp16) on GPU; the ControlNet sees the 77 text tokens only (method §5.2);
the CLIP crop is RGB; the timestep schedule follows the configured step count.
"""

from __future__ import annotations

import importlib.util
import time
import typing
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.face.identity import FaceIdentity
from threestudio.models.guidance.hub import download_hint, is_available, stored_float_dtype
from threestudio.models.guidance.unet_halves import supports_halves, unet_decode, unet_encode
from threestudio.ops.norm import group_norm_channel_stats
from threestudio.ops.sds import AHDSSchedule, anpg_gradient, clip_grad_per_pixel, scale_grad, sds_loss
from threestudio.utils import handover
from threestudio.utils.aot import DiskCompiled, DiskCompiledModule
from threestudio.utils.base import BaseObject
from threestudio.utils.errors import MissingModelError
from threestudio.utils.gpu import resolve_dtype, same_device, to_device_async
from threestudio.utils.io import persist_compile_cache
from threestudio.utils.typing import Float, Tensor


class GroupNormKind(str, Enum):
    """How the compiled VAE encoder's GroupNorms compute their statistics (``vae_group_norm``)."""

    native = "native"
    channel_stats = "channel_stats"


class ChannelStatsGroupNorm(torch.nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) whose forward is
    :func:`~threestudio.ops.norm.group_norm_channel_stats`: statistics per channel over the spatial
    axes first, then per group. Input [B, C, *S]; same output up to fp32 rounding."""

    @typing.no_type_check  # inside saved compiled code: no test-time type-check wrapper (threestudio.utils.aot)
    def forward(self, x: Tensor) -> Tensor:
        return group_norm_channel_stats(x, self.num_groups, self.weight, self.bias, self.eps)


class VAEAttention(str, Enum):
    """Attention of the VAE's self-attention (``vae_attention``)."""

    bmm = "bmm"
    math = "math"
    auto = "auto"


@dataclass
class ConditioningBranch:
    """One of the three ANPG branches: ArcFace id [1, 512] and CLIP penultimate states [1, L, C]."""

    id_embeds: Tensor
    clip_embeds: Tensor


@typing.no_type_check  # saved by reference: must stay this module-level object (no test-time type-check wrapper)
def noise_prediction(
    controlnet,
    unet,
    latents_t: Tensor,
    t: Tensor,
    text: Tensor,
    ids: Tensor,
    clip: Tensor,
    pose: Tensor,
    rows: Tensor,
    controlnet_scale: float,
) -> Tensor:
    """ε̂ of the ControlNet-conditioned UNet with IP-Adapter FaceID-Plus-v2 (method §5) for n rows that
    share the pose images of P views. A module-level function of its arguments so that it can be
    compiled once and kept on disk (:class:`~threestudio.utils.aot.DiskCompiled`, with a dynamic row
    count n). Sets the IP-Adapter projection's ``clip_embeds`` to ``clip`` (diffusers reads the CLIP
    tokens of FaceID-Plus from there). Each view's pose is embedded once by the ControlNet's
    conditioning embedding (a :class:`SharedPoseEmbedding`) and the embeddings are gathered per row.

    Args:
        latents_t: [n, 4, h, w] noisy latents in the network dtype; t: [n] int64 timesteps;
        text: [n, 77, D] text tokens; ids: [n, 1, 512] ArcFace embeddings; clip: [n, 1, L, C] CLIP
        penultimate states of each row's identity image;
        pose: [P, 3, h·f, w·f] OpenPose images in [0, 1] (f: VAE factor);
        rows: [n] int64, the view (index into ``pose``) of each row;
        controlnet_scale: ControlNet residual scale.

    Returns:
        [n, 4, h, w] predicted noise, network dtype."""
    unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = clip
    *down, mid = controlnet_residuals(controlnet, latents_t, t, text, pose, rows, controlnet_scale)
    return unet(
        latents_t,
        t,
        encoder_hidden_states=text,
        added_cond_kwargs={"image_embeds": [ids]},
        down_block_additional_residuals=tuple(down),
        mid_block_additional_residual=mid,
    ).sample


NOISE_PREDICTION_DYNAMIC_ROWS = (2, 3, 4, 5, 6, 8)
"""Arguments of :func:`noise_prediction` whose dim 0 is the row count n (compiled as a dynamic size)."""
DYNAMIC_ROWS_OPTIONS = {"force_layout_optimization": True}
"""Inductor options of the noise prediction compiled with a dynamic row count: with a symbolic batch size
Inductor turns its channels-last layout optimisation for convolutions off (its heuristic); on an H200
the 12-row step took 78.2 instead of 71.2 ms with the layout forced back on, as here."""


def compiled_noise_prediction(dynamic_rows: bool = True, backend: str = "inductor") -> DiskCompiled:
    """:func:`noise_prediction` compiled as stage 1 compiles it (:class:`~threestudio.utils.aot.DiskCompiled`):
    with a dynamic row count (one function for the 8-12 rows of ``skip_unused_negative``) and
    :data:`DYNAMIC_ROWS_OPTIONS`, or for fixed shapes with Inductor's defaults."""
    return DiskCompiled(
        noise_prediction,
        "noise-prediction",
        DYNAMIC_ROWS_OPTIONS if dynamic_rows else None,
        backend=backend,
        dynamic_batch=NOISE_PREDICTION_DYNAMIC_ROWS if dynamic_rows else (),
    )


@typing.no_type_check  # saved by reference: must stay this module-level object (no test-time type-check wrapper)
def controlnet_residuals(
    controlnet, latents_t: Tensor, t: Tensor, text: Tensor, pose: Tensor, rows: Tensor, controlnet_scale: float
) -> tuple:
    """The ControlNet part of :func:`noise_prediction` (same arguments; each view's pose embedded once,
    the embeddings gathered per row): its 12 down-block residuals (SD-1.5) and its mid-block residual,
    as one flat tuple."""
    down, mid = controlnet(
        latents_t,
        t,
        encoder_hidden_states=text,
        controlnet_cond=controlnet.controlnet_cond_embedding(pose)[rows],
        conditioning_scale=controlnet_scale,
        return_dict=False,
    )
    return (*down, mid)


@typing.no_type_check  # saved by reference: must stay this module-level object (no test-time type-check wrapper)
def faceid_unet_encode(unet, latents_t: Tensor, t: Tensor, text: Tensor, ids: Tensor, clip: Tensor) -> tuple:
    """:func:`~threestudio.models.guidance.unet_halves.unet_encode` with FaceID-Plus-v2's CLIP tokens
    ``clip`` [n, 1, L, C] set on the IP-Adapter projection first (as :func:`noise_prediction` does)."""
    unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = clip
    return unet_encode(unet, latents_t, t, text, ids)


class TwoStreamNoisePrediction:
    """:func:`noise_prediction` (same arguments and result) with the ControlNet on a second CUDA stream
    while the UNet's time embedding, ``conv_in`` and down blocks run on the current one
    (:mod:`~threestudio.models.guidance.unet_halves`: the ControlNet's residuals enter the UNet only
    after its down blocks); then the rest of the UNet. The same modules on the same tensors: the same
    numbers. At stage 1's 8-12 rows of 64² latents the kernels of either network alone leave part
    of the GPU idle. Inside a CUDA-graph capture the two streams become two branches of the graph. Off
    CUDA the three parts run one after the other.

    Args:
        compiled: compile the three parts with :class:`~threestudio.utils.aot.DiskCompiled` (dynamic row
            count, Inductor's channels-last layout forced as for :func:`noise_prediction`), else eager.
        backend: their ``torch.compile`` backend (tests use ``aot_eager``)."""

    def __init__(self, compiled: bool = False, backend: str = "inductor"):
        self.compiled, self.backend = compiled, backend
        self.control, self.encode, self.decode = controlnet_residuals, faceid_unet_encode, unet_decode
        if compiled:
            self.control = self._compiled(controlnet_residuals, "controlnet-residuals", (1, 2, 3, 5))
            self.encode = self._compiled(faceid_unet_encode, "unet-encode", (1, 2, 3, 4, 5))
            self.decode = None  # made at the first call: its tensor arguments depend on the UNet's skip count
        self._streams: dict = {}

    def _compiled(self, fn, name: str, rows: tuple[int, ...]) -> DiskCompiled:
        return DiskCompiled(fn, name, DYNAMIC_ROWS_OPTIONS, backend=self.backend, dynamic_batch=rows)

    @property
    def parts(self) -> tuple:
        """The ControlNet, UNet-encoder and UNet-decoder parts (functions, or :class:`DiskCompiled` ones;
        the decoder part is None until the first compiled call)."""
        return self.control, self.encode, self.decode

    def clear(self) -> None:
        """Forget the compiled signatures (after a module attribute such as an IP-Adapter scale changed)."""
        for part in self.parts:
            if isinstance(part, DiskCompiled):
                part.clear()

    @property
    def last_source(self) -> str | None:
        """Where the compiled parts' last prepared signatures came from (:attr:`DiskCompiled.last_source`:
        ``disk``, ``compiled`` or ``fallback``; several joined by ``+`` when they differ), None if eager
        or not called yet."""
        parts = [p.last_source for p in self.parts if isinstance(p, DiskCompiled)]
        if not parts or None in parts:
            return None
        return "+".join(sorted(set(parts)))

    def _side(self, device: torch.device):
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    def __call__(self, controlnet, unet, latents_t, t, text, ids, clip, pose, rows, controlnet_scale):
        cuda = latents_t.is_cuda
        if cuda:
            main = torch.cuda.current_stream(latents_t.device)
            side = self._side(latents_t.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                control = self.control(controlnet, latents_t, t, text, pose, rows, controlnet_scale)
        else:
            control = self.control(controlnet, latents_t, t, text, pose, rows, controlnet_scale)
        enc = self.encode(unet, latents_t, t, text, ids, clip)
        # the image tokens are made: the CLIP tokens left on the projection (n rows) would otherwise enter
        # unet_decode's key as a tensor attribute of the UNet, and a process whose first call has
        # another row count would compile it again instead of loading the saved file
        unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = None
        if cuda:
            main.wait_stream(side)
            if not torch.cuda.is_current_stream_capturing():  # a graph's blocks stay in its pool
                for x in control:
                    x.record_stream(main)
        args = (unet, len(enc) - 4, *enc, *control)
        if self.decode is None:
            self.decode = self._compiled(
                unet_decode, "unet-decode", tuple(i for i, a in enumerate(args) if isinstance(a, Tensor))
            )
        return self.decode(*args)


class SharedPoseEmbedding(torch.nn.Module):
    """Wraps the ControlNet's conditioning embedding (same parameters): an input that already is an
    embedding ([n, C_out, h, w], C_out = the embedding's ``conv_out`` channels) passes through
    unchanged, pose images [n, 3, H, W] are embedded as before. :func:`noise_prediction` embeds each
    view's pose once and hands the ControlNet the embeddings of its rows."""

    def __init__(self, embedding: torch.nn.Module):
        super().__init__()
        self.embedding = embedding
        self.channels = int(embedding.conv_out.out_channels)

    @typing.no_type_check  # inside saved compiled code: no test-time type-check wrapper (threestudio.utils.aot)
    def forward(self, conditioning: Tensor) -> Tensor:
        if conditioning.shape[1] == self.channels:
            return conditioning
        return self.embedding(conditioning)


def fuse_adapter_lora(pipe) -> list[str]:
    """Merge every LoRA adapter loaded into ``pipe.unet`` (IP-Adapter FaceID's ``faceid_<i>``, at the
    weights ``load_ip_adapter`` set) into the base projections and remove the LoRA layers (diffusers'
    ``fuse_lora`` + ``unload_lora_weights``): ``W ← W + scaling · B @ A``, in the weights' dtype (call it
    before casting float32 weights down), on a GPU with full float32 matmuls (no TF32, whatever
    ``torch.set_float32_matmul_precision`` says). Returns the merged adapters' names ([] when none is loaded)."""
    names = list(getattr(pipe.unet, "peft_config", None) or {})
    if names:
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=names)
        finally:
            torch.set_float32_matmul_precision(precision)
        pipe.unload_lora_weights()
    return names


def use_channel_stats_group_norm(module: torch.nn.Module) -> int:
    """Turn every ``nn.GroupNorm`` inside ``module`` into a :class:`ChannelStatsGroupNorm` in place
    (parameters untouched); returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is torch.nn.GroupNorm:
            m.__class__ = ChannelStatsGroupNorm
            n += 1
    return n


HANDOVER_KEY = "faceid-controlnet-guidance"
"""Key of the networks :meth:`FaceIDControlNetGuidance.hand_over` leaves in :mod:`threestudio.utils.handover`."""

ADOPTABLE_OPTIONS = frozenset(
    {
        "n_steps",
        "channels_last",
        "ip_adapter_scale",
        "ip_adapter_shortcut_scale",
        "compile_vae_encoder",
        "compile_denoiser",
        "vae_layout_optimization",
        "vae_group_norm",
        "skip_unused_negative",
        "controlnet_stream",
    }
)
"""Options a handed-over guidance takes on after loading (memory layout, scales, schedule length, compilation); all
others must be equal for :meth:`FaceIDControlNetGuidance.serves`."""


def _plain(cfg) -> dict:
    """A config (structured or dict) as a plain, resolved dict."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True) if not isinstance(cfg, dict) else dict(cfg)


@threestudio.register("faceid-controlnet-guidance")
class FaceIDControlNetGuidance(BaseObject):
    @dataclass
    class Config:
        pretrained_model_name_or_path: str = "SG161222/Realistic_Vision_V4.0_noVAE"
        """UNet, text encoder and tokenizer (diffusers layout)."""
        vae_name_or_path: str = "stabilityai/sd-vae-ft-mse"
        """VAE (hub id or local folder)."""
        controlnet_name_or_path: str = "lllyasviel/control_v11p_sd15_openpose"
        """OpenPose ControlNet (hub id or local folder)."""
        ip_adapter_name_or_path: str = "h94/IP-Adapter-FaceID"
        """Repository or folder holding the IP-Adapter weight file."""
        ip_adapter_weight_name: str = "ip-adapter-faceid-plusv2_sd15.bin"
        """IP-Adapter FaceID-Plus-v2 weight file name."""
        image_encoder_name_or_path: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        """CLIP ViT-H/14 image encoder of IP-Adapter FaceID-Plus-v2 (hub id or local folder)."""
        irr_image_path: str = "${repo:'threestudio/assets/irr_woman.png'}"
        """Irrelevant identity for the null branch (method §5.2)."""
        face: FaceIdentity.Config = field(default_factory=FaceIdentity.Config)
        """Config of the face identity extractor (``insightface-face-id``)."""
        local_files_only: bool = True
        """Never download at run time (set false to let diffusers fetch missing weights)."""
        dtype: str = "auto"
        """``auto`` = bf16 on CUDA cards that support it (``torch.cuda.is_bf16_supported()``), fp16 on
        other CUDA cards (V100, T4, RTX 20xx), fp32 on CPU; or ``bf16`` / ``fp16`` / ``fp32``."""
        fp16_grad_scale: float = 1024.0
        """fp16 only: the SDS gradient is multiplied by this while it flows back through the fp16 VAE
        encoder and divided again at the fp32 renders, so that it does not underflow (|dL/dz| <= 0.25/B)."""
        guidance_scale: float = 7.5
        """CFG scale s of ANPG (method §6.1 step 5)."""
        ip_adapter_scale: float = 0.5
        """IP-Adapter attention scale (method §5.2, stage 1)."""
        ip_adapter_shortcut_scale: float = 0.4
        """FaceID-Plus-v2 shortcut scale s (tokens = x + s·perceiver)."""
        controlnet_scale: float = 1.0
        """ControlNet conditioning scale."""
        anpg_t_threshold: int = 170
        """Below this timestep ANPG drops the negative-prompt term (method §6.1 step 5)."""
        grad_clip_threshold: float = 0.25
        """Per-latent-pixel L2 bound (over the 4 channels) of the SDS gradient; <= 0 disables. The
        reference clipped each latent *row* (64 values along the width, method §6.1 step 6) to 1.0; the
        same budget per latent value, 1.0 · sqrt(4 / 64) = 0.25 per 4-channel pixel, bounds the whole
        [4, 64, 64] gradient by the same L2 norm (16) as the reference's 4 x 64 rows of norm 1."""
        sds_resolution: int = 512
        """Renders are resized to this before VAE encoding (method §6.1 step 1)."""
        max_t: int = 800
        """Largest sampled timestep + 1 (AHDS prior support, method §6.2)."""
        n_steps: int = 0
        """Steps the AHDS schedule spans (>= 1). ``AHDSSystem`` sets it to ``trainer.max_steps`` when 0;
        code that calls the guidance itself must set it (0 raises instead of a 1-step schedule)."""
        channels_last: bool = False
        """Keep the frozen UNet, ControlNet and VAE (and their inputs) in channels-last memory layout
        on CUDA (same math; speed only). Off: on an H200 in bf16 it made the paper-settings step slower
        (92 ms against 84 ms, ``bench/results/stage1_step_h200_ablations.json``); channels-last for the VAE
        encoder alone was slower too (90 against 82 ms): its GroupNorm kernels lose more than the cuDNN
        layout conversions it saves."""
        vae_attention: VAEAttention = VAEAttention.bmm
        """The VAE's self-attention (one head of size 512 over the 64² latent pixels) in the encoder's
        forward and backward: ``bmm`` (diffusers' ``AttnProcessor``: two batched matmuls in the
        network dtype, the softmax in fp32 as the VAE's ``upcast_softmax`` asks); ``math`` (PyTorch's
        SDPA math backend, which since torch 2.5 runs bf16/fp16 inputs as fp32 matmuls without tensor
        cores); ``auto`` (PyTorch's SDPA choice: at head size 512 only the slow memory-efficient
        kernel applies). The same attention; the bf16 rounding of the scores differs slightly."""
        compile_vae_encoder: bool = True
        """``torch.compile`` the VAE encoder (its forward and backward run every step) on CUDA when Triton
        is installed (it ships with CUDA builds of torch on Linux). Same math. On an H200 it takes the
        paper-settings step from 98 to 84 ms and its peak memory from 11.2 to 9.2 GiB
        (``bench/results/stage1_step_h200_ablations.json``). Compiled code is kept on disk as for
        ``compile_denoiser``."""
        compile_denoiser: bool = True
        """``torch.compile`` the UNet and the ControlNet (the 2B- to 3B-row noise prediction of every step)
        on CUDA when Triton is installed: fused GroupNorm/SiLU/residual kernels, same math. On an H200
        it takes the step from 103 to 84 ms. Both compiled functions (this one and the VAE encoder's
        forward + backward) are compiled once per input signature ahead of time and kept whole in
        ``$GIP_CACHE_DIR/aot`` (:class:`~threestudio.utils.aot.DiskCompiled`; their kernels also in
        ``$TORCHINDUCTOR_CACHE_DIR``, by default ``$GIP_CACHE_DIR/inductor``), so only the first run on
        a machine pays the compilation and later runs skip Dynamo's tracing too. Measured on an H200:
        the first step takes 127-185 s with an empty cache, 17-25 s with Inductor's cache alone (Dynamo
        traced the networks again: about 17 s) and 5-7 s with the saved functions; the compiled
        step saves about 21 ms (compiled VAE encoder only: 107 ms, both: 84 ms), about 50 s over 2400
        steps, so the compilation pays for itself from the second run on a machine. For a single run
        on a fresh machine ``compile_denoiser=false`` is faster (a cold compile costs about 100-116 s; on a cold
        cache the whole pipeline took 419 s eager against 469 s compiled, before stage 3's loss-box rounding
        saved 20-28 s of both; compiled: 405 s cold, 316 s warm).
        Inductor already runs the attention with cuDNN's fused kernel there (eager PyTorch 2.11 picks it
        too at stage 2's shapes: putting it first changed neither the time nor the output of VCR).
        Compiling each UNet / ControlNet block on its own instead ("regional compilation") was measured
        and dropped: 89.6 against 80.0 ms per step, no shorter first step."""
        vae_layout_optimization: bool = True
        """Let Inductor keep the compiled VAE encoder's activations in channels-last (its
        ``force_layout_optimization``): no NCHW↔NHWC conversions around each cuDNN convolution, the
        GroupNorms generated for that layout. Same math. Only with ``compile_vae_encoder``. On an
        H200 the encoder's forward + backward (4 × 512², bf16) takes 31.9 instead of 34.0 ms and the
        paper-settings step 79.5 instead of 80.5 ms (``bench/stage1_step.py --variants ours_bf16
        ours_without_vae_layout_optimization``)."""
        vae_group_norm: GroupNormKind = GroupNormKind.channel_stats
        """The compiled VAE encoder's GroupNorms (only with ``compile_vae_encoder`` and
        ``vae_layout_optimization``): ``channel_stats`` computes each channel's mean and variance over
        the pixels first and the group's from them (:func:`~threestudio.ops.norm.group_norm_channel_stats`:
        the same function, fp32 statistics); ``native`` lets Inductor decompose ``nn.GroupNorm``,
        whose reductions over a group's few channels of every pixel read channels-last activations
        scattered (on an H200 its 512² GroupNorm statistics ran at about 300 GB/s). On an H200 the
        encoder's forward + backward (4 × 512², bf16) takes 27.3 instead of 33.2 ms and the
        paper-settings step 71.9 instead of 79.5 ms (``bench/stage1_step.py --variants ours_bf16
        ours_with_native_vae_group_norm``); both bf16 encoders are equally far from the fp32 one."""
        cuda_graph: bool = True
        """Replay the no-grad ControlNet + UNet noise prediction from a CUDA graph on CUDA, one graph per
        row count (all in one memory pool): no kernel-launch overhead, same kernels and numbers."""
        skip_unused_negative: bool = True
        """Run the negative branch only for the views whose timestep is at least ``anpg_t_threshold``:
        below it ANPG's gradient does not use ε_neg (method §6.1 step 5), so the same gradient costs
        fewer UNet + ControlNet rows (4 + 4 + 0..4 instead of 12 at batch 4; over the paper's 2400-step
        schedule 24 % of the negative rows, from step 1500 on about 41 %). On an H200 the paper-settings
        step from step 1500 took 68.8 ms (``bench/stage1_step.py``), the whole pipeline 262 s against
        272 s before. The UNet + ControlNet are then compiled with a dynamic row count (one file) and
        captured in one CUDA graph per row count. Off: every branch for every view, as the reference
        code ran it, compiled for 12 rows."""
        controlnet_stream: bool = True
        """Run the ControlNet on a second CUDA stream while the UNet's time embedding, ``conv_in`` and down
        blocks run (:class:`TwoStreamNoisePrediction`; its residuals enter the UNet only after the down
        blocks). The same modules on the same tensors: the same numbers (a CPU test compares them). On
        an H100 the paper-settings stage-1 step took 67.1 ms, against 69.2-70.6 ms with one stream in
        earlier runs (``bench/results/stage1_step_h100_two_streams.json``). With the eager networks
        replayed from CUDA graphs, 8 rows took 39.7 instead of 41.2 ms (``bench/denoiser_streams.py``).
        Stage 2 (eager, 128² latents) gained nothing, so ``RefineSystem`` turns it off unless asked.
        Off: the ControlNet, then the whole UNet (:func:`noise_prediction`), as diffusers' pipelines run
        them."""
        fuse_lora: bool = True
        """Merge IP-Adapter FaceID-Plus-v2's LoRA (rank 128 on the query, key, value and output
        projections of every UNet attention, lora_scale 1.0, method §5.2) into those projections' weights
        once at load: W ← W + scale·B·A in float32, before the cast to the network dtype (diffusers'
        ``fuse_lora`` then ``unload_lora_weights``). The same function with one matmul per projection
        instead of three and an add (the outputs differ only by the rounding of W in the network
        dtype). Off: the low-rank matmuls run separately in every forward, as in the reference code."""
        share_pose_embedding: bool = True
        """Embed each view's OpenPose image once with the ControlNet's conditioning embedding and hand it
        to that view's rows of every branch (:class:`SharedPoseEmbedding`; the same numbers). Off: every
        row embeds its pose image itself (the reference code's 3B = 12 embeddings of 512² images)."""

    # ------------------------------------------------------------------ availability
    def required_models(self) -> list[tuple[str, str, str, str]]:
        """(what, name_or_path, marker file, download include) of every pretrained component."""
        c = self.cfg
        return [
            (
                "UNet (Realistic Vision V4.0 noVAE)",
                c.pretrained_model_name_or_path,
                "unet/config.json",
                "--include 'unet/*' 'text_encoder/*' 'tokenizer/*'",
            ),
            ("CLIP text encoder", c.pretrained_model_name_or_path, "text_encoder/config.json", ""),
            ("CLIP tokenizer", c.pretrained_model_name_or_path, "tokenizer/tokenizer_config.json", ""),
            ("VAE (sd-vae-ft-mse)", c.vae_name_or_path, "config.json", ""),
            ("OpenPose ControlNet", c.controlnet_name_or_path, "config.json", ""),
            (
                "IP-Adapter FaceID-Plus-v2",
                c.ip_adapter_name_or_path,
                c.ip_adapter_weight_name,
                c.ip_adapter_weight_name,
            ),
            (
                "CLIP ViT-H image encoder",
                c.image_encoder_name_or_path,
                "config.json",
                "--include config.json model.safetensors",
            ),
        ]

    def missing(self) -> list[str]:
        """One line per missing model with how to obtain it (fast; no network)."""
        out, seen = [], set()
        for what, name, marker, include in self.required_models():
            if not is_available(name, marker) and (name, marker) not in seen:
                seen.add((name, marker))
                out.append(f"{what}: {name} ({marker} not found) -> {download_hint(name, include)}")
        out += FaceIdentity(self.cfg.face).missing()
        return out

    # ------------------------------------------------------------------ loading
    def configure(self) -> None:
        self.loaded = False
        self.reused = False
        """Whether :meth:`load` took the networks an earlier stage handed over (:meth:`hand_over`)."""
        self._identity_of = None
        self._capture_events: list[dict] = []

    def compile_events(self) -> list[dict]:
        """What the compiled functions and CUDA graphs cost so far, in host seconds (the stage-1
        manifest's ``compile_events``): the compiled VAE encoder's and noise-prediction parts' prepared
        signatures (:attr:`~threestudio.utils.aot.DiskCompiled.events`: loaded or compiled, first call),
        then one ``{"name": "cuda-graph", "rows": n, "s": ...}`` per captured noise prediction (its two
        warm-up runs and the capture). Empty while eager and uncaptured."""
        encoder = getattr(getattr(self, "vae", None), "encoder", None)
        denoise = getattr(self, "_denoise", None)
        parts = denoise.parts if isinstance(denoise, TwoStreamNoisePrediction) else (denoise,)
        events = []
        for p in (encoder.compiled if isinstance(encoder, DiskCompiledModule) else encoder, *parts):
            if isinstance(p, DiskCompiled):
                events += p.events
        return events + list(self._capture_events)

    def load(self, device: torch.device | str) -> None:
        """Load every network onto ``device`` (frozen, eval).

        Raises:
            MissingModelError: lists each missing model and how to obtain it.
        """
        miss = self.missing()
        if miss:
            raise MissingModelError("missing pretrained models:\n  " + "\n  ".join(miss))
        left = handover.take(HANDOVER_KEY)
        if left is not None and left.serves(self.cfg, device):
            self._adopt(left)
            return
        del left  # not the same models: dropped before a second set is loaded
        from diffusers import (
            AutoencoderKL,
            ControlNetModel,
            DDIMScheduler,
            StableDiffusionControlNetPipeline,
            UNet2DConditionModel,
        )

        c = self.cfg
        self.device = torch.device(device)
        self.dtype = resolve_dtype(self.device, c.dtype)
        kw = {"local_files_only": c.local_files_only}
        # fp32 for the LoRA merge (fuse_lora); the others straight in the network dtype
        unet = self._pretrained(UNet2DConditionModel, c.pretrained_model_name_or_path, torch.float32, "unet")
        vae = self._pretrained(AutoencoderKL, c.vae_name_or_path, self.dtype)
        controlnet = self._pretrained(ControlNetModel, c.controlnet_name_or_path, self.dtype)
        self.scheduler = DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipe = StableDiffusionControlNetPipeline(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            controlnet=controlnet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        pipe.load_ip_adapter(
            c.ip_adapter_name_or_path,
            subfolder="",
            weight_name=c.ip_adapter_weight_name,
            image_encoder_folder=None,
            **kw,
        )
        pipe.set_ip_adapter_scale(c.ip_adapter_scale)
        if c.fuse_lora:
            fuse_adapter_lora(pipe)
        self.unet, self.vae, self.controlnet = pipe.unet, pipe.vae, pipe.controlnet
        for m in (self.unet, self.vae, self.controlnet):
            m.to(self.device, self.dtype).eval().requires_grad_(False)
        self._load_image_encoder()
        proj = self.unet.encoder_hid_proj.image_projection_layers[0]
        proj.shortcut, proj.shortcut_scale = True, c.ip_adapter_shortcut_scale
        self.ip_projection = proj
        self.controlnet.controlnet_cond_embedding = SharedPoseEmbedding(self.controlnet.controlnet_cond_embedding)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)
        self.set_channels_last(c.channels_last and self.device.type == "cuda")
        if c.vae_attention is VAEAttention.bmm:
            from diffusers.models.attention_processor import AttnProcessor

            self.vae.set_attn_processor(AttnProcessor())
        self._identity_of = None
        self._compile()
        self.loaded = True

    def _compile(self) -> None:
        """Wrap the VAE encoder and the noise prediction in their compiled forms as the config asks
        (``compile_vae_encoder``, ``compile_denoiser``; CUDA with Triton only), else eager."""
        c = self.cfg
        can_compile = self.device.type == "cuda" and importlib.util.find_spec("triton") is not None
        if can_compile and (c.compile_vae_encoder or c.compile_denoiser):
            persist_compile_cache()
        if c.compile_vae_encoder and can_compile:
            opts = {"force_layout_optimization": True} if c.vae_layout_optimization else None
            if opts and c.vae_group_norm is GroupNormKind.channel_stats:
                use_channel_stats_group_norm(self.vae.encoder)
            self.vae.encoder = DiskCompiledModule(self.vae.encoder, "vae-encoder", opts)
        compile_denoiser = c.compile_denoiser and can_compile
        self._denoise = noise_prediction
        if c.controlnet_stream and supports_halves(self.unet):
            self._denoise = TwoStreamNoisePrediction(compiled=compile_denoiser)
        elif compile_denoiser:  # a row count that changes from step to step (skip_unused_negative): dynamic
            self._denoise = compiled_noise_prediction(dynamic_rows=c.skip_unused_negative)
        self._forget_graphs()

    # ------------------------------------------------------------------ handing over to the next stage
    def hand_over(self) -> None:
        """Leave the loaded networks and identity branches for the next launch of this process
        (:mod:`threestudio.utils.handover`): run.sh's stage 2 takes them in :meth:`load` instead of
        loading the same files again (on an H100 2.0 s of loading and 0.4 s of identity). They go back
        to their eager form first: the compiled VAE encoder and noise prediction and their CUDA graphs
        are dropped (they were made for this stage's shapes and scales) and the encoder's GroupNorms
        are plain ``nn.GroupNorm`` again. Nothing happens if nothing is loaded."""
        if not getattr(self, "loaded", False):
            return
        self._forget_graphs()
        self._denoise = noise_prediction
        if isinstance(self.vae.encoder, DiskCompiledModule):
            self.vae.encoder = self.vae.encoder.module
        for m in self.vae.encoder.modules():
            if type(m) is ChannelStatsGroupNorm:
                m.__class__ = torch.nn.GroupNorm
        self.ip_projection.clip_embeds = None
        handover.leave(HANDOVER_KEY, self)

    def serves(self, cfg, device: torch.device | str) -> bool:
        """Whether these loaded networks are the ones a guidance of config ``cfg`` on ``device`` would
        load: every option equal except those applied after loading (:data:`ADOPTABLE_OPTIONS`), on the same
        device (:func:`~threestudio.utils.gpu.same_device`: Lightning's stage 1 runs on ``cuda:0``, stage 2
        asks for ``cuda``)."""
        mine, theirs = _plain(self.cfg), _plain(cfg)
        for k in ADOPTABLE_OPTIONS:
            mine.pop(k, None), theirs.pop(k, None)
        return self.loaded and mine == theirs and same_device(device, self.device)

    def _adopt(self, left: FaceIDControlNetGuidance) -> None:
        """Take over the networks of ``left`` (:meth:`hand_over`), with this config's layout, scales and compilation."""
        cfg = self.cfg
        self.__dict__.update({k: v for k, v in left.__dict__.items() if k not in ("cfg", "schedule")})
        self.cfg = cfg
        self.set_channels_last(cfg.channels_last and self.device.type == "cuda")
        self.set_ip_adapter_scale(cfg.ip_adapter_scale, cfg.ip_adapter_shortcut_scale)
        self._compile()
        self.reused = True

    def set_channels_last(self, on: bool) -> None:
        """Put the UNet, ControlNet and VAE weights (and, from now on, their inputs) in channels-last
        (``on``) or the default contiguous layout. ``load`` does it on CUDA when ``channels_last``."""
        self._layout = torch.channels_last if on else torch.contiguous_format
        for m in (self.unet, self.vae, self.controlnet):
            m.to(memory_format=self._layout)

    def _pretrained(self, cls, name_or_path: str, dtype: torch.dtype, subfolder: str = ""):
        """``cls.from_pretrained`` (a diffusers model, or a transformers one for ``model.safetensors``) on
        the guidance device in ``dtype``: read in the dtype its weights are stored in
        (:func:`~threestudio.models.guidance.hub.stored_float_dtype`), copied to the device as stored and
        cast there. The same values as reading them in fp32 on the host and casting (fp16 and bf16 are
        exact in fp32), without the host-side casts of 1-2 billion parameters that ``from_pretrained``
        and a cross-device ``to(device, dtype)`` would do (PyTorch converts a host-to-GPU copy on the host)."""
        diffusers = cls.__module__.startswith("diffusers")
        weights = "diffusion_pytorch_model.safetensors" if diffusers else "model.safetensors"
        kw = {"local_files_only": self.cfg.local_files_only}
        if subfolder:
            kw["subfolder"] = subfolder
        stored = stored_float_dtype(name_or_path, weights, subfolder)
        if stored is not None:
            kw["torch_dtype" if diffusers else "dtype"] = stored
        return cls.from_pretrained(name_or_path, **kw).to(self.device).to(dtype)

    def _load_image_encoder(self) -> None:
        """The CLIP ViT-H image encoder of IP-Adapter FaceID-Plus-v2, frozen, on the guidance device."""
        from transformers import CLIPVisionModelWithProjection

        enc = self._pretrained(CLIPVisionModelWithProjection, self.cfg.image_encoder_name_or_path, self.dtype)
        self.image_encoder = enc.eval().requires_grad_(False)

    def free_image_encoder(self) -> None:
        """Drop the CLIP ViT-H image encoder (about 1.3 GB in bf16) once the identity branches are
        built: nothing after :meth:`prepare_identity` needs it."""
        self.image_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def set_ip_adapter_scale(self, scale: float, shortcut_scale: float) -> None:
        """IP-Adapter attention scale and FaceID-Plus-v2 shortcut scale (stage 2 uses 0.6 / 0.5)."""
        for proc in self.unet.attn_processors.values():
            if hasattr(proc, "scale") and isinstance(proc.scale, list):
                proc.scale = [scale] * len(proc.scale)
        self.ip_projection.shortcut_scale = shortcut_scale
        if isinstance(self._denoise, (DiskCompiled, TwoStreamNoisePrediction)):  # compiled with the old scales
            self._denoise.clear()
        self._forget_graphs()

    def _forget_graphs(self) -> None:
        """Drop the captured noise predictions (and their memory pool)."""
        self._graphs, self._graph_pool = {}, None

    # ------------------------------------------------------------------ identity conditioning
    @torch.no_grad()
    def clip_embeds(self, crop_rgb: np.ndarray | None) -> Tensor:
        """Penultimate CLIP hidden states [1, L, C] of a 224² RGB uint8 crop (None -> the all-zero
        normalised image of the negative branch, method §5.2)."""
        from transformers import CLIPImageProcessor

        size = self.image_encoder.config.image_size
        if crop_rgb is None:
            pix = torch.zeros(1, 3, size, size)
        else:
            proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
            pix = proc(images=crop_rgb, return_tensors="pt").pixel_values
        out = self.image_encoder(pix.to(self.device, self.dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    def prepare_identity(self, face_image: str) -> dict[str, ConditioningBranch]:
        """Positive (the user's face), null (irrelevant identity) and negative (zero id, zero image)
        conditioning of method §5.2. Raises ``UserError`` if no face is found. The branches of the
        same face are kept (networks handed over by an earlier stage bring them along); another face
        loads the CLIP image encoder again if :meth:`free_image_encoder` dropped it."""
        source = (str(face_image), str(self.cfg.irr_image_path))
        if source == self._identity_of:
            return self.branches
        fid = FaceIdentity(self.cfg.face)
        pos, irr = fid(face_image), fid(self.cfg.irr_image_path)
        if self.image_encoder is None:
            self._load_image_encoder()
        branches = self.set_identity(pos, irr)
        self._identity_of = source
        return branches

    def set_identity(self, pos, irr) -> dict[str, ConditioningBranch]:
        """Build the three branches from the user's and the irrelevant identity's :class:`FaceID`."""
        self._forget_graphs()  # captured noise predictions hold the old identity's tensors
        self._identity_of = None
        to_t = lambda e: torch.from_numpy(e)[None].to(self.device, self.dtype)  # noqa: E731
        self.branches = {
            "neg": ConditioningBranch(
                torch.zeros(1, 512, device=self.device, dtype=self.dtype), self.clip_embeds(None)
            ),
            "pos": ConditioningBranch(to_t(pos.embedding), self.clip_embeds(pos.crop)),
            "null": ConditioningBranch(to_t(irr.embedding), self.clip_embeds(irr.crop)),
        }
        return self.branches

    # ------------------------------------------------------------------ denoiser
    def _noise(
        self, latents_t: Tensor, t: Tensor, text: Tensor, branches: list, pose: Tensor, views: list[Tensor]
    ) -> Tensor:
        """:meth:`predict_noise`, replayed from a CUDA graph captured once per input shape, row count of
        each branch and identity (``cuda_graph``); inputs are copied into the graph's static buffers.
        The graphs share one memory pool: each replay's output is copied out before the next replay."""
        if not (self.cfg.cuda_graph and self.device.type == "cuda"):
            return self.predict_noise(latents_t, t, text, branches, pose, views)
        key = (
            tuple(latents_t.shape),
            tuple(text.shape),
            tuple(pose.shape),
            tuple(len(v) for v in views),
            tuple(id(b) for b in branches),
        )
        inputs = [latents_t, t, text, pose, *views]
        if key not in self._graphs:
            began = time.perf_counter()
            static = [x.clone() for x in inputs]

            def run():
                return self.predict_noise(static[0], static[1], static[2], branches, static[3], static[4:])

            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up (cuDNN / cuBLAS workspaces) outside the capture
                for _ in range(2):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool):
                out = run()
            self._graphs[key] = (graph, static, out)
            self._capture_events.append(
                {"name": "cuda-graph", "rows": int(latents_t.shape[0]), "s": round(time.perf_counter() - began, 3)}
            )
        graph, static, out = self._graphs[key]
        for buf, x in zip(static, inputs, strict=True):
            buf.copy_(x)
        graph.replay()
        return out.clone()

    def predict_noise(
        self,
        latents_t: Tensor,
        t: Tensor,
        text: Tensor,
        branches: list[ConditioningBranch],
        pose: Tensor,
        views: list[Tensor] | None = None,
    ) -> Tensor:
        """ε̂ for a batch whose rows are grouped by ``branches``: branch i's rows are the views
        ``views[i]`` (default: every view for every branch).

        The ControlNet's pose embedding depends on the pose image only, so it is computed once per view
        and shared by the rows of that view (the same numbers as embedding the pose once per row).

        Args:
            latents_t: [n, 4, h, w] noisy latents; t: [n] timesteps; text: [n, 77, D] text tokens, rows
                grouped by branch in the order of ``branches``;
            branches: k conditioning branches;
            pose: [P, 3, h·f, w·f] OpenPose images in [0, 1] of the P views (f = VAE factor);
            views: k int64 tensors on ``pose``'s device, the views (indices into ``pose``) of each
                branch's rows; None = ``arange(P)`` for every branch (n = k·P).

        Raises:
            ValueError: ``views`` does not have one entry per branch, or the rows do not add up to n.
        """
        n, P = latents_t.shape[0], pose.shape[0]
        if views is None:
            views = [torch.arange(P, device=pose.device)] * len(branches)
        counts = [len(v) for v in views]
        if len(views) != len(branches) or sum(counts) != n:
            raise ValueError(
                f"predict_noise: {n} latents but {len(branches)} branches with {counts} rows (views per "
                f"branch); without views every branch takes all {P} pose images, so n must be {len(branches) * P}"
            )
        if not self.cfg.share_pose_embedding:  # one pose image per row, each embedded (the reference's way)
            pose = torch.cat([pose[v] for v in views])
            views = list(torch.arange(n, device=pose.device).split(counts))
        ids = torch.cat([b.id_embeds.expand(c, -1) for b, c in zip(branches, counts, strict=True)])[:, None]
        clip = torch.cat([b.clip_embeds.expand(c, -1, -1) for b, c in zip(branches, counts, strict=True)])[:, None]
        rows = torch.cat(views)
        # noise_prediction sets the CLIP tokens from `clip`; the previous call's tokens (another row
        # count) would otherwise enter the compiled function's key as a tensor attribute of the UNet
        self.ip_projection.clip_embeds = None
        return self._denoise(
            self.controlnet, self.unet, latents_t, t, text, ids, clip, pose, rows, float(self.cfg.controlnet_scale)
        )

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 4 h w"]:
        """Resize to ``sds_resolution`` and VAE-encode (posterior sample, gradient flows).

        In fp16 the gradient that flows back through the encoder is scaled by ``fp16_grad_scale``
        (and unscaled at the fp32 input, non-finite values zeroed) so that it does not underflow.
        """
        x = F.interpolate(
            rgb.permute(0, 3, 1, 2), size=(self.cfg.sds_resolution,) * 2, mode="bilinear", align_corners=False
        )
        s = self.cfg.fp16_grad_scale if self.dtype == torch.float16 else 1.0
        if s != 1.0:
            x = scale_grad(x, 1.0 / s)
        x = (2 * x - 1).to(self.dtype).contiguous(memory_format=self._layout)
        with self._vae_attention():
            z = self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor
        return scale_grad(z.float(), s) if s != 1.0 else z

    def _vae_attention(self):
        """The SDPA backend context of ``vae_attention`` (covers the backward pass too: autograd runs
        the backward with the kernel the forward chose)."""
        import contextlib

        if self.cfg.vae_attention is not VAEAttention.math:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    @torch.no_grad()
    def decode_latents(self, z: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B H W 3"]:
        """VAE decode to images in [0, 1] (channels-last, float32). An fp16 decode that overflows
        (non-finite pixels) is redone in fp32."""
        sf = self.vae.config.scaling_factor
        x = self.vae.decode(z.to(self.dtype) / sf).sample
        if self.dtype == torch.float16 and not torch.isfinite(x).all():
            self.vae.to(torch.float32)
            try:
                x = self.vae.decode(z.float() / sf).sample
            finally:
                self.vae.to(self.dtype)
        return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def __call__(
        self,
        rgb: Float[Tensor, "B H W 3"],
        pose: Float[Tensor, "B Hp Wp 3"],
        text_pos: Tensor,
        text_neg: Tensor,
        text_null: Tensor,
        step: int,
    ) -> dict:
        """AHDS score distillation for one batch of renders (method §6.1).

        Returns ``loss_sds`` (its gradient w.r.t. the latents is g/B), ``grad_norm`` and ``t``.
        """
        B = rgb.shape[0]
        if self.cfg.n_steps < 1:
            raise ValueError(
                "faceid-controlnet-guidance: n_steps is 0; set guidance.n_steps to the number of "
                "training steps the AHDS schedule spans (AHDSSystem sets it to trainer.max_steps)"
            )
        if not hasattr(self, "schedule") or self.schedule.n_steps != self.cfg.n_steps:
            self.schedule = AHDSSchedule(self.cfg.n_steps, self.cfg.max_t)
        latents = self.encode_images(rgb)
        t_host = self.schedule.sample(step, B)
        t = to_device_async(t_host, self.device)
        all_views = torch.arange(B, device=self.device)
        if self.cfg.skip_unused_negative:
            neg_views = (t_host >= self.cfg.anpg_t_threshold).nonzero().flatten()
            every = len(neg_views) == B
        else:
            every = True
        sel = all_views if every else to_device_async(neg_views, self.device)

        def neg_rows(x: Tensor) -> Tensor:  # x's rows of the views in sel
            return x if every else x[sel]

        with torch.no_grad():
            z0 = latents.detach().to(self.dtype)  # fp16 path: the latents leave encode_images in fp32
            # randn_like would fill z0's memory order: the draw would depend on the layout the compiled
            # encoder chose for its output; a contiguous draw is the same noise in every layout
            noise = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype)
            z_t = self.scheduler.add_noise(z0, noise, t)
            size = latents.shape[-1] * self.vae_scale_factor
            pose_in = F.interpolate(
                pose.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", align_corners=False
            ).to(self.dtype)
            b = self.branches
            # rows: the negative branch for the views in sel (ε_neg is unused below anpg_t_threshold),
            # then the positive and the null branch for every view
            text = [neg_rows(text_neg.to(self.device)), text_pos.to(self.device), text_null.to(self.device)]
            eps = self._noise(
                torch.cat([neg_rows(z_t), z_t, z_t]).contiguous(memory_format=self._layout),
                torch.cat([neg_rows(t), t, t]),
                torch.cat(text).to(self.dtype),
                [b["neg"], b["pos"], b["null"]],
                pose_in.contiguous(memory_format=self._layout),
                [sel, all_views, all_views],
            )
            eps_neg, eps_pos, eps_null = eps.float().split([len(sel), B, B])
            if not every:  # rows of views below the threshold: never read by anpg_gradient
                eps_neg = torch.zeros_like(eps_pos).index_copy_(0, sel, eps_neg)
            grad = anpg_gradient(
                eps_pos, eps_neg, eps_null, t, self.alphas_cumprod, self.cfg.guidance_scale, self.cfg.anpg_t_threshold
            )
            if self.cfg.grad_clip_threshold > 0:
                grad = clip_grad_per_pixel(grad, self.cfg.grad_clip_threshold)
        return {"loss_sds": sds_loss(latents, grad), "grad_norm": grad.norm(dim=1).mean(), "t": t}
