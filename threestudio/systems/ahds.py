"""Stage 1 of GaussianIP: Adaptive Human Distillation Sampling (AHDS, method §6) of 3D Gaussians
initialised on a body template, with densify/prune, validation renders, and at the end
``save/avatar.ply`` + ``save/turntable.mp4``."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import threestudio
from threestudio.models.face.identity import FaceIdentity, load_image_rgb
from threestudio.models.geometry.strategy import DensifyStrategy
from threestudio.ops.openpose import skeleton_images
from threestudio.ops.sds import sparsity_loss
from threestudio.systems.base import GaussianSystem
from threestudio.utils.config import parse_structured
from threestudio.utils.errors import MissingModelError


@threestudio.register("gaussianip-ahds-system")
class AHDSSystem(GaussianSystem):
    stage_label = "stage 1 (AHDS)"
    oom_advice = ("lower the Gaussian cap system.densify.max_points, or the views per step data.batch_size "
                  "(the paper uses 4)")

    @dataclass
    class Config(GaussianSystem.Config):
        face_image: str = "???"
        """Portrait of the person (any format Pillow reads); the largest face is used."""
        body_type: str = "anny-body"
        body: dict = field(default_factory=dict)
        geometry_type: str = "body-gaussian-geometry"
        geometry: dict = field(default_factory=dict)
        renderer_type: str = "auto"
        """``auto``: gsplat on CUDA, the pure-torch rasterizer on CPU."""
        renderer: dict = field(default_factory=dict)
        guidance_type: str = "faceid-controlnet-guidance"
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = "view-prompt-processor"
        prompt_processor: dict = field(default_factory=dict)
        densify: dict = field(default_factory=dict)
        """:class:`DensifyPolicy` fields."""
        appearance_type: str = ""
        """``asg-specular-appearance`` for SpecularIP's SEID (view-dependent highlights); empty = SH only."""
        appearance: dict = field(default_factory=dict)
        pose_resolution: int = 512
        """Size of the OpenPose condition images (= guidance.sds_resolution)."""
        lambda_sds: float = 1.0
        lambda_sparsity: float = 1.0
        turntable_fps: int = 30

    # ------------------------------------------------------------------ construction
    @classmethod
    def preflight(cls, cfg: dict, mode: str) -> None:
        c = parse_structured(cls.Config, cfg)
        for kind in ("body_type", "geometry_type", "guidance_type", "prompt_processor_type"):
            threestudio.find(getattr(c, kind))
        if c.renderer_type != "auto":
            threestudio.find(c.renderer_type)
        threestudio.find(c.body_type)(c.body)  # validates the body config
        parse_structured(threestudio.find(c.geometry_type).Config, c.geometry)
        DensifyStrategy(c.densify)  # validates the densify policy
        if mode not in ("train", "check"):
            return
        threestudio.find(c.prompt_processor_type)(c.prompt_processor)  # rejects an empty prompt
        load_image_rgb(c.face_image)
        guidance = threestudio.find(c.guidance_type)(c.guidance)
        missing = guidance.missing()
        if missing:
            raise MissingModelError("missing pretrained models (nothing was started):\n  " + "\n  ".join(missing))
        FaceIdentity(guidance.cfg.face)(c.face_image)  # "no face" fails here, before any output

    def __init__(self, cfg: dict, trial_dir: str, max_steps: int = 2400):
        super().__init__(cfg, trial_dir)
        self.max_steps = max_steps
        self.template = threestudio.find(self.cfg.body_type)(self.cfg.body).template()
        geo_cfg = dict(self.cfg.geometry)
        if self.cfg.appearance_type:
            self.appearance = threestudio.find(self.cfg.appearance_type)(self.cfg.appearance)
            geo_cfg["spec_feature_dim"] = self.appearance.cfg.feature_dim
        self.geometry = threestudio.find(self.cfg.geometry_type)(geo_cfg).init_from_template(self.template)
        self.strategy = DensifyStrategy(self.cfg.densify)

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
    def train_step(self, cams, step: int, optimizer) -> tuple[torch.Tensor, dict, dict]:
        """One AHDS step without Lightning: render -> skeleton -> prompts -> guidance -> losses ->
        backward -> densify statistics. The caller steps ``optimizer`` (a plain torch optimizer)
        and then calls ``self.strategy.step``. Returns (total loss, loss dict, guidance output)."""
        out = self.render(cams)
        P = self.cfg.pose_resolution
        pc = cams.resized(P, P)
        pose, all_vis = skeleton_images(self.template.keypoints.to(self.device), pc.w2c, pc.K, P, P, cams.mode == "head")
        text = self.prompt_processor(cams.azimuth, cams.mode, all_vis)
        dev = self.device
        g = self.guidance(out["comp_rgb"], pose, text["pos"].to(dev), text["neg"].to(dev), text["null"].to(dev), step)
        losses = {"loss_sds": g["loss_sds"], "loss_sparsity": sparsity_loss(out["opacity"])}
        loss = self.cfg.lambda_sds * losses["loss_sds"] + self.cfg.lambda_sparsity * losses["loss_sparsity"]
        self.backward_step(loss, out, cams, step, optimizer)
        return loss, losses, g

    def training_step(self, cams, batch_idx):
        opt = self.optimizers()  # LightningOptimizer: its step() advances global_step
        step = self.step
        loss, losses, g = self.train_step(cams, step, opt.optimizer)
        opt.step()
        self.densify_step(step + 1, opt.optimizer)
        self.log_dict({"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in losses.items()},
                       "train/t_mean": g["t"].float().mean(), "train/points": float(self.geometry.num_points)},
                      prog_bar=False, on_step=True, batch_size=len(cams))
        return loss.detach()
