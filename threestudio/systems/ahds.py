"""Stage 1 of GaussianIP: Adaptive Human Distillation Sampling (AHDS, method §6) of 3D Gaussians
initialised on a body template, with densify/prune, validation renders, and at the end
``save/avatar.ply`` + ``save/turntable.mp4``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

import threestudio
from threestudio.models.face.identity import FaceIdentity, load_image_rgb
from threestudio.ops.camera import Cameras
from threestudio.ops.openpose import skeleton_images
from threestudio.ops.sds import sparsity_loss
from threestudio.systems.base import GaussianSystem
from threestudio.utils.errors import MissingModelError
from threestudio.utils.gpu import PhaseClock, to_device_async


@dataclass
class GuidedViews:
    """A stage-1 training batch with its guidance inputs made on the CPU (:meth:`AHDSSystem.prepare_train_batch`).

    ``cams``: the B views; ``pose``: uint8 OpenPose skeleton images [B, S, S, 3] (S = ``pose_resolution``);
    ``prompts``: the B view-dependent positive prompts.
    """

    cams: Cameras
    pose: torch.Tensor
    prompts: list[str]

    def to(self, device) -> GuidedViews:
        """Move to ``device``; to a GPU without blocking the host (:func:`to_device_async`)."""
        return GuidedViews(self.cams.to(device), to_device_async(self.pose, device), self.prompts)

    def __len__(self) -> int:
        return len(self.cams)


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
        clock = PhaseClock(self.device)  # the parts of ``setup`` in the manifest's timings_s (setup_<part>)
        gcfg = dict(self.cfg.guidance)
        gcfg["n_steps"] = gcfg.get("n_steps") or self.max_steps
        self.guidance = threestudio.find(self.cfg.guidance_type)(gcfg)
        self.guidance.load(self.device)
        clock.lap("setup_load_models")
        self.guidance.prepare_identity(self.cfg.face_image)
        self.guidance.free_image_encoder()
        clock.lap("setup_identity")
        self.prompt_processor = threestudio.find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)
        self.prompt_processor.prepare(self.device)
        self.prompt_processor.to(self.device)
        clock.lap("setup_prompts")
        self.timings.update(clock.laps)
        self.write_manifest(stage="ahds", prompt=self.prompt_processor.cfg.prompt, face_image=str(self.cfg.face_image))

    def on_train_end(self) -> None:
        super().on_train_end()
        self.write_manifest(compile_events=self.guidance.compile_events())  # before hand_over drops them
        self.guidance.hand_over()  # for stage 2 of run.sh's chain, which then loads nothing again

    # ------------------------------------------------------------------ training
    def prepare_train_batch(self, cams: Cameras) -> GuidedViews:
        """OpenPose skeletons (method §5.4) and view prompts (method §3.5) of the views ``cams`` (on the
        CPU), made before the batch moves to the GPU: no host synchronisation inside the step."""
        size = self.cfg.pose_resolution
        pc = cams.to("cpu").resized(size, size)
        kp = self.template.keypoints.cpu()
        pose, all_vis = skeleton_images(kp, pc.w2c, pc.K, size, size, cams.mode == "head", uint8=True)
        return GuidedViews(cams, pose, self.prompt_processor.view_prompts(pc.azimuth_deg, cams.mode, all_vis))

    def compute_losses(self, batch: GuidedViews | Cameras, step: int) -> tuple[dict, dict, dict]:
        """One AHDS step's losses (method §6.1): render -> guidance with the OpenPose skeletons and view
        prompts of :meth:`prepare_train_batch` (made here for plain ``Cameras``) -> ``loss_sds``, and
        ``loss_sparsity`` on the rendered alpha; logs the mean timestep."""
        views = batch if isinstance(batch, GuidedViews) else self.prepare_train_batch(batch).to(self.device)
        out = self.render(views.cams)
        pose = views.pose.float() / 255.0  # GuidedViews.to put it on the device
        text = self.prompt_processor.lookup(views.prompts)
        sds = self.guidance(out["comp_rgb"], pose, text["pos"], text["neg"], text["null"], step)
        losses = {"loss_sds": sds["loss_sds"], "loss_sparsity": sparsity_loss(out["opacity"])}
        return losses, out, {"t_mean": sds["t"].float().mean()}
