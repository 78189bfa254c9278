"""Facial expression recordings: ARKit blendshape CSVs (Live Link Face) and AnimPortrait3D sequences.

* **ARKit CSV** (Live Link Face's export): a ``Timecode`` column, the 52 ARKit blendshape columns
  (:data:`~threestudio.models.body.expression.ARKIT_BLENDSHAPES`, weights in [0, 1]), and optionally
  ``BlendShapeCount``, ``HeadYaw/HeadPitch/HeadRoll`` and ``LeftEyeYaw/LeftEyePitch/LeftEyeRoll``,
  ``RightEyeYaw/...`` (radians). Any column order; names are case-insensitive; one row per frame.
  When eye rotation columns are present they turn the eyes, and the eight ``eyeLook*`` weights are
  set to 0 (anny's ``eyeLook*`` shapes turn the eyeballs too: the gaze would be applied twice).
* **AnimPortrait3D** sequence: ``expressions.npy`` [T, n] SMPL-X expression coefficients (n = 100 in
  their release) and optionally ``poses.npy`` [T, 15]: global, neck, jaw, left eye, right eye
  axis-angles (SMPL-X native axes). Give the folder or the ``expressions.npy`` path.

Rotations are returned as local SMPL-X joint axis-angles (native axes: x the person's left, y up,
z forward). Head and eye angles of a CSV are read as: yaw about the up axis (positive turns to the
person's left), pitch about the left axis (positive looks down), roll about the forward axis
(positive tilts the top of the head toward the person's right).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from threestudio.animation.motion import resample_index, slerp_rotvecs
from threestudio.models.body.expression import ARKIT_BLENDSHAPES
from threestudio.models.body.template import BodyTemplate
from threestudio.utils.errors import UserError

ROTATION_KEYS = ("global", "neck", "head", "jaw", "left_eye", "right_eye")
"""Joints an expression recording may rotate (SMPL-X joints 0, 12, 15, 22, 23, 24)."""
CSV_FPS = 60.0
"""Frame rate of a Live Link Face CSV unless ``--expression-fps`` says otherwise."""
NPY_FPS = 30.0
"""Frame rate of an AnimPortrait3D sequence unless ``--expression-fps`` says otherwise."""
_CSV_ROTATIONS = {"head": "head", "lefteye": "left_eye", "righteye": "right_eye"}
_CSV_IGNORED = {"timecode", "blendshapecount"}


@dataclass
class Expression:
    """A facial performance of T frames.

    Attributes:
        weights: [T, E] blendshape weights (ARKit, in [0, 1]) or SMPL-X expression coefficients.
        names: E names (ARKit names; ``expr_000``... for SMPL-X coefficients).
        kind: ``"arkit"`` or ``"smplx"``.
        rotations: local axis-angles [T, 3] (radians, SMPL-X native axes) of the joints in
            :data:`ROTATION_KEYS` the recording has.
        fps: frames per second.
    """

    weights: torch.Tensor
    names: list
    kind: str
    rotations: dict = field(default_factory=dict)
    fps: float = CSV_FPS

    def __len__(self) -> int:
        return self.weights.shape[0]

    def frames(self, n: int) -> Expression:
        """The first ``n`` frames, or, past the end, the last frame held."""
        idx = torch.arange(n).clamp(max=len(self) - 1)
        return Expression(
            self.weights[idx], self.names, self.kind, {k: r[idx] for k, r in self.rotations.items()}, self.fps
        )


def yaw_pitch_roll(ypr: np.ndarray) -> torch.Tensor:
    """[T, 3] (yaw, pitch, roll) radians -> [T, 3] SMPL-X local axis-angles, ``R = R_y(yaw) R_x(pitch)
    R_z(roll)`` (up, left and forward axes; see the module docstring for the signs)."""
    import roma

    R = roma.euler_to_rotmat("YXZ", torch.as_tensor(ypr, dtype=torch.float64))
    return roma.rotmat_to_rotvec(R).float()


def read_arkit_csv(path: Path, fps: float | None = None) -> Expression:
    """Read a Live Link Face style ARKit CSV (see the module docstring).

    Raises:
        UserError: unreadable file, unknown or missing columns, a non-numeric, NaN or infinite value,
            a weight outside [0, 1], an angle beyond ±π, or zero frames.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read expression CSV {path}: {e}") from None
    if not rows:
        raise UserError(f"expression CSV {path} is empty; expected a header row and one row per frame")
    header = [h.strip() for h in rows[0]]
    canon = {n.lower(): n for n in ARKIT_BLENDSHAPES}
    rot_cols = {f"{p}{a}": (p, a) for p in _CSV_ROTATIONS for a in ("yaw", "pitch", "roll")}
    col = {}
    unknown = []
    for i, h in enumerate(header):
        key = h.lower()
        if key in col:
            raise UserError(f"expression CSV {path}: column {h!r} appears twice")
        if key in canon or key in rot_cols or key in _CSV_IGNORED:
            col[key] = i
        else:
            unknown.append(h)
    if unknown:
        raise UserError(
            f"expression CSV {path}: unknown columns {unknown}; expected Timecode, the 52 ARKit blendshapes "
            "(eyeBlinkLeft, jawOpen, ...), and optionally BlendShapeCount, HeadYaw/HeadPitch/HeadRoll, "
            "LeftEyeYaw/.../RightEyeRoll (a Live Link Face export)"
        )
    missing = [n for n in ARKIT_BLENDSHAPES if n.lower() not in col] + (["Timecode"] if "timecode" not in col else [])
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise UserError(f"expression CSV {path} lacks the columns {shown}; a Live Link Face export has all 52")
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise UserError(f"expression CSV {path} has zero frames (a header and no data rows)")
    numeric = [k for k in col if k not in _CSV_IGNORED]
    data = np.zeros((len(body), len(numeric)))
    for t, r in enumerate(body):
        for j, k in enumerate(numeric):
            cell = r[col[k]].strip() if col[k] < len(r) else ""
            try:
                data[t, j] = float(cell)
            except ValueError:
                raise UserError(
                    f"expression CSV {path}: row {t + 2}, column {header[col[k]]!r}: {cell!r} is not a number"
                ) from None
    bad = ~np.isfinite(data)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise UserError(f"expression CSV {path}: row {t + 2}, column {header[col[numeric[j]]]!r} is NaN or infinite")
    at = {k: j for j, k in enumerate(numeric)}
    weights = data[:, [at[n.lower()] for n in ARKIT_BLENDSHAPES]]
    out = (weights < 0) | (weights > 1)
    if out.any():
        t, j = np.argwhere(out)[0]
        raise UserError(
            f"expression CSV {path}: row {t + 2}, {ARKIT_BLENDSHAPES[j]} = {weights[t, j]:g} is outside [0, 1] "
            "(ARKit blendshape weights are in [0, 1])"
        )
    rotations = {}
    for prefix, key in _CSV_ROTATIONS.items():
        cols = [f"{prefix}{a}" for a in ("yaw", "pitch", "roll")]
        if not any(c in at for c in cols):
            continue
        ypr = np.stack([data[:, at[c]] if c in at else np.zeros(len(body)) for c in cols], 1)
        if (np.abs(ypr) > math.pi).any():
            raise UserError(f"expression CSV {path}: {prefix} angles beyond ±π; they are read as radians")
        rotations[key] = yaw_pitch_roll(ypr)
    if "left_eye" in rotations or "right_eye" in rotations:  # gaze comes from the eye joints, not twice
        weights[:, [i for i, n in enumerate(ARKIT_BLENDSHAPES) if n.startswith("eyeLook")]] = 0.0
    return Expression(torch.from_numpy(weights).float(), list(ARKIT_BLENDSHAPES), "arkit", rotations, fps or CSV_FPS)


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)  # a shared file never runs code
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except ValueError as e:
        raise UserError(f"{what} {path} holds pickled objects, which are never loaded: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
    if not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{what} {path} is not a numeric array (dtype {a.dtype})")
    return a.astype(np.float64)


def read_animportrait3d(path: Path, fps: float | None = None) -> Expression:
    """Read an AnimPortrait3D sequence (folder, or its ``expressions.npy``; ``poses.npy`` beside it
    is optional).

    Raises:
        UserError: missing ``expressions.npy``, wrong shapes, T mismatch, NaN/inf, zero frames.
    """
    folder = path if path.is_dir() else path.parent
    expr_path = folder / "expressions.npy" if path.is_dir() else path
    expr = _read_npy(expr_path, "expression sequence")
    if expr.ndim != 2 or expr.shape[1] == 0:
        raise UserError(f"{expr_path}: expected [T, n] SMPL-X expression coefficients, got shape {expr.shape}")
    T = expr.shape[0]
    if T == 0:
        raise UserError(f"{expr_path} has zero frames")
    rotations = {}
    pose_path = folder / "poses.npy"
    if pose_path.is_file():
        poses = _read_npy(pose_path, "pose sequence")
        if poses.shape != (T, 15):
            raise UserError(
                f"{pose_path}: expected [{T}, 15] (global, neck, jaw, left eye, right eye axis-angles), "
                f"got shape {poses.shape}"
            )
        if not np.isfinite(poses).all():
            raise UserError(f"{pose_path} contains NaN or infinite values")
        for i, key in enumerate(("global", "neck", "jaw", "left_eye", "right_eye")):
            rotations[key] = torch.from_numpy(poses[:, 3 * i : 3 * i + 3]).float()
    if not np.isfinite(expr).all():
        raise UserError(f"{expr_path} contains NaN or infinite values")
    names = [f"expr_{k:03d}" for k in range(expr.shape[1])]
    return Expression(torch.from_numpy(expr).float(), names, "smplx", rotations, fps or NPY_FPS)


def load_expression(path: str | Path, fps: float | None = None) -> Expression:
    """Read an expression recording by its kind: ``.csv`` (ARKit, Live Link Face) or an
    AnimPortrait3D folder / ``.npy``. ``fps`` overrides the file's frame rate (:data:`CSV_FPS`,
    :data:`NPY_FPS`).

    Raises:
        UserError: a missing or unrecognised file, or any error of the readers.
    """
    p = Path(path)
    if fps is not None and not fps > 0:
        raise UserError(f"--expression-fps must be positive, got {fps}")
    if not p.exists():
        raise UserError(f"expression file not found: {p}")
    if p.suffix.lower() == ".csv":
        return read_arkit_csv(p, fps)
    if p.is_dir() or p.suffix.lower() == ".npy":
        return read_animportrait3d(p, fps)
    raise UserError(
        f"expression file {p}: give an ARKit blendshape .csv (Live Link Face) or an AnimPortrait3D "
        "folder / expressions.npy"
    )


def resample_expression(e: Expression, fps: float) -> Expression:
    """Resample to ``fps``: linear on weights, spherical on rotations."""
    if abs(e.fps - fps) < 1e-6:
        return e
    i0, i1, w = resample_index(len(e), e.fps, fps)
    weights = e.weights[i0] * (1 - w[:, None]) + e.weights[i1] * w[:, None]
    rot = {k: slerp_rotvecs(r, i0, i1, w).float() for k, r in e.rotations.items()}
    return Expression(weights, e.names, e.kind, rot, fps)


def template_weights(e: Expression, template: BodyTemplate) -> torch.Tensor:
    """[T, E_template] weights of ``e`` in the order of ``template``'s blendshapes. SMPL-X coefficients
    beyond the template's count are dropped (the file's lowest PCA components are kept); missing ones
    are 0.

    Raises:
        UserError: the template has no blendshapes, or of another kind than the recording.
    """
    basis = template.expressions
    if basis is None:
        raise UserError(
            f"the {template.source} body template has no expression blendshapes (a template file written "
            "before they existed): re-export it with python -m threestudio.models.body.export"
        )
    if basis.kind != e.kind:
        what = {"arkit": "an ARKit blendshape CSV", "smplx": "SMPL-X expression coefficients (AnimPortrait3D)"}
        has = {"arkit": "ARKit blendshapes (anny)", "smplx": "SMPL-X expression coefficients"}
        raise UserError(
            f"this expression file holds {what[e.kind]}, which the avatar's {template.source} template cannot "
            f"play: it has {has[basis.kind]}. Use "
            + ("the anny template (the default) for ARKit recordings" if e.kind == "arkit" else "an SMPL-X avatar")
        )
    if e.kind == "arkit":
        return e.weights[:, [e.names.index(n) for n in basis.names]]
    out = torch.zeros(len(e), len(basis))
    n = min(len(basis), e.weights.shape[1])
    out[:, :n] = e.weights[:, :n]
    return out
