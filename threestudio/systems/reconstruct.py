"""Stage 3 of GaussianIP: reconstruction (method §8). Re-fits every Gaussian attribute of the
stage-1 avatar to the refined views of stage 2: ``λ_l1 L1 + λ_ssim (1 - SSIM) + λ_lpips LPIPS``
inside a loss box around the rendered body (from the stage-1 alpha, so hands are never clipped:
method §12.19), with densify and prune-only events that fire."""
from __future__ import annotations

from dataclasses import dataclass, field

import threestudio
from threestudio.models.geometry.strategy import DensifyStrategy
from threestudio.ops.losses import crop_boxes, psnr, ssim_loss
from threestudio.systems.base import GaussianSystem
from threestudio.systems.stages import read_stage
from threestudio.utils.config import parse_structured


@threestudio.register("gaussianip-reconstruct-system")
class ReconstructSystem(GaussianSystem):
    @dataclass
    class Config:
        init_from: str = "???"
        """Trial directory of a finished refine (stage 2) run."""
        renderer_type: str = "auto"
        renderer: dict = field(default_factory=dict)
        geometry_type: str = "body-gaussian-geometry"
        geometry: dict = field(default_factory=dict)
        body_type: str = ""
        densify: dict = field(default_factory=lambda: {"densify_steps": [100], "prune_steps": [500], "stats_until": 600})
        lambda_l1: float = 10.0
        lambda_ssim: float = 1.0
        lambda_lpips: float = 15.0
        """Used only when the ``lpips`` package and its VGG weights are available (logged otherwise)."""
        loss_size: int = 0
        """Side of the square the loss boxes are resized to (0 = the largest box side)."""
        turntable_fps: int = 30
        appearance_type: str = ""
        """``asg-specular-appearance`` for SpecularIP's SCR (trains features and network); a specular
        stage-1 avatar keeps its appearance either way."""
        appearance: dict = field(default_factory=dict)

    @classmethod
    def preflight(cls, cfg: dict, mode: str) -> None:
        c = parse_structured(cls.Config, cfg)
        if mode == "train":
            read_stage(c.init_from, "refine", ("cameras",))

    def __init__(self, cfg: dict, trial_dir: str, max_steps: int = 800):
        super().__init__(cfg, trial_dir)
        self.stage2 = read_stage(self.cfg.init_from, "refine", ("cameras",))
        self.body_type = self.cfg.body_type or self.stage2.get("body", "anny-body")
        from threestudio.systems.base import load_avatar

        self.geometry, self.appearance = load_avatar(self.stage2["avatar_in"], self.cfg.geometry_type, self.cfg.geometry,
                                                     self.cfg.appearance_type, self.cfg.appearance)
        self.strategy = DensifyStrategy(self.cfg.densify)
        self.lpips = None

    def on_fit_start(self) -> None:
        self.lpips = _load_lpips(self.device) if self.cfg.lambda_lpips > 0 else None
        if self.cfg.lambda_lpips > 0 and self.lpips is None:
            self.print("LPIPS disabled: the `lpips` package or its VGG backbone weights are not available; "
                       "stage 3 uses L1 + SSIM only")
        self.write_manifest(stage="reconstruct", init_from=self.stage2["trial_dir"], prompt=self.stage2.get("prompt"),
                            face_image=self.stage2.get("face_image"), lpips=self.lpips is not None)

    def losses(self, batch) -> dict:
        out = self.render(batch.cams)
        r = crop_boxes(out["comp_rgb"], batch.bbox.tolist(), self.cfg.loss_size or None)
        t = crop_boxes(batch.images, batch.bbox.tolist(), self.cfg.loss_size or None)
        losses = {"loss_l1": (r - t).abs().mean(), "loss_ssim": ssim_loss(r, t)}
        if self.lpips is not None:
            losses["loss_lpips"] = self.lpips(r * 2 - 1, t * 2 - 1).mean()
        return {"out": out, "losses": losses, "psnr": psnr(r.detach(), t)}

    def train_step(self, batch, step: int, optimizer):
        res = self.losses(batch)
        L = res["losses"]
        loss = self.cfg.lambda_l1 * L["loss_l1"] + self.cfg.lambda_ssim * L["loss_ssim"]
        if "loss_lpips" in L:
            loss = loss + self.cfg.lambda_lpips * L["loss_lpips"]
        self.backward_step(loss, res["out"], batch.cams, step, optimizer)
        return loss, L, res["psnr"]

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        step = self.step
        loss, L, p = self.train_step(batch, step, opt.optimizer)
        opt.step()
        self.densify_step(step + 1, opt.optimizer)
        self.log_dict({"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in L.items()},
                       "train/psnr": p, "train/points": float(self.geometry.num_points)}, on_step=True,
                      batch_size=len(batch))
        return loss.detach()


def _load_lpips(device):
    try:
        import lpips  # noqa: F401

        return lpips.LPIPS(net="vgg", verbose=False).to(device).eval().requires_grad_(False)
    except Exception:  # noqa: BLE001 - missing package or weights: documented fallback
        return None
