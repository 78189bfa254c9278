"""Hand-off between stages, the one module both sides import: a stage's trial directory holds
``manifest.json`` (what it produced), ``configs/parsed.yaml``, ``save/avatar.ply`` (+ specular network)
and, for stage 2, ``save/views/cameras.json`` (one :class:`ViewRecord` per refined view).

Readers check what they need and fail with one :class:`UserError` naming the missing piece; files
are JSON, YAML, PLY and safetensors only (nothing read here runs code).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from threestudio.models.appearance.specular import FILE_SUFFIX as SPECULAR_SUFFIX
from threestudio.models.appearance.specular import SpecularAppearance
from threestudio.ops.camera import Cameras
from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_write_text


def read_stage(trial_dir: str | Path, stage: str, required: tuple[str, ...] = ()) -> dict:
    """Manifest of a finished ``stage`` in ``trial_dir``, with ``trial_dir`` added and every manifest
    entry in ``required`` checked to exist as a file (paths are relative to ``trial_dir``).

    Raises:
        UserError: the directory, its manifest, the stage or a required file is missing, or the manifest
            is not a JSON object (a truncated or hand-edited file), or a required entry is not a path.
    """
    d = Path(str(trial_dir))
    if not str(trial_dir) or not d.is_dir():
        raise UserError(
            f"init_from: stage directory not found: {trial_dir!r} (give the trial directory of the {stage} stage)"
        )
    man = d / "manifest.json"
    if not man.is_file():
        raise UserError(f"init_from: {d} is incomplete: manifest.json is missing (did the {stage} stage finish?)")
    try:
        data = json.loads(man.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"init_from: {man} is not a readable manifest ({e}); rerun the {stage} stage") from None
    if not isinstance(data, dict):
        raise UserError(f"init_from: {man} is not a manifest (a JSON object); rerun the {stage} stage")
    if data.get("stage") != stage:
        raise UserError(f"init_from: {d} holds a {data.get('stage')!r} stage, expected {stage!r}")
    for key in required:
        if key not in data:
            raise UserError(f"init_from: {d} is incomplete: the {stage} stage did not record {key!r}")
        if not isinstance(data[key], str):
            raise UserError(f"init_from: {man}: {key!r} is {data[key]!r}, not a path")
        if not (d / data[key]).exists():
            raise UserError(f"init_from: {d} is incomplete: {data[key]} is missing")
    data["trial_dir"] = str(d.resolve())
    return data


def stage_config(stage: dict):
    """The resolved config (``configs/parsed.yaml``) of a stage read by :func:`read_stage` (an OmegaConf
    ``DictConfig``; an empty one if the stage wrote none)."""
    from omegaconf import OmegaConf

    path = Path(stage["trial_dir"]) / "configs" / "parsed.yaml"
    return OmegaConf.load(path) if path.is_file() else OmegaConf.create({})


def write_manifest(trial_dir: str | Path, **entries) -> None:
    """Merge ``entries`` into ``<trial_dir>/manifest.json`` (atomically)."""
    path = Path(trial_dir) / "manifest.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(entries)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


@dataclass
class ViewRecord:
    """One refined view of stage 2 as stored in ``save/views/cameras.json``.

    Attributes:
        index: position on the ring.
        refined: path of the refined image, relative to the stage-2 trial directory.
        azimuth_deg, elevation_deg: camera angles in degrees (method §3.1: +90 = front).
        distance: camera distance to the origin, world units.
        fovy_deg: vertical field of view in degrees.
        height, width: image size in pixels.
        c2w: 4x4 OpenGL camera-to-world matrix (row lists).
        bbox: loss box ``[x0, y0, x1, y1)`` in pixels around the rendered body (stage-1 alpha).
        prompt: the text prompt the view was refined with ('' for synthetic data).
    """

    index: int
    refined: str
    azimuth_deg: float
    elevation_deg: float
    distance: float
    fovy_deg: float
    height: int
    width: int
    c2w: list
    bbox: list
    prompt: str = ""


def view_records(cams: Cameras, bboxes: list[list[int]], prompts: list[str] | None = None) -> list[ViewRecord]:
    """Records of the ring ``cams`` whose refined images are ``save/views/refined_<i>.png``."""
    return [
        ViewRecord(
            index=i,
            refined=f"save/views/refined_{i:03d}.png",
            azimuth_deg=float(cams.azimuth_deg[i]),
            elevation_deg=float(cams.elevation_deg[i]),
            distance=float(cams.distance[i]),
            fovy_deg=math.degrees(float(cams.fovy_rad[i])),
            height=cams.height,
            width=cams.width,
            c2w=cams.c2w[i].tolist(),
            bbox=[int(v) for v in bboxes[i]],
            prompt=prompts[i] if prompts else "",
        )
        for i in range(len(cams))
    ]


def write_view_records(path: str | Path, records: list[ViewRecord]) -> None:
    """Write ``cameras.json`` atomically."""
    atomic_write_text(path, json.dumps([asdict(r) for r in records], indent=1))


def read_view_records(path: str | Path) -> list[ViewRecord]:
    """Read ``cameras.json``.

    Raises:
        UserError: the file is not a list of view records.
    """
    legacy = {"azimuth": "azimuth_deg", "elevation": "elevation_deg"}  # key names before the units were named
    try:
        return [ViewRecord(**{legacy.get(k, k): x for k, x in v.items()}) for v in json.loads(Path(path).read_text())]
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not a stage-2 cameras.json ({e}); rerun stage 2") from None


def cameras_of(records: list[ViewRecord]) -> Cameras:
    """The :class:`Cameras` batch of view records (one resolution; look-at point at the origin)."""

    def f(k):
        return torch.tensor([getattr(r, k) for r in records], dtype=torch.float32)

    return Cameras(
        torch.tensor([r.c2w for r in records]),
        torch.deg2rad(f("fovy_deg")),
        records[0].height,
        records[0].width,
        f("azimuth_deg"),
        f("elevation_deg"),
        f("distance"),
        torch.zeros(len(records), 3),
        "body",
    )


def load_avatar(
    path: str | Path,
    geometry_type: str,
    geometry_cfg: dict | DictConfig | None,
    appearance_type: str = "",
    appearance_cfg: dict | DictConfig | None = None,
):
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
    import threestudio
    from threestudio.utils.ply import read_gaussian_ply

    params, extra = read_gaussian_ply(path)  # read once
    d = len([k for k in extra if k.startswith("spec_")])
    net = Path(path).with_suffix(SPECULAR_SUFFIX)
    appearance = None
    if d > 0 and net.is_file():
        appearance = SpecularAppearance.load(net)
    elif d > 0 and Path(path).with_suffix(".specular.pt").is_file() and not appearance_type:
        print(
            f"note: {Path(path).with_suffix('.specular.pt')} is an earlier, degenerate specular model in pickle "
            "format; it is not opened and the avatar is shown diffuse-only (rerun stage 3 with --specular)"
        )
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
