"""Body motions from AMASS-style files and their retargeting to a body template.

Accepted ``.npz`` (AMASS conventions): ``poses`` [T, 165] / [T, 55, 3] (SMPL-X) or [T, 156] /
[T, 52, 3] (SMPL-H) axis-angles (global orientation first, then the 21 body joints), or the split
AMASS-X keys ``pose_body`` [T, 63] / [T, 21, 3] with an optional ``root_orient`` [T, 3]; optional
``trans`` [T, 3] (metres), ``mocap_framerate`` (or ``mocap_frame_rate``; default 30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from threestudio.models.body.smplx_joints import ANNY_JOINT_MAP, SMPLX_NATIVE_TO_WORLD, SMPLX_PARENTS
from threestudio.models.body.template import BODY_HEIGHT, BodyTemplate
from threestudio.ops.lbs import axis_angle_to_matrix
from threestudio.utils.errors import UserError
from threestudio.utils.io import read_npz

SMPLX_MEAN_HEIGHT = 1.70
"""Metres of an average SMPL-X body; motion translations are scaled by BODY_HEIGHT / this."""


@dataclass
class Motion:
    """``global_orient`` [T, 3] and ``body_pose`` [T, 21, 3] axis-angles, ``trans`` [T, 3] metres,
    ``fps`` frames per second."""

    global_orient: torch.Tensor
    body_pose: torch.Tensor
    trans: torch.Tensor
    fps: float

    def __len__(self) -> int:
        return self.body_pose.shape[0]


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
    else:  # split keys: body pose [+ root orientation], padded to the SMPL-X layout
        body = np.asarray(z["pose_body"], dtype=np.float64)
        Tb = body.shape[0] if body.ndim >= 1 else 0
        if Tb and body.reshape(Tb, -1).shape[1] != 63:
            raise UserError(
                f"motion {path}: 'pose_body' has {body.reshape(Tb, -1).shape[1] // 3} joints per frame; expected 21"
            )
        root = (
            np.asarray(z["root_orient"], dtype=np.float64).reshape(Tb, 3)
            if "root_orient" in files
            else np.zeros((Tb, 3))
        )
        poses = np.concatenate([root, body.reshape(Tb, 63), np.zeros((Tb, 99))], 1) if Tb else np.zeros((0, 165))
    T = poses.shape[0] if poses.ndim >= 1 else 0
    if T == 0:
        raise UserError(f"motion {path} has zero frames")
    flat = poses.reshape(T, -1)
    if flat.shape[1] not in (165, 156):
        raise UserError(
            f"motion {path}: 'poses' has {flat.shape[1] // 3 if flat.shape[1] % 3 == 0 else flat.shape[1]} "
            "joints per frame; expected 55 (SMPL-X, [T,165]) or 52 (SMPL-H, [T,156])"
        )
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
    aa = torch.from_numpy(flat[:, :66].reshape(T, 22, 3))
    m = Motion(aa[:, 0].float(), aa[:, 1:].float(), torch.from_numpy(trans).float(), rate)
    return resample(m, fps) if fps and abs(fps - rate) > 1e-6 else m


def resample(m: Motion, fps: float) -> Motion:
    """Resample to ``fps`` (slerp on joint rotations, linear on translation)."""
    import roma

    T = len(m)
    step = m.fps / fps  # source frames per output frame
    n = int(math.floor((T - 1) / step + 1e-9)) + 1
    src = torch.arange(n, dtype=torch.float64) * step
    i0 = src.floor().long().clamp(max=T - 1)
    i1 = (i0 + 1).clamp(max=T - 1)
    w = (src - i0).float()
    aa = torch.cat([m.global_orient[:, None], m.body_pose], 1)
    q = roma.rotvec_to_unitquat(aa)
    out = roma.unitquat_to_rotvec(_slerp(q[i0], q[i1], w))
    tr = m.trans[i0] * (1 - w[:, None]) + m.trans[i1] * w[:, None]
    return Motion(out[:, 0], out[:, 1:], tr, fps)


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


def smplx_world_rotations(global_orient: torch.Tensor, body_pose: torch.Tensor) -> torch.Tensor:
    """Forward kinematics of rotations only: [T, 22, 3, 3] world rotations of the SMPL-X body joints
    (native SMPL-X/AMASS world)."""
    local = axis_angle_to_matrix(torch.cat([global_orient[:, None], body_pose], 1).double())
    world = [local[:, 0]]
    for j in range(1, 22):
        world.append(world[SMPLX_PARENTS[j]] @ local[:, j])
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


def smplx_apose_world(dtype=torch.float64) -> torch.Tensor:
    """[22, 3, 3] native world rotations of the SMPL-X A-pose of method §2.1 (the canonical pose)."""
    from threestudio.models.body.smplx_body import smplx_apose_body_pose

    return smplx_world_rotations(torch.zeros(1, 3, dtype=dtype), smplx_apose_body_pose().to(dtype)[None])[0]


def joint_map_for(template: BodyTemplate) -> dict[int, int]:
    """SMPL-X body joint -> template joint index (direct for smplx, :data:`ANNY_JOINT_MAP` for anny)."""
    if template.source == "smplx":
        return {j: j for j in range(22)}
    names = {n: i for i, n in enumerate(template.joint_names)}
    missing = [n for n in ANNY_JOINT_MAP.values() if n not in names]
    if missing:
        raise UserError(f"body template {template.source!r} lacks joints {missing} needed for retargeting")
    return {j: names[n] for j, n in ANNY_JOINT_MAP.items()}


def retarget(motion: Motion, template: BodyTemplate) -> torch.Tensor:
    """Per-frame joint transforms [T, J, 4, 4] (template world, relative to the canonical A-pose) for LBS.

    Each mapped joint's world rotation change from the SMPL-X A-pose, expressed in the template frame
    (``ΔR_j = K R_j(pose) R_j(A)^-1 M^-1``, K aligning the motion's up/facing with the template's),
    drives the corresponding template joint; unmapped joints (fingers, toes, extra spine bones) take
    their nearest mapped ancestor's rotation. Joint positions follow by forward kinematics along the
    template's own bones, so the canonical proportions are kept (rest-pose correction).
    """
    R = smplx_world_rotations(motion.global_orient, motion.body_pose)  # T 22 3 3
    RA = smplx_apose_world()
    M = SMPLX_NATIVE_TO_WORLD.double()
    K = _heading_alignment(R[0, 0])
    dR = K @ R @ RA.transpose(-1, -2) @ M.T  # T 22 3 3, template world
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
