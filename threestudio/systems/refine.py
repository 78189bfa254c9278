"""Stage 2 of GaussianIP: view-consistent refinement (VCR, method §7) of the stage-1 avatar's
turntable renders. No optimisation: renders the ring (method §3.4) and its OpenPose images, refines
them with :class:`VCRRefiner`, and saves images, cameras and a manifest for stage 3."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

import threestudio
from threestudio.data.handoff import load_avatar, read_stage, stage_config, view_records, write_view_records
from threestudio.models.face.identity import load_image_rgb
from threestudio.models.guidance.vcr import VCRRefiner
from threestudio.ops.camera import ring_cameras
from threestudio.ops.losses import alpha_bbox
from threestudio.ops.openpose import skeleton_images
from threestudio.ops.vcr import view_roles
from threestudio.systems.base import BaseSystem
from threestudio.utils.config import parse_structured
from threestudio.utils.errors import MissingModelError
from threestudio.utils.gpu import PhaseClock
from threestudio.utils.io import BackgroundWriter, save_image

REFINE_NEGATIVE = "blurry face, bad face, poorly drawn face, duplicate face, extra fingers, blurry, fused fingers"


@threestudio.register("gaussianip-refine-system")
class RefineSystem(BaseSystem):
    """Stage 2: no optimisation, so a plain system (not a Lightning module): :meth:`run` is the stage."""

    stage_label = "stage 2 (view-consistent refinement)"
    oom_advice = (
        "lower system.max_gpu_memory_gb to what the card really has free (the views denoised per batch "
        "follow it), or cap the batch with system.tier_chunk=1, or lower system.resolution"
    )

    @dataclass
    class Config(BaseSystem.Config):
        init_from: str = "???"
        """Trial directory of a finished stage-1 (AHDS) run."""
        n_views: int = 32
        """Ring size; a multiple of 8 (45° key-view structure)."""
        elevation_deg: float = 17.0
        """Ring camera elevation, degrees (method §3.4)."""
        camera_distance: float = 1.5
        """Ring camera distance, world units."""
        fovy_deg: float = 70.0
        """Ring vertical field of view, degrees."""
        resolution: int = 1024
        """Ring render and refined image size in pixels (square)."""
        guidance_type: str = "faceid-controlnet-guidance"
        """Diffusion models plugin (its models and face detector are inherited from stage 1)."""
        guidance: dict = field(default_factory=dict)
        """Overrides of stage 1's guidance config."""
        prompt_processor_type: str = "view-prompt-processor"
        """Prompt processor plugin (the prompt is stage 1's)."""
        prompt_processor: dict = field(default_factory=dict)
        """Overrides of stage 1's prompt processor config (stage 2 has its own negative prompt)."""
        guidance_scale: float = 7.5
        """Classifier-free guidance scale of the SDEdit denoising (method §7.2)."""
        ip_adapter_scale: float = 0.6
        """IP-Adapter attention scale in stage 2 (method §7.2; stage 1 uses 0.5)."""
        ip_adapter_shortcut_scale: float = 0.5
        """FaceID-Plus-v2 shortcut scale in stage 2 (stage 1: 0.4)."""
        lambda_fusion: float = 0.55
        """λ of distance-guided attention fusion (weight of a view's own attention, method §7.4)."""
        tier_chunk: int = 0
        """Views per UNet batch within a tier; 0 = as many as the memory budget allows (measured on the
        first view of each tier), the whole tier on the CPU."""
        seed: int = 2024
        """Seed of the SDEdit noise (one noise map shared by all views)."""
        decode_apart: bool = False
        """VAE-decode each UNet batch in decode batches sized on their own instead of at once, so that a
        memory budget allows larger UNet batches (the same images; :class:`VCRRefiner`). Off by default:
        on an H100 under a 22 GiB cap it made the refinement slower (24.6 against 22.4 s)."""

    @classmethod
    def preflight(cls, cfg: dict | DictConfig, mode: str):
        c = super().preflight(cfg, mode)
        view_roles(c.n_views)
        if mode == "check":  # this stage's overrides of stage 1's plugin configs, before stage 1 has run
            for key, kind in (("guidance", c.guidance_type), ("prompt_processor", c.prompt_processor_type)):
                parse_structured(threestudio.find(kind).Config, c[key], f"system.{key}", allow_missing=True)
        if mode != "train":
            return c
        s1 = read_stage(c.init_from, "ahds", ("avatar",))
        guidance = threestudio.find(c.guidance_type)(_inherit(c.guidance, s1, "guidance"))
        missing = guidance.missing()
        if missing:
            raise MissingModelError("missing pretrained models (nothing was started):\n  " + "\n  ".join(missing))
        load_image_rgb(s1["face_image"])
        return c

    def __init__(self, cfg: dict | DictConfig, trial_dir: str, max_steps: int = 0):
        super().__init__(cfg, trial_dir, max_steps)
        self.stage1 = read_stage(self.cfg.init_from, "ahds", ("avatar",))
        s1cfg = stage_config(self.stage1)
        self.body_type = self.cfg.body_type or self.stage1.get("body", "anny-body")
        body_cfg = self.cfg.body or dict(s1cfg.get("system", {}).get("body", {}))
        self.template = threestudio.find(self.body_type)(body_cfg).template()
        geo_cfg = self.cfg.geometry or dict(s1cfg.get("system", {}).get("geometry", {}))
        self.avatar_in = f"{self.stage1['trial_dir']}/{self.stage1['avatar']}"
        self.geometry, self.appearance = load_avatar(self.avatar_in, self.cfg.geometry_type, geo_cfg)

    def run(self, device: torch.device) -> None:
        """Render the ring, refine it, save everything (the whole stage)."""
        c = self.cfg
        clock = PhaseClock(device)
        self.geometry.to(device)
        if self.appearance is not None:
            self.appearance.to(device)
        budget = self.apply_budget(device)
        cams = ring_cameras(c.n_views, c.elevation_deg, c.camera_distance, c.fovy_deg, c.resolution)
        rgb, alpha = [], []
        with torch.no_grad():  # one view at a time, kept on the CPU: the ring never sits on the GPU at once
            for i in range(len(cams)):
                out = self.render(cams[i].to(device))
                rgb.append(out["comp_rgb"].cpu())
                alpha.append(out["opacity"].cpu())
        rgb, alpha = torch.cat(rgb), torch.cat(alpha)
        pose, _ = skeleton_images(
            self.template.keypoints, cams.w2c, cams.K, c.resolution, c.resolution, head_closeup=False
        )
        clock.lap("render")
        gcfg = _inherit(c.guidance, self.stage1, "guidance")
        # off unless asked for: compiling a few hundred no-grad calls at new shapes would cost more than it
        # saves, and at 128² latents the ControlNet beside the UNet's encoder half saved nothing (379.5 ms
        # both ways for 16 eager rows on an H100, bench/denoiser_streams.py)
        for k in ("compile_denoiser", "compile_vae_encoder", "controlnet_stream"):
            gcfg[k] = c.guidance.get(k, False)
        guidance = threestudio.find(c.guidance_type)(gcfg)
        guidance.load(device)  # the networks stage 1 handed over, when this process ran it (run.sh)
        clock.lap("load_models")
        guidance.prepare_identity(self.stage1["face_image"])
        guidance.free_image_encoder()
        clock.lap("identity")
        ppcfg = dict(_inherit(c.prompt_processor, self.stage1, "prompt_processor"))
        ppcfg.setdefault("negative_prompt", REFINE_NEGATIVE)
        ppcfg["prompt"] = self.stage1["prompt"]
        prompt_processor = threestudio.find(c.prompt_processor_type)(ppcfg)
        text = prompt_processor.refine_prompts(view_roles(c.n_views), device)
        clock.lap("prompts")
        refiner = VCRRefiner(
            guidance,
            c.lambda_fusion,
            c.guidance_scale,
            c.ip_adapter_scale,
            c.ip_adapter_shortcut_scale,
            seed=c.seed,
            decode_apart=c.decode_apart,
        )
        # 3 PNGs per view, encoded in parallel; the renders and skeletons while the GPU refines (the
        # refinement only reads rgb and pose)
        writer = BackgroundWriter(workers=min(8, os.cpu_count() or 1))
        for i in range(c.n_views):
            writer.submit(save_image, self.save_path("views", f"render_{i:03d}.png"), rgb[i])
            writer.submit(save_image, self.save_path("views", f"pose_{i:03d}.png"), pose[i])

        def write_refined(views: list[int], images: torch.Tensor) -> None:  # while the next batch refines
            for i, img in zip(views, images, strict=True):
                writer.submit(save_image, self.save_path("views", f"refined_{i:03d}.png"), img)

        refiner.refine(rgb, pose, text["pos"], text["neg"], chunk=c.tier_chunk, budget=budget, on_refined=write_refined)
        clock.lap("refine")
        writer.wait()
        clock.lap("write")
        records = view_records(cams, [alpha_bbox(a) for a in alpha], text["prompts"])
        write_view_records(self.trial_dir / "save" / "views" / "cameras.json", records)
        self.write_manifest(
            stage="refine",
            init_from=self.stage1["trial_dir"],
            avatar_in=self.avatar_in,
            body=self.body_type,
            prompt=self.stage1["prompt"],
            face_image=self.stage1["face_image"],
            n_views=c.n_views,
            cameras="save/views/cameras.json",
            timings_s=clock.laps,
            models_from_stage1=bool(getattr(guidance, "reused", False)),
            controlnet_stream=bool(gcfg["controlnet_stream"]),
            **self.memory_record(),
        )


def _inherit(own: dict, stage: dict, key: str) -> dict:
    """A plugin config of an earlier stage, updated by this stage's own values (so that model paths
    and the face detector carry over)."""
    from omegaconf import OmegaConf

    prev = stage_config(stage).get("system", {}).get(key, {})
    out = OmegaConf.to_container(OmegaConf.merge(prev, own), resolve=True)
    out.pop("n_steps", None)
    if key == "prompt_processor" and "negative_prompt" not in own:
        out.pop("negative_prompt", None)  # stage 2 has its own negative prompt (method §5.3)
    return out
