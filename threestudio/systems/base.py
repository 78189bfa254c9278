"""Shared Lightning plumbing of the stage systems: config parsing, trial-directory I/O, preflight."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

import threestudio
from threestudio.models.appearance.specular import FILE_SUFFIX as SPECULAR_SUFFIX
from threestudio.utils.config import parse_structured
from threestudio.utils.gpu import MemoryBudget
from threestudio.utils.io import atomic_write_text, save_image, save_video


class BaseSystem(pl.LightningModule):
    """A stage of the pipeline. Subclasses define ``Config`` (derived from ``BaseSystem.Config``),
    :meth:`preflight` (fast checks run by launch.py before the trial directory is created) and the
    Lightning hooks, and name themselves and their memory knobs in ``stage_label`` / ``oom_advice``
    (used by launch.py's out-of-memory message)."""

    stage_label = "this stage"
    oom_advice = "lower the stage's batch sizes or resolution"

    @dataclass
    class Config:
        max_gpu_memory_gb: float = 0.0
        """GPU memory budget of the stage in GiB (0 = what the device has free when the stage starts).
        The CUDA allocator is capped at it and batch sizes that trade memory for speed follow it."""

    def __init__(self, cfg: dict, trial_dir: str):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.trial_dir = Path(trial_dir)
        self.automatic_optimization = False
        self.budget: MemoryBudget | None = None
        """Set by :meth:`apply_budget` once the device is known."""

    def apply_budget(self, device) -> MemoryBudget:
        """Resolve ``max_gpu_memory_gb`` on ``device`` and cap the CUDA allocator at it."""
        self.budget = MemoryBudget(device, self.cfg.max_gpu_memory_gb)
        self.budget.apply()
        if self.budget.limited:
            msg = f"GPU memory budget: {self.budget.gib:.1f} GiB"
            self.print(msg) if self._trainer is not None else print(msg)
        return self.budget

    def memory_record(self) -> dict:
        """Manifest entries on GPU memory: the budget and the allocator's peak (GiB); empty on CPU."""
        b = self.budget
        if b is None or not b.limited:
            return {}
        return {"gpu_budget_gib": round(b.gib, 2), "gpu_peak_reserved_gib": round(b.peak_reserved_gib(), 2)}

    @classmethod
    def preflight(cls, cfg: dict, mode: str) -> None:
        """Validate the config and inputs; raise ``UserError`` with one clear message. ``mode`` is the
        launch mode (``train``, ``validate``, ``test``, ``export``) or ``check``: everything that does
        not need an earlier stage's outputs (configs, model files)."""
        parse_structured(cls.Config, cfg)

    def save_path(self, *parts: str) -> Path:
        p = self.trial_dir.joinpath("save", *parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_manifest(self, **entries) -> None:
        """Merge ``entries`` into ``<trial>/manifest.json`` (the hand-off to the next stage)."""
        path = self.trial_dir / "manifest.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(entries)
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)  # Cameras or TargetBatch

    @property
    def step(self) -> int:
        """Optimiser steps taken so far (= the index of the current training step)."""
        return int(self.global_step)


def load_avatar(path, geometry_type: str, geometry_cfg: dict, appearance_type: str = "", appearance_cfg: dict | None = None):
    """Gaussians (and their specular appearance, if any) from an avatar PLY of an earlier stage.

    The SH degree and the specular feature size are read from the file; the appearance network is
    ``<avatar>.specular.safetensors`` beside it (safetensors: loading runs no code). If
    ``appearance_type`` asks for specular but the avatar is diffuse-only, fresh features and a fresh
    network are created (specular added in a later stage). A ``<avatar>.specular.pt`` of an earlier
    version (normal-aligned lobes, pickle format) is never opened: the avatar loads diffuse-only.

    Raises:
        UserError: the PLY or the network file is not what it should be.

    Returns:
        ``(model, appearance or None)``.
    """
    import math
    from pathlib import Path

    from threestudio.utils.ply import read_gaussian_ply

    params, extra = read_gaussian_ply(path)  # read once
    d = len([k for k in extra if k.startswith("spec_")])
    net = Path(path).with_suffix(SPECULAR_SUFFIX)
    appearance = None
    if d > 0 and net.is_file():
        appearance = threestudio.find("asg-specular-appearance").load(net)
    elif d > 0 and Path(path).with_suffix(".specular.pt").is_file() and not appearance_type:
        print(f"note: {Path(path).with_suffix('.specular.pt')} is an earlier, degenerate specular model in pickle "
              "format; it is not opened and the avatar is shown diffuse-only (rerun stage 3 with --specular)")
    elif appearance_type:
        appearance = threestudio.find(appearance_type)(appearance_cfg or {})
        if d != appearance.cfg.feature_dim:  # specular added in a later stage: fresh features
            d = appearance.cfg.feature_dim
            n = params["means"].shape[0]
            params = {**params, "spec_features": 0.1 * torch.randn(n, d, generator=torch.Generator().manual_seed(0))}
    cfg = dict(geometry_cfg or {})
    cfg["sh_degree"] = int(round(math.sqrt(params["f_rest"].shape[1] + 1))) - 1
    cfg["spec_feature_dim"] = d
    model = threestudio.find(geometry_type)(cfg)
    model.load_params(params, extra, str(path))
    return model, appearance


class GaussianSystem(BaseSystem):
    """A stage that optimises Gaussians: renderer choice, densify strategy state in checkpoints,
    validation grid, test turntable and ``save/avatar.ply`` export. Subclasses set
    ``self.geometry`` and ``self.strategy`` and define ``Config`` with ``renderer_type``,
    ``renderer``, ``body_type`` and ``turntable_fps``."""

    _renderer = None

    def __init__(self, cfg: dict, trial_dir: str):
        super().__init__(cfg, trial_dir)
        self.appearance = None
        """Optional view-dependent appearance (``asg-specular-appearance``); None = SH colour only."""
        self.body_type = getattr(self.cfg, "body_type", "")
        """Body template kind recorded in the manifest (subclasses resolve it from earlier stages)."""
        self._val_images: list = []
        self._test_frames: list = []

    @property
    def renderer(self):
        if self._renderer is None:
            name = self.cfg.renderer_type
            if name == "auto":
                name = "gsplat-renderer" if self.device.type == "cuda" else "torch-splat-renderer"
            self._renderer = threestudio.find(name)(self.cfg.renderer)
        return self._renderer

    def render(self, cams):
        colors = None
        if self.appearance is not None:
            colors = self.appearance.colors(self.geometry, cams.c2w.to(self.geometry.means))
        return self.renderer.render(self.geometry, cams, colors)

    def on_fit_start(self) -> None:
        self.apply_budget(self.device)

    def configure_optimizers(self):
        groups = self.geometry.param_groups()
        if self.appearance is not None:
            groups += self.appearance.param_groups()
        return torch.optim.Adam(groups, lr=0.0, eps=1e-15)

    def backward_step(self, loss, out: dict, cams, step: int, optimizer) -> None:
        """Backward of one step (Lightning's manual backward when attached to a Trainer), densify
        statistics from the renderer output ``out``, and the position learning rate of ``step``.
        The caller steps ``optimizer`` and then calls :meth:`densify_step`."""
        optimizer.zero_grad(set_to_none=True)
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()
        self.strategy.accumulate(step, out["means2d"].grad, out["radii"], cams.width, cams.height)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = self.geometry.means_lr(step)

    def densify_step(self, step: int, optimizer) -> None:
        info = self.strategy.step(step, self.geometry, optimizer)
        if info:
            msg = f"step {step}: densify/prune {info}"
            self.print(msg) if self._trainer is not None else print(msg)

    def on_save_checkpoint(self, checkpoint) -> None:
        s = self.strategy
        checkpoint["densify_state"] = {"grad_accum": s.grad_accum, "denom": s.denom, "max_radii": s.max_radii}

    def on_load_checkpoint(self, checkpoint) -> None:
        st = checkpoint.get("densify_state")
        if st:
            self.strategy.grad_accum, self.strategy.denom, self.strategy.max_radii = st["grad_accum"], st["denom"], st["max_radii"]

    def on_train_batch_start(self, batch, batch_idx):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(getattr(dm, "train_dataset", None), "update_step"):
            dm.train_dataset.update_step(self.step + 1)

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        self._val_images.append(self.render(batch)["comp_rgb"][0].cpu())

    def on_validation_epoch_end(self) -> None:
        imgs = self._val_images
        if imgs:
            n = len(imgs) // 2 or 1
            rows = [torch.cat(imgs[i:i + n], dim=1) for i in range(0, len(imgs), n)]
            save_image(self.save_path(f"it{self.step}-val.png"), torch.cat(rows, dim=0))
        self._val_images = []

    @torch.no_grad()
    def test_step(self, batch, batch_idx):
        self._test_frames.append(self.render(batch)["comp_rgb"][0].cpu())

    def on_test_epoch_end(self) -> None:
        frames = self._test_frames
        if frames:
            save_video(self.save_path("turntable.mp4"), frames, fps=self.cfg.turntable_fps)
            self.write_manifest(turntable="save/turntable.mp4")
        self._test_frames = []
        self.export()

    def on_train_end(self) -> None:
        self.export()

    def export(self) -> None:
        """Write ``save/avatar.ply`` (standard 3DGS PLY) and record it in the manifest."""
        self.geometry.save_ply(self.save_path("avatar.ply"))
        if self.appearance is not None:
            self.appearance.save(self.save_path("avatar" + SPECULAR_SUFFIX))
        self.write_manifest(specular=self.appearance is not None, avatar="save/avatar.ply", body=self.body_type,
                            num_gaussians=self.geometry.num_points, step=self.step, **self.memory_record())

