"""The skinning rig of an avatar as a sidecar file others can drive (``avatar.rig.npz``).

A plain ``.npz`` (NumPy arrays only: ``np.load`` with its default ``allow_pickle=False`` reads it), in
the same frame and Gaussian order as the avatar's PLY (the file frame of :mod:`threestudio.utils.ply`:
y down, the person facing +z, their left at -x; body units, height ≈ 1.556):

==========================  ===============  ====================================================
key                         shape, dtype     meaning
==========================  ===============  ====================================================
``format``, ``version``     str, int         ``"gaussianip-rig"``, 1
``frame``                   str              ``"opencv"`` (the PLY's frame)
``joint_names``             [J] str          the body template's joint names
``parents``                 [J] int32        parent joint, -1 for the root (parents come first)
``rest_transforms``         [J, 4, 4] f32    each joint's rigid frame in the rest pose (the pose of
                                             the PLY); column 3 is the joint position
``gaussian_joints``         [N, 4] int32     the 4 joints with the largest skinning weights
``gaussian_weights``        [N, 4] f32       their weights (rows sum to 1)
``expression_names``        [E] str          blendshape names (ARKit for anny; may be empty)
``expression_kind``         str              ``"arkit"`` (weights in [0, 1]), ``"smplx"`` or ``""``
``expression_gaussians``    [B] int32        the Gaussians the blendshapes move
``expression_offsets``      [E, B, 3] f32    their offsets at weight 1
==========================  ===============  ====================================================

Posing (linear blend skinning, as ``animation.py`` does): with per-joint transforms ``G_j`` relative to
the rest pose, ``x' = Σ_k w_k G_{j_k} (x + Σ_e a_e δ_e)``. ``animation.py`` additionally rotates each
Gaussian with its skinning and its triangle; the sidecar carries what a NumPy user needs for centres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from threestudio.ops.blendshapes import corner_offsets
from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path, read_npz
from threestudio.utils.ply import FILE_FROM_WORLD

RIG_FORMAT, RIG_VERSION, TOP_K = "gaussianip-rig", 1, 4


def rig_arrays(animator) -> dict[str, np.ndarray]:
    """The sidecar arrays of a :class:`~threestudio.animation.animator.GaussianAnimator`, in the file frame."""
    tpl = animator.template
    R = torch.as_tensor(FILE_FROM_WORLD, dtype=torch.float32)
    frames = tpl.joint_frames.clone().float()
    frames[:, :3, :3] = R @ frames[:, :3, :3]
    frames[:, :3, 3] = frames[:, :3, 3] @ R.T
    w, j = animator.weights.detach().cpu().float().topk(TOP_K, dim=-1)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    out = {
        "format": np.asarray(RIG_FORMAT),
        "version": np.asarray(RIG_VERSION),
        "frame": np.asarray("opencv"),
        "joint_names": np.asarray([str(n) for n in tpl.joint_names]),
        "parents": tpl.parents.numpy().astype(np.int32),
        "rest_transforms": frames.numpy(),
        "gaussian_joints": j.numpy().astype(np.int32),
        "gaussian_weights": w.numpy(),
        "expression_names": np.asarray([], dtype="<U1"),
        "expression_kind": np.asarray(""),
        "expression_gaussians": np.zeros(0, np.int32),
        "expression_offsets": np.zeros((0, 0, 3), np.float32),
    }
    b = animator.expression
    if b is not None:
        tri_off = corner_offsets(b["basis"].cpu(), b["corners"].cpu())  # E B 3 3
        offsets = (b["bary"].cpu()[None, ..., None] * tri_off).sum(2) @ R.T
        out |= {
            "expression_names": np.asarray([str(n) for n in tpl.expressions.names]),
            "expression_kind": np.asarray(tpl.expressions.kind),
            "expression_gaussians": b["gaussians"].cpu().numpy().astype(np.int32),
            "expression_offsets": offsets.numpy().astype(np.float32),
        }
    return out


def write_rig(path: str | Path, animator) -> None:
    """Write the sidecar atomically (a compressed ``.npz``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **rig_arrays(animator))


def read_rig(path: str | Path) -> dict[str, np.ndarray]:
    """Read a sidecar (never unpickles).

    Raises:
        UserError: missing, pickled or not a rig of this version.
    """
    z = read_npz(path, "rig sidecar")
    if str(z.get("format", "")) != RIG_FORMAT or int(z.get("version", -1)) != RIG_VERSION:
        raise UserError(f"{path} is not a {RIG_FORMAT} file of version {RIG_VERSION}")
    return z
