"""Stage 2 of GaussianIP: view-consistent refinement (VCR, method §7) of the stage-1 avatar's
turntable renders. No optimisation: renders the ring (method §3.4) and its OpenPose images, refines
them with :class:`VCRRefiner`, and saves images, cameras and a manifest for stage 3."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

import threestudio
from threestudio.data.human_cameras import ring_cameras
from threestudio.models.face.identity import load_image_rgb
from threestudio.models.guidance.vcr import VCRRefiner
from threestudio.ops.losses import alpha_bbox
from threestudio.ops.openpose import skeleton_images
from threestudio.ops.vcr import view_roles
from threestudio.systems.base import GaussianSystem
from threestudio.systems.stages import read_stage
from threestudio.utils.config import parse_structured
from threestudio.utils.errors import MissingModelError
from threestudio.utils.io import atomic_write_text, save_image

REFINE_NEGATIVE = "blurry face, bad face, poorly drawn face, duplicate face, extra fingers, blurry, fused fingers"


@threestudio.register("gaussianip-refine-system")
class RefineSystem(GaussianSystem):
    trainable = False
    stage_label = "stage 2 (view-consistent refinement)"
    oom_advice = ("lower system.max_gpu_memory_gb to what the card really has free (the views denoised per batch "
                  "follow it), or cap the batch with system.tier_chunk=1, or lower system.resolution")

    @dataclass
    class Config(GaussianSystem.Config):
        init_from: str = "???"
        """Trial directory of a finished stage-1 (AHDS) run."""
        n_views: int = 32
        """Ring size; a multiple of 8 (45° key-view structure)."""
        elevation_deg: float = 17.0
        camera_distance: float = 1.5
        fovy_deg: float = 70.0
        resolution: int = 1024
        guidance_type: str = "faceid-controlnet-guidance"
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = "view-prompt-processor"
        prompt_processor: dict = field(default_factory=dict)
        guidance_scale: float = 7.5
        ipa_scale: float = 0.6
        ipa_shortcut_scale: float = 0.5
        lambda_fusion: float = 0.55
        """λ of distance-guided attention fusion (weight of a view's own attention)."""
        tier_chunk: int = 0
        """Views per UNet batch within a tier; 0 = as many as the memory budget allows (measured on the
        first view of each tier), the whole tier on the CPU."""
        seed: int = 2024
        renderer_type: str = "auto"
        renderer: dict = field(default_factory=dict)
        geometry_type: str = "body-gaussian-geometry"
        geometry: dict = field(default_factory=dict)
        body_type: str = ""
        """Body template of stage 1 (read from its manifest when empty)."""
        body: dict = field(default_factory=dict)
        turntable_fps: int = 30

    @classmethod
    def preflight(cls, cfg: dict, mode: str) -> None:
        c = parse_structured(cls.Config, cfg)
        view_roles(c.n_views)
        if mode != "train":
            return
        s1 = read_stage(c.init_from, "ahds", ("avatar",))
        guidance = threestudio.find(c.guidance_type)(_inherit(c.guidance, s1, "guidance"))
        missing = guidance.missing()
        if missing:
            raise MissingModelError("missing pretrained models (nothing was started):\n  " + "\n  ".join(missing))
        load_image_rgb(s1["face_image"])

    def __init__(self, cfg: dict, trial_dir: str, max_steps: int = 0):
        super().__init__(cfg, trial_dir)
        self.stage1 = read_stage(self.cfg.init_from, "ahds", ("avatar",))
        s1cfg = _stage_config(self.stage1)
        self.body_type = self.cfg.body_type or self.stage1.get("body", "anny-body")
        body_cfg = self.cfg.body or dict(s1cfg.system.get("body", {}))
        self.template = threestudio.find(self.body_type)(body_cfg).template()
        geo_cfg = self.cfg.geometry or dict(s1cfg.system.get("geometry", {}))
        from threestudio.systems.base import load_avatar

        self.geometry, self.appearance = load_avatar(f"{self.stage1['trial_dir']}/{self.stage1['avatar']}",
                                                     self.cfg.geometry_type, geo_cfg)

    def run_stage(self, device) -> None:
        """Render the ring, refine it, save everything (the whole stage)."""
        c = self.cfg
        self.to(device)
        budget = self.apply_budget(device)
        cams = ring_cameras(c.n_views, c.elevation_deg, c.camera_distance, c.fovy_deg, c.resolution).to(self.device)
        rgb, alpha = [], []
        with torch.no_grad():  # one view at a time, kept on the CPU: the ring never sits on the GPU at once
            for i in range(len(cams)):
                out = self.render(cams[i])
                rgb.append(out["comp_rgb"].cpu())
                alpha.append(out["opacity"].cpu())
        rgb, alpha = torch.cat(rgb), torch.cat(alpha)
        pose, _ = skeleton_images(self.template.keypoints, cams.w2c.cpu(), cams.K.cpu(), c.resolution, c.resolution,
                                  head_closeup=False)
        gcfg = _inherit(c.guidance, self.stage1, "guidance")
        guidance = threestudio.find(c.guidance_type)(gcfg)
        guidance.load(self.device)
        guidance.prepare_identity(self.stage1["face_image"])
        guidance.free_image_encoder()
        ppcfg = dict(_inherit(c.prompt_processor, self.stage1, "prompt_processor"))
        ppcfg.setdefault("negative_prompt", REFINE_NEGATIVE)
        ppcfg["prompt"] = self.stage1["prompt"]
        pp = threestudio.find(c.prompt_processor_type)(ppcfg)
        text = pp.refine_prompts(view_roles(c.n_views), self.device)
        refiner = VCRRefiner(guidance, c.lambda_fusion, c.guidance_scale, c.ipa_scale, c.ipa_shortcut_scale, seed=c.seed)
        refined = refiner.refine(rgb, pose, text["pos"], text["neg"], chunk=c.tier_chunk, budget=budget)
        views = []
        for i in range(c.n_views):
            save_image(self.save_path("views", f"render_{i:03d}.png"), rgb[i])
            save_image(self.save_path("views", f"pose_{i:03d}.png"), pose[i])
            save_image(self.save_path("views", f"refined_{i:03d}.png"), refined[i])
            views.append({"index": i, "refined": f"save/views/refined_{i:03d}.png", "azimuth": float(cams.azimuth[i]),
                          "elevation": float(cams.elevation[i]), "distance": float(cams.distance[i]),
                          "fovy_deg": c.fovy_deg, "height": c.resolution, "width": c.resolution,
                          "c2w": cams.c2w[i].tolist(), "bbox": alpha_bbox(alpha[i]), "prompt": text["prompts"][i]})
        atomic_write_text(self.trial_dir / "save" / "views" / "cameras.json", json.dumps(views, indent=1))
        self.write_manifest(stage="refine", init_from=self.stage1["trial_dir"], avatar_in=f"{self.stage1['trial_dir']}/{self.stage1['avatar']}",
                            body=self.body_type, prompt=self.stage1["prompt"], face_image=self.stage1["face_image"],
                            n_views=c.n_views, cameras="save/views/cameras.json", **self.memory_record())


def _stage_config(stage: dict):
    from omegaconf import OmegaConf

    return OmegaConf.load(f"{stage['trial_dir']}/configs/parsed.yaml")


def _inherit(own: dict, stage: dict, key: str) -> dict:
    """A plugin config of an earlier stage, updated by this stage's own values (so that model paths
    and the face detector carry over)."""
    from omegaconf import OmegaConf

    prev = _stage_config(stage).system.get(key, {})
    merged = OmegaConf.merge(prev, own)
    out = OmegaConf.to_container(merged, resolve=True)
    out.pop("n_steps", None)
    if key == "prompt_processor" and "negative_prompt" not in own:
        out.pop("negative_prompt", None)  # stage 2 has its own negative prompt (method §5.3)
    return out
