"""Composable, strict configs (threestudio + nerfstudio conventions).

* Each plugin declares a nested ``@dataclass Config``; :func:`parse_structured` merges user values
  into ``OmegaConf.structured(Config)`` so an unknown key or a wrong type raises :class:`ConfigError`.
* :func:`load_config` composes YAML files (later wins) and OmegaConf dotlist overrides.
* Parsing has no side effects: the trial directory is created by ``launch.py``.

Custom resolvers: ``${repo:<rel>}`` -> absolute path inside the repository, ``${rmspace:<s>,<c>}``
-> ``s`` with spaces replaced by ``c``, ``${tiny_dir:<rel>}`` -> path under the tiny-model folder
(``$GIP_TINY_DIR`` or ``<repo>/.tiny``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from threestudio.utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_root() -> Path:
    """Folder that holds the generated tiny models (``$GIP_TINY_DIR`` or ``<repo>/.tiny``)."""
    return Path(os.environ.get("GIP_TINY_DIR", REPO_ROOT / ".tiny")).resolve()


def _rmspace(s: str, c: str = "_") -> str:
    s = re.sub(r"[^\w\- ,.]", "", str(s)).strip()
    return s.replace(" ", c)[:96] or "untitled"


for _name, _fn in {
    "repo": lambda rel="": str(REPO_ROOT / rel),
    "tiny_dir": lambda rel="": str(tiny_root() / rel),
    "rmspace": _rmspace,
}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_resolver(_name, _fn, annotation_validation="off")


@dataclass
class TrainerConfig:
    """Subset of ``lightning.Trainer`` arguments that runs use."""

    max_steps: int = 2400
    """Optimiser steps of the stage."""
    accelerator: str = "auto"
    """Lightning accelerator; ``auto`` picks CUDA when present."""
    devices: Any = 1
    precision: str = "32-true"
    """``bf16-mixed`` on GPU (no GradScaler, so 2-D mean gradients stay unscaled, method §2.4)."""
    val_check_interval: int = 100
    """Run validation renders every this many steps."""
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 500
    """Save ``ckpts/last.ckpt`` (Gaussians + optimiser state) this often and at the end."""


@dataclass
class ExperimentConfig:
    """Top-level run config: what to run, where outputs go, and the plugin configs."""

    name: str = "gaussianip"
    """Experiment group: trials go to ``<exp_root_dir>/<name>/<tag>@<timestamp>``."""
    tag: str = "${rmspace:${system.prompt_processor.prompt},_}"
    exp_root_dir: str = "outputs"
    seed: int = 42
    trial_dir: Optional[str] = None
    """Filled by launch.py; never set by hand except to resume."""
    data_type: str = "???"
    data: dict = field(default_factory=dict)
    system_type: str = "???"
    system: dict = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def _wrap(fn, *args, what: str):
    try:
        return fn(*args)
    except OmegaConfBaseException as e:  # unknown key, type mismatch, missing value
        msg = str(e).splitlines()[0]
        key = getattr(e, "full_key", None)
        if key and key not in msg:
            msg += f" (key: {key})"
        raise ConfigError(f"invalid {what}: {msg}") from None


def load_config(*yamls: str | Path, cli_args: list[str] | None = None, **extra) -> DictConfig:
    """Compose YAML files (later wins) and dotlist overrides into a validated experiment config.

    Args:
        yamls: config file paths, applied in order.
        cli_args: OmegaConf dotlist overrides such as ``["system.prompt_processor.prompt=a man"]``.
        extra: further top-level overrides (e.g. ``trial_dir``).

    Returns:
        The resolved ``ExperimentConfig`` as a ``DictConfig`` (plugin sub-configs still untyped;
        each plugin validates its own with :func:`parse_structured`).

    Raises:
        ConfigError: missing file, YAML syntax error, unknown top-level key or bad override.
    """
    cfgs = []
    for y in yamls:
        p = Path(y)
        if not p.is_file():
            raise ConfigError(f"config file not found: {y}")
        cfgs.append(_wrap(OmegaConf.load, p, what=f"config file {y}"))
    if cli_args:
        bad = [a for a in cli_args if "=" not in a]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        cfgs.append(_wrap(OmegaConf.from_dotlist, list(cli_args), what="command-line override"))
    cfgs.append(OmegaConf.create(extra))
    base = OmegaConf.structured(ExperimentConfig)
    merged = _wrap(OmegaConf.merge, base, *cfgs, what="config")
    _wrap(OmegaConf.resolve, merged, what="config")
    return merged


def parse_structured(cls: type, cfg: Optional[dict | DictConfig] = None) -> Any:
    """Validate ``cfg`` against the dataclass ``cls`` (unknown key or wrong type -> ConfigError).

    Returns the typed config object (an OmegaConf structured config, attribute access).
    """
    base = OmegaConf.structured(cls)
    if cfg is None:
        cfg = {}
    merged = _wrap(OmegaConf.merge, base, cfg, what=f"{cls.__qualname__}")
    missing = OmegaConf.missing_keys(merged)
    if missing:
        raise ConfigError(f"{cls.__qualname__}: mandatory value(s) not set: {', '.join(sorted(missing))}")
    return merged


def dump_config(path: str | Path, cfg: DictConfig) -> None:
    """Write ``cfg`` as YAML atomically."""
    from threestudio.utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg))
