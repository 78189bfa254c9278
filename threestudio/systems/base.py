"""The system base of every pipeline stage, and the base of the stages that optimise Gaussians.

* :class:`BaseSystem` (plain object): the one ``Config`` every stage's config extends (memory budget,
  body template, Gaussian geometry, renderer), preflight checks of every plugin sub-config before the
  trial directory exists, trial-directory I/O, the memory budget, rendering the avatar.
* :class:`GaussianSystem` (a Lightning module as well): stages that train Gaussians (1 and 3). One
  training step: ``losses = compute_losses(batch, step)`` -> :meth:`weighted_loss` (Σ λ_x · loss_x,
  threestudio's pattern) -> backward -> densify statistics -> optimiser step -> densify event -> log.
  Data-parallel (``trainer.devices`` > 1): each rank renders its share of the step's views, the
  gradients and screen-space statistics are averaged over the ranks after the backward
  (:mod:`threestudio.utils.distributed`), and the replicas' checksums are compared at every densify event.
"""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

import threestudio
from threestudio.data.handoff import write_manifest
from threestudio.models.appearance.specular import FILE_SUFFIX as SPECULAR_SUFFIX
from threestudio.models.geometry.strategy import DensifyPolicy, DensifyStrategy, gaussian_adam
from threestudio.models.renderers.base import render_avatar, resolve_renderer_type
from threestudio.utils.config import check_plugin_config, parse_structured
from threestudio.utils.distributed import all_reduce_max, average_gradients, replica_checksums
from threestudio.utils.errors import ConfigError
from threestudio.utils.gpu import MemoryBudget, to_device_async
from threestudio.utils.io import BackgroundWriter, after_launches, quantize_uint8, save_image, save_video


class BaseSystem:
    """A stage of the pipeline. Subclasses extend ``Config``, add checks to :meth:`preflight` (run by
    launch.py before the trial directory is created) and name themselves and their memory knobs in
    ``stage_label`` / ``oom_advice`` (launch.py's out-of-memory message). A stage that trains nothing
    implements :meth:`run`; :class:`GaussianSystem` stages are run by a Lightning Trainer."""

    stage_label = "this stage"
    oom_advice = "lower the stage's batch sizes or resolution"
    trainable = False
    """True for stages that a Lightning Trainer optimises (:class:`GaussianSystem`)."""

    @dataclass
    class Config:
        max_gpu_memory_gb: float = 0.0
        """GPU memory budget of the stage in GiB (0 = what the device has free when the stage starts).
        The CUDA allocator is capped at it and batch sizes that trade memory for speed follow it."""
        body_type: str = ""
        """Body template plugin (``anny-body``, ``smplx-body``); '' = the one stage 1 used (its manifest)."""
        body: dict = field(default_factory=dict)
        """Config of the body template plugin ('' body_type: stage 1's)."""
        geometry_type: str = "body-gaussian-geometry"
        """Gaussian geometry plugin."""
        geometry: dict = field(default_factory=dict)
        """Config of the geometry plugin (learning rates, initialisation)."""
        renderer_type: str = "auto"
        """``auto``: gsplat on CUDA, the pure-torch rasterizer on CPU; or a renderer plugin name."""
        renderer: dict = field(default_factory=dict)
        """Config of the renderer plugin (background, near plane, ...)."""

    def __init__(self, cfg: dict | DictConfig, trial_dir: str, max_steps: int = 0):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.trial_dir = Path(trial_dir)
        self.max_steps = max_steps
        self.budget: MemoryBudget | None = None
        """Set by :meth:`apply_budget` once the device is known."""
        self.appearance = None
        """Optional view-dependent appearance (``asg-specular-appearance``); None = SH colour only."""
        self._renderer = None

    # ------------------------------------------------------------------ checks before anything is written
    @classmethod
    def preflight(cls, cfg: dict | DictConfig, mode: str):
        """Validate the config and inputs; raise ``UserError`` with one clear message. ``mode`` is the
        launch mode (``train``, ``validate``, ``test``, ``export``) or ``check``: everything that does
        not need an earlier stage's outputs (configs, model files). Every plugin sub-config
        (``system.renderer``, ``system.densify``, ``system.guidance.face``, ...) is parsed here by its
        plugin's ``Config``. Returns the parsed config."""
        c = check_plugin_config(cls.Config, cfg, "system")
        if c.renderer_type == "auto":  # the renderer this machine would run (check_plugin_config skips auto)
            renderer = resolve_renderer_type("auto", "cuda" if torch.cuda.is_available() else "cpu")
            check_plugin_config(threestudio.find(renderer).Config, c.renderer, "system.renderer", allow_missing=True)
        return c

    # ------------------------------------------------------------------ trial directory
    def save_path(self, *parts: str) -> Path:
        """``<trial>/save/<parts>``, its folder created."""
        p = self.trial_dir.joinpath("save", *parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the stage's files (False on the other ranks of a data-parallel run)."""
        return True

    def write_manifest(self, **entries) -> None:
        """Merge ``entries`` into ``<trial>/manifest.json`` (the hand-off to the next stage); rank 0 only."""
        if self.is_writer:
            write_manifest(self.trial_dir, **entries)

    def report(self, msg: str) -> None:
        """Print a progress line."""
        print(msg)

    # ------------------------------------------------------------------ memory
    def apply_budget(self, device) -> MemoryBudget:
        """Resolve ``max_gpu_memory_gb`` on ``device`` and cap the CUDA allocator at it."""
        self.budget = MemoryBudget(device, self.cfg.max_gpu_memory_gb)
        self.budget.apply()
        if self.budget.limited:
            self.report(f"GPU memory budget: {self.budget.gib:.1f} GiB")
        return self.budget

    def memory_record(self) -> dict:
        """Manifest entries on GPU memory: the budget and the allocator's peak (GiB), its event counters
        so far (:meth:`~threestudio.utils.gpu.MemoryBudget.allocator_counts`, ``gpu_allocator``) and its
        settings (:meth:`~threestudio.utils.gpu.MemoryBudget.allocator_settings`, ``gpu_alloc_conf``);
        empty on CPU."""
        b = self.budget
        if b is None or not b.limited:
            return {}
        return {
            "gpu_budget_gib": round(b.gib, 2),
            "gpu_peak_reserved_gib": round(b.peak_reserved_gib(), 2),
            "gpu_allocator": b.allocator_counts(),
            "gpu_alloc_conf": b.allocator_settings(),
        }

    # ------------------------------------------------------------------ rendering
    @property
    def renderer(self):
        """The renderer plugin (``renderer_type: auto`` resolved on the Gaussians' device)."""
        if self._renderer is None:
            name = resolve_renderer_type(self.cfg.renderer_type, self.geometry.means.device.type)
            self._renderer = threestudio.find(name)(self.cfg.renderer)
        return self._renderer

    def render(self, cams) -> dict:
        """Render the avatar (with its specular appearance, if any) for the batch ``cams``."""
        return render_avatar(self.renderer, self.geometry, cams, self.appearance)

    def run(self, device: torch.device) -> None:
        """The whole stage, for stages that train nothing."""
        raise NotImplementedError


class GaussianSystem(BaseSystem, pl.LightningModule):
    """A stage that optimises Gaussians: the training step, densify strategy state in checkpoints,
    validation grid, test turntable and ``save/avatar.ply`` export. Subclasses set ``self.geometry``
    (and ``self.appearance``) and implement :meth:`compute_losses`."""

    trainable = True

    @dataclass
    class Config(BaseSystem.Config):
        appearance_type: str = ""
        """``asg-specular-appearance`` for SpecularIP's view-dependent highlights; '' = SH colour only."""
        appearance: dict = field(default_factory=dict)
        """Config of the appearance plugin."""
        densify: DensifyPolicy = field(default_factory=DensifyPolicy)
        """Densify/prune schedule and policy (:class:`~threestudio.models.geometry.strategy.DensifyPolicy`)."""
        turntable_fps: int = 30
        """Frame rate of ``save/turntable.mp4``."""

    def __init__(self, cfg: dict | DictConfig, trial_dir: str, max_steps: int = 0):
        super().__init__(cfg, trial_dir, max_steps)
        self.automatic_optimization = False
        self.body_type = self.cfg.body_type
        """Body template kind recorded in the manifest (subclasses resolve it from earlier stages)."""
        self.strategy = DensifyStrategy(self.cfg.densify)
        self._val_images: list = []
        self._test_frames: list = []
        self._writer = BackgroundWriter(workers=2)
        """Validation grids, the avatar PLY and the turntable video are written on worker threads while
        training, the test renders or the other file go on (:meth:`finish_writes` waits for all but the
        video, :meth:`_finish_turntable` for the video)."""
        self.replica_checks: list[dict] = []
        """Data-parallel runs: the replicas' parameter checksums at each densify event (manifest ``replicas``)."""
        self.timings: dict[str, float] = {}
        """Wall seconds per phase (``setup``, ``train`` without validation, ``validation``, ``test``),
        written to the manifest as ``timings_s``."""
        self._t: dict[str, float] = {}
        self._step_ends: list[float] = []
        """Host clock at the end of each training step (``step_ms`` of the manifest)."""
        self._exported: tuple | None = None
        """(step, Gaussian count) of the avatar files last written by :meth:`export`."""
        self._queued: tuple | None = None
        """(step, Gaussian count) of an avatar PLY queued on the writer and not yet waited for."""
        self._pending_manifest: dict = {}
        """Manifest entries of queued files (the avatar), written by :meth:`finish_writes` once the files
        are there."""
        self._turntable = None
        """The turntable video's encoding (a Future) until :meth:`_finish_turntable` takes it."""

    def report(self, msg: str) -> None:
        self.print(msg) if self._trainer is not None else print(msg)

    @property
    def step(self) -> int:
        """Optimiser steps taken so far (= the index of the current training step)."""
        return int(self.global_step)

    @property
    def processes(self) -> int:
        """Processes of a data-parallel run (1 without one)."""
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def is_writer(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    # ------------------------------------------------------------------ the training step
    def compute_losses(self, batch, step: int) -> tuple[dict, dict, dict]:
        """Render ``batch`` and compute the stage's losses at ``step``.

        Returns:
            ``(losses, render, logs)``: ``loss_<x>`` scalar tensors (each weighted by the config's
            ``lambda_<x>``), the renderer output dict (its ``means2d``/``radii`` feed densification)
            and further scalars to log.
        """
        raise NotImplementedError

    def weighted_loss(self, losses: dict) -> torch.Tensor:
        """``Σ_x lambda_x · loss_x`` over ``losses`` (threestudio's pattern; a term whose λ is 0 adds
        nothing).

        Raises:
            ConfigError: a ``loss_<x>`` without a ``lambda_<x>`` in the config.
        """
        total = 0.0
        for name, value in losses.items():
            lam = self.cfg.get("lambda_" + name[len("loss_") :])
            if lam is None:
                raise ConfigError(f"{type(self).__name__}: {name} has no weight lambda_{name[len('loss_') :]}")
            if lam != 0:
                total = total + lam * value
        return total

    def optimization_step(self, batch, step: int, optimizer) -> dict:
        """One step without Lightning's bookkeeping: losses -> weighted sum -> backward -> densify
        statistics -> position learning rate of ``step``. The caller steps ``optimizer`` and then calls
        :meth:`densify_step`. Returns ``{"loss", "losses", "logs"}`` (tensors still attached)."""
        losses, out, logs = self.compute_losses(batch, step)
        loss = self.weighted_loss(losses)
        optimizer.zero_grad(set_to_none=True)
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()
        cams = getattr(batch, "cams", batch)
        m2d, radii = out["means2d"].grad, out["radii"]
        if self.processes > 1:
            m2d, radii = self.average_over_ranks(step, optimizer, m2d, radii)
        self.strategy.accumulate(step, m2d, radii, cams.width, cams.height)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = self.geometry.means_lr(step)
        return {"loss": loss, "losses": losses, "logs": logs}

    def average_over_ranks(self, step: int, optimizer, means2d_grad, radii) -> tuple:
        """Data-parallel: average every trained parameter's gradient over the ranks and, while the densify
        statistics are collected, the view-summed screen-space gradient ([1, N, 2]) and the view-wise
        maximum radii ([1, N], maximum over the ranks). Each rank's loss is the mean over its share of
        the views, so the averages equal the one-process gradients of the whole batch.
        Returns ``(means2d_grad, radii)`` for :meth:`DensifyStrategy.accumulate`."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not self.strategy.collects(step) or means2d_grad is None:
            average_gradients(params, [])
            return means2d_grad, radii
        (g,) = average_gradients(params, [means2d_grad.sum(0, keepdim=True)])
        return g, all_reduce_max(radii.float().amax(0, keepdim=True))

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()  # LightningOptimizer: its step() advances global_step
        step = self.step
        res = self.optimization_step(batch, step, opt.optimizer)
        opt.step()
        self.densify_step(step + 1, opt.optimizer)
        logs = {
            "train/loss": res["loss"].detach(),
            **{f"train/{k}": v.detach() for k, v in res["losses"].items()},
            **{f"train/{k}": v for k, v in res["logs"].items()},
            # a device tensor copied without a host sync (Lightning would copy a float synchronously)
            "train/points": to_device_async(torch.tensor(float(self.geometry.num_points)), self.device),
        }
        self.log_dict(logs, on_step=True, batch_size=len(batch))
        return res["loss"].detach()

    def densify_step(self, step: int, optimizer) -> None:
        """Run the densify / prune event scheduled at ``step`` (if any) and report its counts."""
        info = self.strategy.step(step, self.geometry, optimizer)
        if info:
            self.report(f"step {step}: densify/prune {info}")
            if self.processes > 1:
                self.check_replicas(step, optimizer)

    def check_replicas(self, step: int, optimizer) -> None:
        """Compare the checksums of every trained parameter over the ranks (a collective) and record them.

        Raises:
            RuntimeError: the replicas differ (a densify decision or an update was not the same on
                every rank); training stops rather than go on with diverged avatars.
        """
        sums = replica_checksums([p for group in optimizer.param_groups for p in group["params"]])
        self.replica_checks.append({"step": step, "points": self.geometry.num_points, "checksums": sums})
        if len(set(sums)) != 1:
            raise RuntimeError(
                f"step {step}: the data-parallel replicas diverged (parameter checksums by rank: {sums}); "
                "please report this with the run's configs/parsed.yaml"
            )

    # ------------------------------------------------------------------ Lightning plumbing
    def on_fit_start(self) -> None:
        self._tick("setup")
        self.apply_budget(self.device)
        if self.processes > 1:  # each rank its own SDS noise and timesteps, as views of one batch have
            pl.seed_everything(torch.initial_seed() + self.global_rank, verbose=False)

    def configure_optimizers(self):
        groups = self.geometry.param_groups()
        if self.appearance is not None:
            groups += self.appearance.param_groups()
        return gaussian_adam(groups)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if self._trainer is not None and self.trainer.training:
            batch = self.prepare_train_batch(batch)
        return batch.to(device)  # Cameras, TargetBatch or a stage's prepared batch

    def on_save_checkpoint(self, checkpoint) -> None:
        s = self.strategy
        checkpoint["densify_state"] = {"grad_accum": s.grad_accum, "denom": s.denom, "max_radii": s.max_radii}

    def on_load_checkpoint(self, checkpoint) -> None:
        st = checkpoint.get("densify_state")
        if st:
            s = self.strategy
            s.grad_accum, s.denom, s.max_radii = st["grad_accum"], st["denom"], st["max_radii"]

    def _tick(self, phase: str) -> None:
        self._t[phase] = time.perf_counter()

    def _tock(self, phase: str) -> None:
        if phase in self._t:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - self._t.pop(phase)

    def on_train_start(self) -> None:
        self._tock("setup")
        self._tick("train")
        self._step_ends = [time.perf_counter()]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._step_ends.append(time.perf_counter())

    def step_times(self) -> dict:
        """Wall milliseconds per training step from the host clock (no device synchronisation; a step
        that renders with gsplat waits for the previous one, so this tracks the GPU): ``first`` (model
        warm-up: compilation, CUDA-graph capture), ``median`` of the later steps and ``p90``."""
        ms = [1e3 * (b - a) for a, b in itertools.pairwise(self._step_ends)]
        if not ms:
            return {}
        rest = sorted(ms[1:]) or ms
        return {
            "first": round(ms[0], 1),
            "median": round(rest[len(rest) // 2], 1),
            "p90": round(rest[int(0.9 * (len(rest) - 1))], 1),
            "steps": len(ms),
        }

    def on_validation_start(self) -> None:
        self._tick("validation")

    def on_validation_end(self) -> None:
        self._tock("validation")

    def on_test_start(self) -> None:
        self._tick("test")

    def on_test_end(self) -> None:
        self.finish_writes()
        self._finish_turntable()
        self._tock("test")
        self._write_timings()

    def _finish_turntable(self) -> None:
        """Record ``save/turntable.mp4`` in the manifest once its encoding is done: at the end of the
        launches when this stage runs in a chain (:func:`~threestudio.utils.io.after_launches`; the next
        stage reads the avatar, not the video, so it starts while the video is encoded), else now."""
        video, self._turntable = self._turntable, None
        if video is None:
            return
        record = functools.partial(_record_when_written, video, self.trial_dir, turntable="save/turntable.mp4")
        if not after_launches(record):
            record()

    def _write_timings(self) -> None:
        extra = {"replicas": {"processes": self.processes, "checks": self.replica_checks}} if self.processes > 1 else {}
        steps = {"step_ms": self.step_times()} if len(self._step_ends) > 1 else {}
        self.write_manifest(timings_s={k: round(v, 2) for k, v in self.timings.items()}, **steps, **extra)

    def prepare_train_batch(self, batch):
        """CPU-side work on a training batch before it moves to the GPU (identity here). Runs while
        the GPU still executes the previous step, so it costs no GPU time."""
        return batch

    def on_train_batch_start(self, batch, batch_idx):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(getattr(dm, "train_dataset", None), "update_step"):
            dm.train_dataset.update_step(self.step + 1)

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        if self.is_writer:  # rank 0 renders and writes the validation grid (uint8 made on the device)
            self._val_images.extend(quantize_uint8(self.render(batch)["comp_rgb"]).cpu().unbind(0))

    def on_validation_epoch_end(self) -> None:
        imgs = self._val_images
        if imgs:
            n = len(imgs) // 2 or 1
            rows = [torch.cat(imgs[i : i + n], dim=1) for i in range(0, len(imgs), n)]
            self._writer.submit(save_image, self.save_path(f"it{self.step}-val.png"), torch.cat(rows, dim=0))
        self._val_images = []

    @torch.no_grad()
    def test_step(self, batch, batch_idx):
        if self.is_writer:  # rank 0 renders and writes the turntable (uint8 frames made on the device)
            self._test_frames.extend(quantize_uint8(self.render(batch)["comp_rgb"]).cpu().unbind(0))

    def on_test_epoch_end(self) -> None:
        frames = self._test_frames
        if frames:  # rank 0 only (test_step); encoded while the avatar PLY is written (_finish_turntable)
            self._turntable = self._writer.submit_detached(
                _timed, save_video, self.save_path("turntable.mp4"), frames, fps=self.cfg.turntable_fps
            )
        self._test_frames = []
        self.export()

    def on_train_end(self) -> None:
        self._tock("train")
        if "validation" in self.timings:  # validation runs inside the training loop: count it once
            self.timings["train"] -= self.timings["validation"]
        self.export()
        self._write_timings()

    def export(self) -> None:
        """Queue ``save/avatar.ply`` (standard 3DGS PLY; rank 0 only): the Gaussians are copied to host
        memory now and the file is written on the background writer, while the test turntable renders;
        :meth:`finish_writes` waits for it and then records it in the manifest. The file is not
        written again while the Gaussians are those of the last export (the test turntable after
        training exports the avatar that the end of training already queued)."""
        if not self.is_writer:
            return
        state, ply = (self.step, self.geometry.num_points), self.save_path("avatar.ply")
        written = state == self._exported and ply.is_file()
        if not written and state != self._queued:
            self.geometry.save_ply(ply, writer=self._writer)
            if self.appearance is not None:
                self.appearance.save(self.save_path("avatar" + SPECULAR_SUFFIX))
            self._queued = state
        self._pending_manifest.update(
            specular=self.appearance is not None,
            avatar="save/avatar.ply",
            body=self.body_type,
            num_gaussians=self.geometry.num_points,
            step=self.step,
            **self.memory_record(),
        )

    def finish_writes(self) -> None:
        """Wait for every queued file (validation grids, avatar PLY; not the turntable video, see
        :meth:`_finish_turntable`), re-raising the first write error, then record the written files in
        the manifest."""
        self._writer.wait()
        if self._queued is not None:
            self._exported, self._queued = self._queued, None
        if self._pending_manifest and self.is_writer:
            self.write_manifest(**self._pending_manifest)
        self._pending_manifest = {}


def _timed(fn, *args, **kwargs) -> float:
    """``fn(*args, **kwargs)``; returns its wall seconds (e.g. the turntable's encoding on the writer thread)."""
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def _record_when_written(future, trial_dir: Path, **entries) -> None:
    """Wait for a detached write timed by :func:`_timed` (re-raising its error), then merge ``entries``
    and ``turntable_encode_s`` (the write's own seconds) into the manifest. It holds the future and the
    paths only, not the system, so a finished stage's tensors can go."""
    write_manifest(trial_dir, **entries, turntable_encode_s=round(future.result(), 2))
