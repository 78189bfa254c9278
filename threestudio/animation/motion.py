"""Body motions from AMASS-style files and their retargeting to a body template.

Accepted ``.npz`` (AMASS conventions): ``poses`` [T, 165] / [T, 55, 3] (SMPL-X: global orientation,
21 body joints, jaw, left eye, right eye, 15 left-hand and 15 right-hand joints) or [T, 156] /
[T, 52, 3] (SMPL-H: no jaw or eyes) axis-angles, or the split AMASS-X keys ``pose_body`` [T, 63] with
optional ``root_orient`` [T, 3], ``pose_jaw`` [T, 3], ``pose_eye`` [T, 6], ``pose_hand`` [T, 90];
optional ``trans`` [T, 3] (metres), ``mocap_framerate`` (or ``mocap_frame_rate``; default 30). Hand
rotations are relative to flat hands (AMASS's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from threestudio.models.body.smplx_joints import (
    ANNY_FACE_HAND_MAP,
    ANNY_JOINT_MAP,
    SMPLX_NATIVE_TO_WORLD,
    SMPLX_PARENTS_55,
)
from threestudio.models.body.template import BODY_HEIGHT, BodyTemplate
from threestudio.ops.lbs import axis_angle_to_matrix
from threestudio.utils.errors import UserError
from threestudio.utils.io import read_npz

SMPLX_MEAN_HEIGHT = 1.70
"""Metres of an average SMPL-X body; motion translations are scaled by BODY_HEIGHT / this."""


@dataclass
class Motion:
    """An SMPL-X motion: ``pose`` [T, 55, 3] local axis-angles in SMPL-X joint order (global
    orientation, 21 body joints, jaw, left eye, right eye, 2 x 15 finger joints; radians, SMPL-X native
    axes), ``trans`` [T, 3] metres, ``fps`` frames per second."""

    pose: torch.Tensor
    trans: torch.Tensor
    fps: float

    def __len__(self) -> int:
        return self.pose.shape[0]

    @property
    def global_orient(self) -> torch.Tensor:
        """[T, 3] root orientation."""
        return self.pose[:, 0]

    @property
    def body_pose(self) -> torch.Tensor:
        """[T, 21, 3] body joints."""
        return self.pose[:, 1:22]

    @classmethod
    def from_body(cls, global_orient: torch.Tensor, body_pose: torch.Tensor, trans: torch.Tensor, fps: float):
        """A motion of root [T, 3] and body [T, 21, 3] rotations; jaw, eyes and fingers at rest."""
        T = body_pose.shape[0]
        rest = torch.zeros(T, 33, 3, dtype=body_pose.dtype)
        return cls(torch.cat([global_orient[:, None], body_pose, rest], 1), trans, fps)

    def frames(self, n: int) -> Motion:
        """The first ``n`` frames, or, past the end, the last frame held."""
        idx = torch.arange(n).clamp(max=len(self) - 1)
        return Motion(self.pose[idx], self.trans[idx], self.fps)


def load_motion(path: str | Path, fps: float | None = None) -> Motion:
    """Read and validate an AMASS-style motion; resample to ``fps`` (linear on translations,
    spherical on rotations).

    Raises:
        UserError: missing file or keys, wrong joint count, NaN/inf values, zero frames.
    """
    z = read_npz(path, "motion", hint="expected an AMASS-style .npz")  # a shared file never runs code
    files = set(z)
    if "poses" not in files and "pose_body" not in files:
        raise UserError(
            f"motion {path} has no 'poses' array (keys: {sorted(files)}); expected AMASS SMPL-X "
            "'poses' [T,165] or [T,55,3], SMPL-H [T,156], or 'pose_body' [T,63] (+ 'root_orient')"
        )
    if "poses" in files:
        poses = np.asarray(z["poses"], dtype=np.float64)
    else:  # split keys: body pose [+ root orientation, jaw, eyes, hands], assembled in the SMPL-X layout
        body = np.asarray(z["pose_body"], dtype=np.float64)
        Tb = body.shape[0] if body.ndim >= 1 else 0
        parts = [("root_orient", 3), ("pose_body", 63), ("pose_jaw", 3), ("pose_eye", 6), ("pose_hand", 90)]
        cols = []
        for key, n in parts:
            a = np.asarray(z[key], dtype=np.float64) if key in files else np.zeros((Tb, n))
            if Tb and a.reshape(a.shape[0] if a.ndim else 0, -1).shape != (Tb, n):
                raise UserError(f"motion {path}: '{key}' has shape {a.shape}; expected [{Tb}, {n}]")
            cols.append(a.reshape(Tb, n))
        poses = np.concatenate(cols, 1) if Tb else np.zeros((0, 165))
    T = poses.shape[0] if poses.ndim >= 1 else 0
    if T == 0:
        raise UserError(f"motion {path} has zero frames")
    flat = poses.reshape(T, -1)
    if flat.shape[1] not in (165, 156):
        raise UserError(
            f"motion {path}: 'poses' has {flat.shape[1] // 3 if flat.shape[1] % 3 == 0 else flat.shape[1]} "
            "joints per frame; expected 55 (SMPL-X, [T,165]) or 52 (SMPL-H, [T,156])"
        )
    if flat.shape[1] == 156:  # SMPL-H: body + hands; no jaw or eyes
        flat = np.concatenate([flat[:, :66], np.zeros((T, 9)), flat[:, 66:]], 1)
    trans = np.asarray(z["trans"], dtype=np.float64) if "trans" in files else np.zeros((T, 3))
    if trans.shape != (T, 3):
        raise UserError(f"motion {path}: 'trans' has shape {trans.shape}, expected ({T}, 3)")
    if not (np.isfinite(flat).all() and np.isfinite(trans).all()):
        raise UserError(f"motion {path} contains NaN or infinite values")
    rate = (
        float(z["mocap_framerate"])
        if "mocap_framerate" in files
        else float(z["mocap_frame_rate"])
        if "mocap_frame_rate" in files
        else 30.0
    )
    m = Motion(torch.from_numpy(flat.reshape(T, 55, 3)).float(), torch.from_numpy(trans).float(), rate)
    return resample(m, fps) if fps and abs(fps - rate) > 1e-6 else m


def resample_index(T: int, src_fps: float, fps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source frames ``(i0, i1, w)`` of each output frame when ``T`` frames at ``src_fps`` are
    resampled to ``fps``: output frame n lies at ``(1 - w) * i0 + w * i1`` (the last source frame is
    the last output frame that fits)."""
    step = src_fps / fps  # source frames per output frame
    n = int(math.floor((T - 1) / step + 1e-9)) + 1
    src = torch.arange(n, dtype=torch.float64) * step
    i0 = src.floor().long().clamp(max=T - 1)
    i1 = (i0 + 1).clamp(max=T - 1)
    return i0, i1, (src - i0).float()


def slerp_rotvecs(aa: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of axis-angle frames ``aa`` [T, ..., 3] between frames i0 and i1 [n]."""
    import roma

    q = roma.rotvec_to_unitquat(aa)
    return roma.unitquat_to_rotvec(_slerp(q[i0], q[i1], w))


def resample(m: Motion, fps: float) -> Motion:
    """Resample to ``fps`` (slerp on joint rotations, linear on translation)."""
    i0, i1, w = resample_index(len(m), m.fps, fps)
    tr = m.trans[i0] * (1 - w[:, None]) + m.trans[i1] * w[:, None]
    return Motion(slerp_rotvecs(m.pose, i0, i1, w), tr, fps)


def _slerp(q0, q1, w):
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    w = w.view(-1, *([1] * (q0.dim() - 1)))
    a = torch.where(s > 1e-6, torch.sin((1 - w) * theta) / s.clamp_min(1e-12), 1 - w)
    b = torch.where(s > 1e-6, torch.sin(w * theta) / s.clamp_min(1e-12), w)
    q = a * q0 + b * q1
    return q / q.norm(dim=-1, keepdim=True)


def smplx_world_rotations(pose: torch.Tensor) -> torch.Tensor:
    """Forward kinematics of rotations only: [T, 55, 3, 3] world rotations of the SMPL-X joints for
    local axis-angles ``pose`` [T, 55, 3] (native SMPL-X/AMASS world)."""
    local = axis_angle_to_matrix(pose.double())
    world = [local[:, 0]]
    for j in range(1, local.shape[1]):
        world.append(world[SMPLX_PARENTS_55[j]] @ local[:, j])
    return torch.stack(world, 1)


def _heading_alignment(R_root: torch.Tensor) -> torch.Tensor:
    """Rotation K taking the motion's world to the template world: the body's up axis to +z and its
    first-frame facing direction to +y (the front camera). Works for z-up (AMASS) and y-up data."""
    M = SMPLX_NATIVE_TO_WORLD.double()
    up = R_root @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # native up in motion world
    ax = int(up.abs().argmax())
    K0 = torch.eye(3, dtype=torch.float64)
    if ax == 1:  # y-up data: rotate y to z like the canonical frame change
        K0 = M
    elif ax == 0:
        K0 = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    if (K0 @ up)[2] < 0:
        K0 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ K0
    fwd = K0 @ R_root @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    yaw = torch.atan2(fwd[0], fwd[1])  # angle from +y
    c, s = torch.cos(yaw), torch.sin(yaw)
    Rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Rz @ K0


def smplx_apose(frames: int = 1) -> Motion:
    """The SMPL-X A-pose of method §2.1 (the canonical pose; flat hands, jaw and eyes at rest) held for
    ``frames`` frames at 30 fps: the motion that leaves the avatar as trained."""
    from threestudio.models.body.smplx_body import smplx_apose_body_pose

    body = smplx_apose_body_pose().float()[None].repeat(frames, 1, 1)
    return Motion.from_body(torch.zeros(frames, 3), body, torch.zeros(frames, 3), 30.0)


def smplx_apose_world() -> torch.Tensor:
    """[55, 3, 3] native world rotations of :func:`smplx_apose`."""
    return smplx_world_rotations(smplx_apose().pose)[0]


def joint_map_for(template: BodyTemplate) -> dict[int, int]:
    """SMPL-X joint -> template joint index: direct for smplx (all 55 joints), :data:`ANNY_JOINT_MAP`
    plus the eye and finger bones of :data:`ANNY_FACE_HAND_MAP` for anny (no jaw bone).

    Raises:
        UserError: the template lacks a body joint needed for retargeting.
    """
    if template.source == "smplx":
        return {j: j for j in range(min(55, template.joints.shape[0]))}
    names = {n: i for i, n in enumerate(template.joint_names)}
    missing = [n for n in ANNY_JOINT_MAP.values() if n not in names]
    if missing:
        raise UserError(f"body template {template.source!r} lacks joints {missing} needed for retargeting")
    both = ANNY_JOINT_MAP | {j: n for j, n in ANNY_FACE_HAND_MAP.items() if n in names}
    return {j: names[n] for j, n in both.items()}


def retarget(motion: Motion, template: BodyTemplate) -> torch.Tensor:
    """Per-frame joint transforms [T, J, 4, 4] (template world, relative to the canonical A-pose) for LBS.

    Each mapped joint's world rotation change from the SMPL-X A-pose, expressed in the template frame
    (``ΔR_j = K R_j(pose) R_j(A)^-1 M^-1``, K aligning the motion's up/facing with the template's),
    drives the corresponding template joint; unmapped joints (fingers, toes, extra spine bones) take
    their nearest mapped ancestor's rotation. Joint positions follow by forward kinematics along the
    template's own bones, so the canonical proportions are kept (rest-pose correction). Eye and finger
    rotations drive the template's eye and finger bones (jaw: the smplx template's jaw joint; anny has
    no jaw bone, see :func:`jaw_open_weight`).
    """
    R = smplx_world_rotations(motion.pose)  # T 55 3 3
    RA = smplx_apose_world()
    M = SMPLX_NATIVE_TO_WORLD.double()
    K = _heading_alignment(R[0, 0])
    dR = K @ R @ RA.transpose(-1, -2) @ M.T  # T 55 3 3, template world
    jmap = joint_map_for(template)
    J, T = template.joints.shape[0], len(motion)
    parents = template.parents.tolist()
    src = [-1] * J
    for sj, tj in jmap.items():
        src[tj] = sj
    for j in range(J):  # inherit from the nearest mapped ancestor (parents precede children)
        if src[j] < 0:
            p = parents[j]
            src[j] = src[p] if p >= 0 else 0
    rot = dR[:, src]  # T J 3 3
    pA = template.joints.double()
    pos = torch.zeros(T, J, 3, dtype=torch.float64)
    for j in range(J):
        p = parents[j]
        if p < 0:
            pos[:, j] = pA[j]
        else:
            pos[:, j] = pos[:, p] + torch.einsum("tab,b->ta", rot[:, p], pA[j] - pA[p])
    tr = motion.trans.double() - motion.trans[:1].double()
    pos = pos + (BODY_HEIGHT / SMPLX_MEAN_HEIGHT) * torch.einsum("ab,tb->ta", K, tr)[:, None]
    G = torch.eye(4, dtype=torch.float64).repeat(T, J, 1, 1)
    G[:, :, :3, :3] = rot
    G[:, :, :3, 3] = pos - torch.einsum("tjab,jb->tja", rot, pA)
    return G.float()
