"""Shared Lightning plumbing of the stage systems: config parsing, trial-directory I/O, preflight."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from threestudio.utils.config import parse_structured
from threestudio.utils.io import atomic_write_text


class BaseSystem(pl.LightningModule):
    """A stage of the pipeline. Subclasses define ``Config``, :meth:`preflight` (fast checks run by
    launch.py before the trial directory is created) and the Lightning hooks."""

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: dict, trial_dir: str):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.trial_dir = Path(trial_dir)
        self.automatic_optimization = False

    @classmethod
    def preflight(cls, cfg: dict, mode: str) -> None:
        """Validate the config and inputs; raise ``UserError`` with one clear message."""
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
        return batch.to(device)

    @property
    def step(self) -> int:
        """Optimiser steps taken so far (= the index of the current training step)."""
        return int(self.global_step)

    def configure_threads(self) -> None:
        if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, os.cpu_count() or 1))
