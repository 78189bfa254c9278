"""Stage 3 of GaussianIP: reconstruction (method §8). Re-fits every Gaussian attribute of the
stage-1 avatar to the refined views of stage 2: ``λ_l1 L1 + λ_ssim (1 - SSIM) + λ_lpips LPIPS-VGG``
inside a loss box around the rendered body (from the stage-1 alpha, so hands are never clipped:
method §12.19; boxes of one batch are grown to a common size, never resampled to a square, so the
aspect ratio is kept), at ``loss_scale`` of the render resolution (the reference: 0.5), with
densify and prune-only events that fire."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from omegaconf import DictConfig

import threestudio
from threestudio.data.handoff import load_avatar, read_stage
from threestudio.models.geometry.strategy import DensifyPolicy
from threestudio.models.perceptual import lpips_vgg
from threestudio.models.perceptual.lpips_vgg import LPIPSConfig
from threestudio.ops.losses import crop_boxes, psnr, ssim_loss
from threestudio.systems.base import GaussianSystem
from threestudio.utils.errors import ConfigError, MissingModelError


@threestudio.register("gaussianip-reconstruct-system")
class ReconstructSystem(GaussianSystem):
    stage_label = "stage 3 (reconstruction)"
    oom_advice = (
        "lower the views per step data.batch_views, the Gaussian cap system.densify.max_points, or the "
        "loss resolution system.loss_scale"
    )

    @dataclass
    class Config(GaussianSystem.Config):
        init_from: str = "???"
        """Trial directory of a finished refine (stage 2) run."""
        densify: DensifyPolicy = field(
            default_factory=lambda: DensifyPolicy(densify_steps=[100], prune_steps=[500], stats_until=600)
        )
        """Densify/prune schedule of stage 3 (method §8: densify at 100, prune at 500)."""
        lambda_l1: float = 10.0
        """Weight of the L1 photometric loss (method §8)."""
        lambda_ssim: float = 1.0
        """Weight of the 1 - SSIM loss (method §8)."""
        lambda_lpips: float = 15.0
        """Weight of LPIPS-VGG (method §8). Its weights are required (a missing file stops the run
        before it starts); 0 is the explicit way to run without it."""
        lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
        """Where the LPIPS-VGG weight files are (``vgg_path``, ``heads_path``)."""
        loss_scale: float = 0.5
        """Resolution of the loss crops relative to the renders (method §8: half resolution)."""

    @classmethod
    def preflight(cls, cfg: dict | DictConfig, mode: str):
        c = super().preflight(cfg, mode)
        if c.loss_scale <= 0:
            raise ConfigError(f"system.loss_scale must be > 0, got {c.loss_scale}")
        if mode == "train":
            read_stage(c.init_from, "refine", ("cameras",))
        if c.lambda_lpips > 0 and mode in ("train", "check"):
            miss = lpips_vgg.missing(c.lpips)
            if miss:
                raise MissingModelError("missing pretrained models (nothing was started):\n  " + "\n  ".join(miss))
        return c

    def __init__(self, cfg: dict | DictConfig, trial_dir: str, max_steps: int = 800):
        super().__init__(cfg, trial_dir, max_steps)
        self.stage2 = read_stage(self.cfg.init_from, "refine", ("cameras",))
        self.body_type = self.cfg.body_type or self.stage2.get("body", "anny-body")
        self.geometry, self.appearance = load_avatar(
            self.stage2["avatar_in"],
            self.cfg.geometry_type,
            self.cfg.geometry,
            self.cfg.appearance_type,
            self.cfg.appearance,
        )
        self._frozen: dict = {}
        """Frozen helper networks (LPIPS), kept out of the module tree so that checkpoints hold none of them."""

    @property
    def lpips(self):
        """The LPIPS-VGG network once loaded (``on_fit_start``), else None."""
        return self._frozen.get("lpips")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.cfg.lambda_lpips > 0:
            self._frozen["lpips"] = lpips_vgg.LPIPSVGG(self.cfg.lpips).to(self.device)
        dm = getattr(self.trainer, "datamodule", None)
        if self.device.type == "cuda" and hasattr(dm, "target_images"):  # 32 uint8 1024² views: ~100 MB
            self._frozen["targets"] = dm.target_images(held=True).to(self.device)
        self.write_manifest(
            stage="reconstruct",
            init_from=self.stage2["trial_dir"],
            prompt=self.stage2.get("prompt"),
            face_image=self.stage2.get("face_image"),
            lpips=self.lpips is not None,
        )

    def prepare_train_batch(self, batch):
        """Targets held on the device (:meth:`on_fit_start`) are not copied again with each batch."""
        if "targets" in self._frozen:
            return replace(batch, images=None)
        return batch

    def compute_losses(self, batch, step: int) -> tuple[dict, dict, dict]:
        """Losses of method §8 on the loss boxes of ``batch`` (a :class:`TargetBatch`) at ``loss_scale``:
        ``loss_l1``, ``loss_ssim`` and, once LPIPS is loaded, ``loss_lpips``; logs the crops' PSNR."""
        out = self.render(batch.cams)
        resident = self._frozen.get("targets")
        images = batch.images if batch.images is not None else resident[batch.index.to(resident.device)]
        r = crop_boxes(out["comp_rgb"], batch.bbox.tolist(), self.cfg.loss_scale)
        t = crop_boxes(images.float() / 255.0, batch.bbox.tolist(), self.cfg.loss_scale)
        losses = {"loss_l1": (r - t).abs().mean(), "loss_ssim": ssim_loss(r, t)}
        if self.lpips is not None:
            losses["loss_lpips"] = self.lpips(r, t).mean()
        return losses, out, {"psnr": psnr(r.detach(), t)}
