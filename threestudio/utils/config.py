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

import dataclasses
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from threestudio.utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_root() -> Path:
    """Folder that holds the generated tiny models (``$GIP_TINY_DIR`` or ``<repo>/.tiny``)."""
    return Path(os.environ.get("GIP_TINY_DIR", REPO_ROOT / ".tiny")).resolve()


def _rmspace(s: Any, c: str = "_") -> str:
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
    devices: int = 1
    """Devices per machine: GPUs (with ``accelerator: cpu``, processes). More than one trains the one avatar
    data-parallel (DDP): the views of each step are split over the processes, whose gradients and
    densify statistics are averaged. Pick the GPUs with ``CUDA_VISIBLE_DEVICES``."""
    num_nodes: int = 1
    """Machines of a multi-machine DDP run (each started by your cluster, e.g. ``srun``; needs an explicit
    ``trial_dir`` on a file system they all see)."""
    strategy: str = "auto"
    """``auto``: one process when ``devices × num_nodes`` is 1, else data-parallel; ``ddp``: always
    data-parallel (one process per device; :class:`~threestudio.utils.distributed.GaussianDDPStrategy`)."""
    precision: str = "32-true"
    """``bf16-mixed`` on GPU (no GradScaler, so 2-D mean gradients stay unscaled, method §2.4)."""
    val_check_interval: int = 100
    """Run validation renders every this many steps."""
    log_every_n_steps: int = 10
    """Write the CSV log every this many steps."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    profile: bool = False
    """Write Lightning's ``SimpleProfiler`` report (wall seconds per training hook: steps, backward,
    optimiser, checkpoints, validation, logging) to ``<trial>/fit-profile.txt`` and ``test-profile.txt``."""


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 500
    """Save ``ckpts/step<N>.ckpt`` (Gaussians + optimiser state) every this many steps (at the last step
    only when it is a multiple: stage 1's 2400 steps at 500 save at 500-2000); ``ckpts/last.ckpt`` is a
    relative symbolic link to the newest."""


@dataclass
class ExperimentConfig:
    """Top-level run config: what to run, where outputs go, and the plugin configs."""

    name: str = "gaussianip"
    """Experiment group: trials go to ``<exp_root_dir>/<name>/<tag>@<timestamp>``."""
    tag: str = "${rmspace:${system.prompt_processor.prompt},_}"
    """Trial name (before ``@<timestamp>``); by default the prompt."""
    exp_root_dir: str = "outputs"
    """Root folder of all trial directories."""
    seed: int = 42
    """Global random seed (Lightning ``seed_everything``)."""
    trial_dir: str | None = None
    """Filled by launch.py; never set by hand except to resume."""
    data_type: str = "???"
    """Registered data module (``human-camera-datamodule``, ``refined-views-datamodule``)."""
    data: dict = field(default_factory=dict)
    """Config of the data module."""
    system_type: str = "???"
    """Registered stage system (``gaussianip-ahds-system``, ...)."""
    system: dict = field(default_factory=dict)
    """Config of the system (``launch.py --show-config <system>`` lists it)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer arguments."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint schedule."""


def _wrap(fn, *args, what: str, path: str = ""):
    """Run ``fn(*args)``; an OmegaConf error becomes one :class:`ConfigError` line. With ``path`` (the
    config path of what is parsed, e.g. ``system``) the message names the full key, e.g.
    ``system.densify.max_pointz``."""
    try:
        return fn(*args)
    except OmegaConfBaseException as e:  # unknown key, type mismatch, missing value
        msg = str(e).splitlines()[0]
        key = getattr(e, "full_key", None)
        if path:
            raise ConfigError(f"invalid {path}{'.' + key if key else ''}: {msg}") from None
        if key and key not in msg:
            msg += f" (key: {key})"
        raise ConfigError(f"invalid {what}: {msg}") from None


def load_config(
    *yamls: str | Path, cli_args: list[str] | None = None, allow_missing: bool = False, **extra
) -> DictConfig:
    """Compose YAML files (later wins) and dotlist overrides into a validated experiment config.

    Args:
        yamls: config file paths, applied in order.
        cli_args: OmegaConf dotlist overrides such as ``["system.prompt_processor.prompt=a man"]``.
        allow_missing: leave interpolations unresolved, so that mandatory values may stay unset
            (``--show-config``).
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
    if not allow_missing:
        _wrap(OmegaConf.resolve, merged, what="config")
    return merged


def parse_structured(
    cls: type, cfg: dict | DictConfig | None = None, where: str = "", allow_missing: bool = False
) -> Any:
    """Validate ``cfg`` against the dataclass ``cls`` (unknown key or wrong type -> ConfigError).

    Args:
        where: the config path shown in errors (e.g. ``system.renderer``); default the class name.
        allow_missing: do not require the mandatory (``???``) fields (a partial config that an
            earlier stage completes).

    Returns:
        The typed config object (an OmegaConf structured config, attribute access).

    Raises:
        ConfigError: unknown key, wrong type, or a mandatory value not set.
    """
    what = where or cls.__qualname__
    merged = _wrap(OmegaConf.merge, OmegaConf.structured(cls), cfg if cfg is not None else {}, what=what, path=where)
    missing = set() if allow_missing else OmegaConf.missing_keys(merged)
    if missing:
        raise ConfigError(f"{what}: mandatory value(s) not set: {', '.join(sorted(missing))}")
    return merged


def check_plugin_config(cls: type, cfg: dict | DictConfig | None, where: str, allow_missing: bool = False) -> Any:
    """Parse ``cfg`` with the config dataclass ``cls`` and, recursively, every plugin sub-config it
    selects: a field ``<x>_type`` naming a registered plugin with a sibling ``<x>`` block is checked
    against that plugin's ``Config`` (typed blocks such as ``densify`` are checked by the parse
    itself). Run in preflight, before anything is written.

    Raises:
        ConfigError: an unknown key, a wrong type or an unknown plugin name anywhere below ``where``.
    """
    import threestudio

    parsed = parse_structured(cls, cfg, where, allow_missing)
    for f in dataclasses.fields(cls):
        block = f.name[: -len("_type")]
        if not f.name.endswith("_type") or block not in parsed:
            continue
        kind = parsed[f.name]
        if not kind or kind == "auto":  # optional plugin off, or chosen at run time (checked by the caller)
            continue
        try:
            plugin = threestudio.find(kind)
        except KeyError as e:
            raise ConfigError(f"{where}.{f.name}: {e.args[0]}") from None
        check_plugin_config(plugin.Config, parsed[block], f"{where}.{block}", allow_missing=True)
    return parsed


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config dataclass and its bases: the string literal under each field
    (PEP 257 attribute docstrings, as threestudio/nerfstudio write them); subclasses win."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:] + [None], strict=True):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                doc = nxt.value.value if is_doc and isinstance(nxt.value.value, str) else ""
                docs[stmt.target.id] = " ".join(doc.split())
    return docs


def _raw(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]`` without resolving interpolations or failing on ``???`` (None if absent)."""
    if key not in cfg.keys():  # (``key in cfg`` is False for a ``???`` value)
        return None
    node = cfg._get_node(key)
    if node is None or isinstance(node, (DictConfig, ListConfig)):
        return node
    if node._is_missing():
        return "???"
    v = node._value()
    return v.value if isinstance(v, Enum) else v


def describe_config(cls: type, values: Any = None, indent: int = 0) -> list[str]:
    """Lines ``name: value  # docstring`` for every field of the config dataclass ``cls`` with the
    defaults (or ``values``, a parsed config), nested blocks indented below their field; a
    ``<x>_type`` field's ``<x>`` block lists the chosen plugin's options."""
    import threestudio

    parsed = values if values is not None else OmegaConf.structured(cls)
    docs = field_docs(cls)
    pad = "  " * indent
    out = []
    for f in dataclasses.fields(cls):
        v = _raw(parsed, f.name)
        kind = _raw(parsed, f"{f.name}_type") or ""
        sub = OmegaConf.get_type(v) if isinstance(v, DictConfig) else None
        if sub is not None and not dataclasses.is_dataclass(sub):
            sub = threestudio.find(kind).Config if kind and kind != "auto" else None
        doc = f"  # {docs[f.name]}" if docs.get(f.name) else ""
        if sub is not None:
            out.append(f"{pad}{f.name}:{doc}")
            out += describe_config(sub, parse_structured(sub, v, allow_missing=True), indent + 1)
        else:
            shown = OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v
            out.append(f"{pad}{f.name}: {shown!r}{doc}")
    return out


def dump_config(path: str | Path, cfg: DictConfig) -> None:
    """Write ``cfg`` as YAML atomically."""
    from threestudio.utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg))
