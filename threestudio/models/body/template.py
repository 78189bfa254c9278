"""The body-template file format that every body plugin exports, and shared helpers.

World frame of a template (and of the whole project): right-handed, **z up**, the person faces
**+y**, the person's **left side is at -x** (so the front camera, azimuth +90°, sees the person's
left hand on image-right, like a photo). Units are *normalised body units*: the A-posed body's
bounding box is centred at the origin and its height is ``0.6 * 1.1**10 ≈ 1.556`` (the scale of the
reference implementation, method §2.1, so that its camera distances carry over). The conversion
from a body model's native frame is a proper rotation (never an axis swap, which would mirror the
body: method §12.3).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from threestudio.models.body.expression import ExpressionBasis
from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path, read_npz
from threestudio.utils.typing import Float, Int, Tensor

BODY_HEIGHT = 0.6 * 1.1**10
"""Height of every normalised template (method §2.1)."""

OPENPOSE18_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
"""OpenPose-18 (COCO-18) keypoint order; "r_"/"l_" are the person's anatomical right/left."""

FORMAT_VERSION = 2
"""Version 2 added the optional expression blendshapes; version-1 files still load (without them)."""
READABLE_VERSIONS = (1, 2)


@dataclass
class BodyTemplate:
    """A rigged body in the training A-pose, in the world frame described in the module docstring.

    Attributes:
        vertices: [V, 3] A-pose vertex positions.
        faces: [F, 3] int64 triangle vertex indices (counter-clockwise seen from outside).
        joints: [J, 3] joint (bone head) positions in the A-pose.
        parents: [J] int64 parent joint index, -1 for the root.
        joint_names: J names in the body model's own naming.
        skin_indices: [V, K] int64 joint indices of the K skinning influences of each vertex.
        skin_weights: [V, K] skinning weights, rows sum to 1.
        joint_frames: [J, 4, 4] rigid world frame of each joint in the A-pose; linear blend
            skinning to a new pose uses ``G_j = frame_j(pose) @ inverse(frame_j(A-pose))``.
        keypoints: [18, 3] OpenPose-18 keypoints (:data:`OPENPOSE18_NAMES` order).
        source: which plugin built it (``"anny"``, ``"smplx"``...).
        expressions: facial expression blendshapes on the A-posed vertices (ARKit for anny, SMPL-X
            expression coefficients for smplx), or None (a version-1 file).
    """

    vertices: Float[Tensor, "V 3"]
    faces: Int[Tensor, "F 3"]
    joints: Float[Tensor, "J 3"]
    parents: Int[Tensor, " J"]
    joint_names: list
    skin_indices: Int[Tensor, "V K"]
    skin_weights: Float[Tensor, "V K"]
    joint_frames: Float[Tensor, "J 4 4"]
    keypoints: Float[Tensor, "18 3"]
    source: str
    expressions: ExpressionBasis | None = None

    @property
    def height(self) -> float:
        return float(self.vertices[:, 2].max() - self.vertices[:, 2].min())

    @property
    def head_center(self) -> Float[Tensor, 3]:
        """Midpoint of the two ears (OpenPose 16/17): a stable head centre."""
        return 0.5 * (self.keypoints[16] + self.keypoints[17])

    def save(self, path: str | Path) -> None:
        """Write the template as a compressed ``.npz`` atomically."""
        arrays = {}
        extra = self.expressions.to_arrays() if self.expressions is not None else {}
        for name, v in [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "expressions"] + list(
            extra.items()
        ):
            arrays[name] = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
        arrays["format_version"] = np.asarray(FORMAT_VERSION)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> BodyTemplate:
        """Read a template written by :meth:`save` (``allow_pickle=False``: a shared file never runs code).

        Raises:
            UserError: missing or unreadable file, pickled objects inside, missing keys, or another
                format version.
        """
        z = read_npz(path, "body template")  # allow_pickle=False: a shared file never runs code
        version = int(z["format_version"]) if "format_version" in z else -1
        if version not in READABLE_VERSIONS:
            raise UserError(
                f"{path} is not a body template of format version {' or '.join(map(str, READABLE_VERSIONS))} "
                "(write one with: python -m threestudio.models.body.export anny OUT.npz)"
            )
        names = [f.name for f in fields(cls) if f.name != "expressions"]
        missing = [n for n in names if n not in z]
        if missing:
            raise UserError(f"cannot read body template {path}: missing arrays {', '.join(missing)}")
        kw = {}
        try:
            kw["expressions"] = ExpressionBasis.from_arrays(z)
        except (KeyError, ValueError) as e:
            raise UserError(f"cannot read the expression blendshapes of body template {path}: {e}") from None
        for f in [f for f in fields(cls) if f.name != "expressions"]:
            a = z[f.name]
            if f.name == "joint_names":
                kw[f.name] = [str(s) for s in a.tolist()]
            elif f.name == "source":
                kw[f.name] = str(a)
            elif a.dtype.kind in "iu":
                kw[f.name] = torch.from_numpy(a.astype(np.int64))
            else:
                kw[f.name] = torch.from_numpy(a.astype(np.float32))
        return cls(**kw)


def similarity_to_world(
    vertices: Float[Tensor, "V 3"], rotation: Float[Tensor, "3 3"]
) -> tuple[Float[Tensor, "3 3"], Float[Tensor, 3], float]:
    """Return ``(R, c, s)`` such that ``x_world = s * R @ (x - c)`` rotates a body model's native
    frame into the template frame, centres its bounding box and scales it to :data:`BODY_HEIGHT`.

    Raises:
        ValueError: ``rotation`` is not a proper rotation (det != +1), i.e. would mirror the body.
    """
    det = torch.linalg.det(rotation.double())
    if abs(float(det) - 1.0) > 1e-5:
        raise ValueError(f"frame change must be a proper rotation (det=+1), got det={float(det):.3f}")
    rotated = vertices @ rotation.T
    lo, hi = rotated.min(0).values, rotated.max(0).values
    s = BODY_HEIGHT / float(hi[2] - lo[2])
    c_rot = 0.5 * (lo + hi)
    c = rotation.T @ c_rot
    return rotation, c, s


def apply_similarity(points: Tensor, R: Tensor, c: Tensor, s: float) -> Tensor:
    """``s * R @ (p - c)`` for points [..., 3]."""
    return s * (points - c) @ R.T


def frames_to_world(frames: Float[Tensor, "J 4 4"], R: Tensor, c: Tensor, s: float) -> Float[Tensor, "J 4 4"]:
    """Map rigid joint frames through the similarity: rotation ``R @ R_j``, origin
    ``s R (t_j - c)``. Keeps ``G = P(pose) P(rest)^-1`` equal to the similarity-conjugated skinning
    transform, so LBS in the world frame matches LBS in the native frame."""
    out = frames.clone()
    out[:, :3, :3] = R @ frames[:, :3, :3]
    out[:, :3, 3] = apply_similarity(frames[:, :3, 3], R, c, s)
    return out


def sample_surface(
    template: BodyTemplate, n: int, seed: int = 0
) -> tuple[Float[Tensor, "n 3"], Int[Tensor, " n"], Float[Tensor, "n 3"]]:
    """Area-weighted uniform samples on the template surface (method §2.2).

    Returns:
        points [n, 3], the face index of each sample [n], and barycentric coordinates [n, 3].
    """
    gen = torch.Generator().manual_seed(seed)
    v, f = template.vertices.double(), template.faces
    tri = v[f]  # F 3 3
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    face_idx = torch.multinomial(area / area.sum(), n, replacement=True, generator=gen)
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    flip = u.sum(-1) > 1
    u[flip] = 1 - u[flip]
    bary = torch.stack([1 - u[:, 0] - u[:, 1], u[:, 0], u[:, 1]], dim=-1)
    pts = (tri[face_idx] * bary[..., None]).sum(1)
    return pts.float(), face_idx, bary.float()
