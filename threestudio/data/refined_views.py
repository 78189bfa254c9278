"""Stage-3 data: the refined ring views of a stage-2 trial directory as training targets, plus the
validation / turntable cameras of the human camera module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

import threestudio
from threestudio.data.handoff import cameras_of, read_stage, read_view_records
from threestudio.data.human_cameras import (
    FixedCameras,
    HumanCameraConfig,
    _identity,
    turntable_cameras,
    validation_cameras,
)
from threestudio.ops.camera import Cameras
from threestudio.ops.losses import common_size_boxes
from threestudio.utils.config import parse_structured
from threestudio.utils.distributed import rank_share
from threestudio.utils.errors import ConfigError
from threestudio.utils.gpu import to_device_async
from threestudio.utils.typing import Int, Tensor, UInt8


@dataclass
class TargetBatch:
    """``cams`` (B views), ``images`` [B, H, W, 3] uint8 targets (None once the system holds every
    target on its device), ``bbox`` [B, 4] int loss boxes ``[x0, y0, x1, y1)`` (already grown to the
    common size of the step's whole batch), ``index`` [B] the views' numbers."""

    cams: Cameras
    images: UInt8[Tensor, "B H W 3"] | None
    bbox: Int[Tensor, "B 4"]
    index: Int[Tensor, " B"]

    def to(self, device) -> TargetBatch:
        """``cams`` and ``images`` on ``device`` (without making the host wait), and ``index`` too (it
        picks the resident targets there); ``bbox`` stays on the CPU (it sizes the crops)."""
        images = None if self.images is None else to_device_async(self.images, device)
        return TargetBatch(self.cams.to(device), images, self.bbox, to_device_async(self.index, device))

    def __len__(self) -> int:
        return len(self.cams)


def load_refined_views(trial_dir: str) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
    """Cameras, refined images [n, H, W, 3] (uint8, as stored) and loss boxes [n, 4] of a finished
    refine stage."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import imageio.v3 as iio

    man = read_stage(trial_dir, "refine", ("cameras",))
    views = read_view_records(Path(man["trial_dir"]) / man["cameras"])

    def read(v) -> torch.Tensor:
        return torch.from_numpy(np.asarray(iio.imread(Path(man["trial_dir"]) / v.refined))[..., :3].copy())

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PNG decoding releases the GIL
        imgs = list(pool.map(read, views))
    return cameras_of(views), torch.stack(imgs), torch.tensor([v.bbox for v in views], dtype=torch.long)


class RandomTargets(IterableDataset):
    """Infinite stream of :class:`TargetBatch` es of ``batch`` distinct random views (method §8). With
    ``views`` (a data-parallel rank's :func:`~threestudio.utils.distributed.rank_slice`) every rank draws
    the same global batch and yields its share. ``images`` None: the batches carry no images (the
    system holds every target and picks them by index)."""

    def __init__(
        self,
        cams: Cameras,
        images: Tensor | None,
        bbox: Tensor,
        batch: int,
        seed: int,
        views: slice = slice(None),
        box_multiple: int = 1,
    ):
        self.cams, self.images, self.bbox, self.batch, self.views = cams, images, bbox, batch, views
        self.box_multiple = box_multiple
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        n = len(self.cams)
        while True:
            idx = torch.randperm(n, generator=self.generator)[: min(self.batch, n)]
            # one crop size for the whole (global) batch, as one process would use (method §12.19)
            boxes = common_size_boxes(self.bbox[idx].tolist(), self.cams.width, self.cams.height, self.box_multiple)
            boxes = torch.tensor(boxes)
            idx, boxes = idx[self.views], boxes[self.views]
            yield TargetBatch(self.cams[idx], None if self.images is None else self.images[idx], boxes, idx)


@threestudio.register("refined-views-datamodule")
class RefinedViewsDataModule(pl.LightningDataModule):
    """Stage-3 data: random batches of refined views; validation and turntable cameras as in stage 1."""

    @dataclass
    class Config(HumanCameraConfig):
        init_from: str = "???"
        """Trial directory of a finished refine (stage 2) run."""
        batch_views: int = 4
        """Refined views per step (method §8: 4 of 32)."""
        box_multiple: int = 64
        """The common loss-box size of a step is rounded up to a multiple of this many pixels (at the
        render resolution; 1 = exact). Each new crop size makes cuDNN build new convolution plans for
        LPIPS-VGG and SSIM (forward and backward), which costs more than the step itself; with exact
        sizes almost every step of the first hundred meets a new size. On an H200 at the paper settings
        stage 3's training took 33 s instead of 58 s (p90 step 42 instead of 220 ms). The boxes stay
        around the body (each contains its alpha box), with a little more background."""

    def __init__(self, cfg: dict | DictConfig | None = None):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, "data")
        if self.cfg.box_multiple < 1:
            raise ConfigError(
                f"data.box_multiple must be 1 or more pixels (1 = exact loss boxes), got {self.cfg.box_multiple}"
            )
        self._data = None
        self._held = False

    def views_per_step(self) -> tuple[str, int]:
        """(config key, value) of the global batch that a data-parallel run splits over its processes."""
        return "batch_views", self.cfg.batch_views

    def _load(self):
        if self._data is None:
            self._data = load_refined_views(self.cfg.init_from)
        return self._data

    def target_images(self, held: bool = False) -> UInt8[Tensor, "n H W 3"]:
        """All refined views [n, H, W, 3] (uint8). ``held``: the caller keeps them (a system, on its GPU)
        and picks each batch's targets by ``TargetBatch.index``, so the training batches made from then on
        carry no images (no host gather of the batch's views, 12 MB at 4 x 1024², every step)."""
        self._held = self._held or held
        return self._load()[1]

    def train_dataloader(self):
        cams, images, bbox = self._load()
        return DataLoader(
            RandomTargets(
                cams,
                None if self._held else images,
                bbox,
                self.cfg.batch_views,
                self.cfg.seed,
                rank_share(self.trainer, self.cfg.batch_views),
                self.cfg.box_multiple,
            ),
            batch_size=None,
            collate_fn=_identity,
        )

    def val_dataloader(self):
        return DataLoader(FixedCameras(validation_cameras(self.cfg)), batch_size=None, collate_fn=_identity)

    def test_dataloader(self):
        return DataLoader(FixedCameras(turntable_cameras(self.cfg)), batch_size=None, collate_fn=_identity)
