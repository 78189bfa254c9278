"""Base classes that parse their ``Config`` on construction (threestudio style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from omegaconf import DictConfig

from threestudio.utils.config import parse_structured


class BaseObject:
    """Plain configurable object: ``cfg`` is the validated ``Config``; ``configure`` sets it up."""

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: dict | DictConfig | None = None, **kwargs: Any) -> None:
        self.cfg = parse_structured(self.Config, cfg)
        self.configure(**kwargs)

    def configure(self, **kwargs: Any) -> None:
        pass


class BaseModule(nn.Module):
    """``nn.Module`` with a validated ``Config``; ``configure`` builds parameters/buffers."""

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: dict | DictConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.configure(**kwargs)

    def configure(self, **kwargs: Any) -> None:
        pass
