"""Camera samplers for human avatars (method §3): random training views with full-body, head and
back close-ups and their step windows; fixed validation views; turntable rings."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, IterableDataset

import threestudio
from threestudio.ops.camera import Cameras, orbit_cameras, ring_cameras, stratified_azimuths
from threestudio.utils.config import parse_structured
from threestudio.utils.distributed import rank_share


@dataclass
class HumanCameraConfig:
    batch_size: int = 4
    """Views per training step (method §3.2: 4)."""
    height: int = 1024
    """Training render height in pixels (method §3.2)."""
    width: int = 1024
    """Training render width in pixels."""
    eval_height: int = 1024
    """Validation / turntable render height in pixels."""
    eval_width: int = 1024
    """Validation / turntable render width in pixels."""
    elevation_range: list = field(default_factory=lambda: [-30.0, 30.0])
    """Full-body camera elevation range, degrees."""
    azimuth_range: list = field(default_factory=lambda: [-180.0, 180.0])
    """Full-body camera azimuth range, degrees (stratified over the batch; +90 = front)."""
    camera_distance_range: list = field(default_factory=lambda: [1.3, 1.7])
    """Full-body camera distance range, world units."""
    fovy_range: list = field(default_factory=lambda: [40.0, 70.0])
    """Vertical field-of-view range, degrees."""
    head_prob: float = 0.25
    """Probability of a head close-up batch inside ``head_steps``."""
    head_camera_distance_range: list = field(default_factory=lambda: [0.4, 0.6])
    """Head close-up camera distance range, world units."""
    head_azimuth_range: list = field(default_factory=lambda: [0.0, 180.0])
    """Head close-up azimuth range, degrees: the front half (front view at +90°)."""
    head_offset: float = 0.65
    """z of the head centre in the template frame, world units (anny: 0.656)."""
    head_steps: list = field(default_factory=lambda: [1200, 3600])
    """Head close-ups are sampled only for steps in this closed window."""
    back_prob: float = 0.2
    """Probability of a back-of-head close-up batch inside ``back_steps``."""
    back_camera_distance_range: list = field(default_factory=lambda: [0.6, 0.8])
    """Back close-up camera distance range, world units."""
    back_azimuth_range: list = field(default_factory=lambda: [-180.0, 0.0])
    """Back close-up azimuth range, degrees: the back half."""
    back_offset: float = 0.65
    """z of the back close-ups' look-at point, world units."""
    back_steps: list = field(default_factory=lambda: [1200, 3600])
    """Back close-ups are sampled only for steps in this closed window."""
    eval_camera_distance: float = 1.8
    """Validation / turntable camera distance, world units."""
    eval_elevation_deg: float = 5.0
    """Validation / turntable camera elevation, degrees."""
    eval_fovy_deg: float = 70.0
    """Validation / turntable vertical field of view, degrees."""
    eval_head_distance: float = 0.6
    """Distance of the validation head close-ups, world units."""
    n_val_views: int = 8
    """Validation: this many full-body azimuths plus the same as head close-ups."""
    n_test_views: int = 120
    """Turntable frames of the test video."""
    seed: int = 0
    """Seed of the camera sampler."""


def _u(lo_hi, n: int, g: torch.Generator) -> torch.Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + torch.rand(n, generator=g) * (hi - lo)


class RandomHumanCameras(IterableDataset):
    """Infinite stream of training batches (method §3.2); call :meth:`update_step` every step.

    In a data-parallel run (``views``: the rank's share) every rank draws the same global batch of
    ``batch_size`` views (same seed) and yields its own contiguous share, so the processes together
    train on exactly the views one process would."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.step = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.views = slice(None)
        """This rank's share of each global batch (:func:`~threestudio.utils.distributed.rank_slice`)."""

    def update_step(self, step: int) -> None:
        self.step = step

    def sample(self, step: int | None = None) -> Cameras:
        c, B, s = self.cfg, self.cfg.batch_size, self.step if step is None else step
        r = float(torch.rand(1, generator=self.generator))
        if c.head_steps[0] <= s <= c.head_steps[1] and r < c.head_prob:
            mode, d_rng, a_rng, cz = "head", c.head_camera_distance_range, c.head_azimuth_range, c.head_offset
        elif c.back_steps[0] <= s <= c.back_steps[1] and float(torch.rand(1, generator=self.generator)) < c.back_prob:
            mode, d_rng, a_rng, cz = "back", c.back_camera_distance_range, c.back_azimuth_range, c.back_offset
        else:
            mode, d_rng, a_rng, cz = "body", c.camera_distance_range, c.azimuth_range, 0.0
        az = stratified_azimuths(B, float(a_rng[0]), float(a_rng[1]), self.generator)
        return orbit_cameras(
            az,
            _u(c.elevation_range, B, self.generator),
            _u(d_rng, B, self.generator),
            _u(c.fovy_range, B, self.generator),
            c.height,
            c.width,
            cz,
            mode,
        )

    def __iter__(self):
        while True:
            yield self.sample()[self.views]


EVAL_VIEWS_PER_BATCH = 8
"""Views rendered together by a validation / test step: one gsplat call and one copy to the host for
eight views instead of eight (the order of the views is kept)."""


class FixedCameras(Dataset):
    """A fixed list of views (validation / test) in batches of ``views_per_batch`` consecutive views
    (the last one may be shorter)."""

    def __init__(self, cams: Cameras, views_per_batch: int = EVAL_VIEWS_PER_BATCH):
        if views_per_batch < 1:
            raise ValueError(f"views_per_batch must be >= 1, got {views_per_batch}")
        self.cams, self.k = cams, views_per_batch

    def __len__(self) -> int:
        return -(-len(self.cams) // self.k)

    def __getitem__(self, i: int) -> Cameras:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.cams[i * self.k : (i + 1) * self.k]


def validation_cameras(c: DictConfig) -> Cameras:
    n = c.n_val_views
    az = -180.0 + 360.0 * torch.arange(n) / n
    body = orbit_cameras(
        az, c.eval_elevation_deg, c.eval_camera_distance, c.eval_fovy_deg, c.eval_height, c.eval_width, 0.0, "body"
    )
    head = orbit_cameras(
        az,
        c.eval_elevation_deg,
        c.eval_head_distance,
        c.eval_fovy_deg,
        c.eval_height,
        c.eval_width,
        c.head_offset,
        "head",
    )
    return Cameras.cat([body, head])


def turntable_cameras(c: DictConfig) -> Cameras:
    """Test turntable starting at the front view (azimuth +90°), one full turn."""
    return ring_cameras(
        c.n_test_views,
        c.eval_elevation_deg,
        c.eval_camera_distance,
        c.eval_fovy_deg,
        c.eval_height,
        start_azimuth_deg=90.0,
    )


def _identity(x):
    return x


@threestudio.register("human-camera-datamodule")
class HumanCameraDataModule(pl.LightningDataModule):
    """Stage-1 data: random human cameras for training, fixed validation views, the test turntable."""

    @dataclass
    class Config(HumanCameraConfig):
        pass

    def __init__(self, cfg: dict | DictConfig | None = None):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, "data")
        self.train_dataset = RandomHumanCameras(self.cfg)

    def views_per_step(self) -> tuple[str, int]:
        """(config key, value) of the global batch that a data-parallel run splits over its processes."""
        return "batch_size", self.cfg.batch_size

    def train_dataloader(self):
        self.train_dataset.views = rank_share(self.trainer, self.cfg.batch_size)
        return DataLoader(self.train_dataset, batch_size=None, num_workers=0, collate_fn=_identity)

    def val_dataloader(self):
        return DataLoader(FixedCameras(validation_cameras(self.cfg)), batch_size=None, collate_fn=_identity)

    def test_dataloader(self):
        return DataLoader(FixedCameras(turntable_cameras(self.cfg)), batch_size=None, collate_fn=_identity)

    def predict_dataloader(self):
        return self.test_dataloader()
