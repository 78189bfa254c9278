"""Stage 1 of GaussianIP: Adaptive Human Distillation Sampling (AHDS, method §6) of 3D Gaussians
initialised on a body template, with densify/prune, validation renders, and at the end
``save/avatar.ply`` + ``save/turntable.mp4``."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

import threestudio
from threestudio.models.face.identity import FaceIdentity, load_image_rgb
from threestudio.ops.openpose import skeleton_images
from threestudio.ops.sds import sparsity_loss
from threestudio.systems.base import GaussianSystem
from threestudio.utils.errors import MissingModelError


@threestudio.register("gaussianip-ahds-system")
class AHDSSystem(GaussianSystem):
    stage_label = "stage 1 (AHDS)"
    oom_advice = (
        "lower the Gaussian cap system.densify.max_points, or the views per step data.batch_size (the paper uses 4)"
    )

    @dataclass
    class Config(GaussianSystem.Config):
        face_image: str = "???"
        """Portrait of the person (any format Pillow reads); the largest face is used."""
        body_type: str = "anny-body"
        """Body template plugin the Gaussians are initialised on (``anny-body`` or ``smplx-body``)."""
        guidance_type: str = "faceid-controlnet-guidance"
        """Score-distillation guidance plugin."""
        guidance: dict = field(default_factory=dict)
        """Config of the guidance plugin (model paths, CFG scale, timestep range, ...)."""
        prompt_processor_type: str = "view-prompt-processor"
        """Prompt processor plugin (view-dependent prompts, text embeddings)."""
        prompt_processor: dict = field(default_factory=dict)
        """Config of the prompt processor (the prompt, the negative prompt, ...)."""
        pose_resolution: int = 512
        """Size of the OpenPose condition images in pixels (= guidance.sds_resolution)."""
        lambda_sds: float = 1.0
        """Weight of the AHDS score-distillation loss (method §6)."""
        lambda_sparsity: float = 1.0
        """Weight of the opacity sparsity loss on the rendered alpha (method §2.5)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def preflight(cls, cfg: dict | DictConfig, mode: str):
        c = super().preflight(cfg, mode)
        if mode not in ("train", "check"):
            return c
        threestudio.find(c.prompt_processor_type)(c.prompt_processor)  # rejects an empty prompt
        load_image_rgb(c.face_image)
        guidance = threestudio.find(c.guidance_type)(c.guidance)
        missing = guidance.missing()
        if missing:
            raise MissingModelError("missing pretrained models (nothing was started):\n  " + "\n  ".join(missing))
        FaceIdentity(guidance.cfg.face)(c.face_image)  # "no face" fails here, before any output
        return c

    def __init__(self, cfg: dict | DictConfig, trial_dir: str, max_steps: int = 2400):
        super().__init__(cfg, trial_dir, max_steps)
        self.template = threestudio.find(self.cfg.body_type)(self.cfg.body).template()
        geo_cfg = dict(self.cfg.geometry)
        if self.cfg.appearance_type:
            self.appearance = threestudio.find(self.cfg.appearance_type)(self.cfg.appearance)
            geo_cfg["spec_feature_dim"] = self.appearance.cfg.feature_dim
        self.geometry = threestudio.find(self.cfg.geometry_type)(geo_cfg).init_from_template(self.template)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        gcfg = dict(self.cfg.guidance)
        gcfg["n_steps"] = gcfg.get("n_steps") or self.max_steps
        self.guidance = threestudio.find(self.cfg.guidance_type)(gcfg)
        self.guidance.load(self.device)
        self.guidance.prepare_identity(self.cfg.face_image)
        self.guidance.free_image_encoder()
        self.prompt_processor = threestudio.find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)
        self.prompt_processor.prepare(self.device)
        self.write_manifest(stage="ahds", prompt=self.prompt_processor.cfg.prompt, face_image=str(self.cfg.face_image))

    # ------------------------------------------------------------------ training
    def compute_losses(self, cams, step: int) -> tuple[dict, dict, dict]:
        """One AHDS step's losses (method §6.1): render -> OpenPose skeletons -> view prompts ->
        guidance (``loss_sds``) and ``loss_sparsity`` on the rendered alpha; logs the mean timestep."""
        out = self.render(cams)
        size = self.cfg.pose_resolution
        pc = cams.resized(size, size)
        pose, all_vis = skeleton_images(
            self.template.keypoints.to(self.device), pc.w2c, pc.K, size, size, cams.mode == "head"
        )
        text = self.prompt_processor(cams.azimuth_deg, cams.mode, all_vis)
        dev = self.device
        sds = self.guidance(out["comp_rgb"], pose, text["pos"].to(dev), text["neg"].to(dev), text["null"].to(dev), step)
        losses = {"loss_sds": sds["loss_sds"], "loss_sparsity": sparsity_loss(out["opacity"])}
        return losses, out, {"t_mean": sds["t"].float().mean()}
