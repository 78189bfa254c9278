"""SMPL-X body template, loaded with the ``smplx`` package from the user's own model files.

The files are licence-gated (https://smpl-x.is.tue.mpg.de): point ``SMPLX_DIR`` (or
``system.body.model_path``) at the folder that contains ``smplx/SMPLX_NEUTRAL.npz``.
The template carries the model file's expression directions (as many as the file has, at most 100:
10 in SMPL-X v1.0, 100 in the 2020 model) and its 55 joints: 22 body joints, jaw, both eyes and
30 finger joints (flat hands in the A-pose).
Pose: the A-pose of method §2.1 (hips, shoulders ∓π/4, wrists). SMPL-X's native frame is y up,
facing +z, left at +x; the proper rotation (x, y, z) -> (-x, z, y) brings it to the template frame.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import threestudio
from threestudio.models.body.base import BodyModel
from threestudio.models.body.expression import ExpressionBasis
from threestudio.models.body.smplx_joints import SMPLX_JOINT_NAMES, SMPLX_NATIVE_TO_WORLD
from threestudio.models.body.template import (
    BodyTemplate,
    apply_similarity,
    frames_to_world,
    similarity_to_world,
)
from threestudio.utils.errors import UserError
from threestudio.utils.io import read_npz

_SMPLX_TO_WORLD = SMPLX_NATIVE_TO_WORLD.double()

# SMPL-X joint index of each OpenPose-18 keypoint (method §2.1).
SMPLX_TO_OPENPOSE18 = (55, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 56, 57, 58, 59)


def smplx_apose_body_pose() -> torch.Tensor:
    """[21, 3] axis-angle A-pose of method §2.1 in SMPL-X body-joint order."""
    p = torch.zeros(21, 3, dtype=torch.float64)
    p[0] = torch.tensor([0.0, 0.2, 0.1])
    p[1] = torch.tensor([0.0, -0.2, -0.1])
    p[15] = torch.tensor([0.0, 0.0, -math.pi / 4])
    p[16] = torch.tensor([0.0, 0.0, math.pi / 4])
    p[19] = torch.tensor([1.0, 0.0, 0.0])
    p[20] = torch.tensor([1.0, 0.0, 0.0])
    return p


def expression_count(shape_dims: int) -> int:
    """Expression directions in an SMPL-X file whose ``shapedirs`` has ``shape_dims`` columns, read as
    the ``smplx`` package does: 300 shape + up to 100 expression columns (the 2020 model), or the older
    10 shape + 10 expression layout."""
    if shape_dims >= 300:
        return min(100, shape_dims - 300)
    return 10 if shape_dims >= 20 else 0


def pickle_free_npz(path: Path, out_dir: Path) -> Path:
    """Copy of an SMPL-X ``.npz`` with only its plain arrays (read with ``allow_pickle=False``) in
    ``out_dir``. The ``smplx`` package loads model files with ``allow_pickle=True``, which would run
    any code pickled into a file someone sent; the official files' pickled entries (``joint2num``,
    ``part2num``: name tables) are not used by the model and are dropped.

    Raises:
        UserError: the file is not a readable npz.
    """
    arrays = read_npz(path, "SMPL-X model file", skip_pickled=True)
    out = out_dir / path.name
    np.savez(out, **arrays)
    return out


@threestudio.register("smplx-body")
class SMPLXBody(BodyModel):
    @dataclass
    class Config(BodyModel.Config):
        model_path: str = "${oc.env:SMPLX_DIR,''}"
        """Folder that contains ``smplx/SMPLX_<GENDER>.npz`` (or the ``smplx`` folder itself)."""
        gender: str = "neutral"
        """SMPL-X model gender: ``neutral``, ``male`` or ``female``."""

    def _model_file(self) -> Path:
        root = Path(os.path.expanduser(self.cfg.model_path or ""))
        name = f"SMPLX_{self.cfg.gender.upper()}.npz"
        for cand in (root / "smplx" / name, root / name):
            if cand.is_file():
                return cand
        raise UserError(
            f"SMPL-X model file {name} not found under {str(root)!r}. The 'smplx' body template needs "
            "the licence-gated SMPL-X files: register at https://smpl-x.is.tue.mpg.de, download "
            "'SMPL-X v1.1 (NPZ)', and set SMPLX_DIR to the folder that contains smplx/"
            + name
            + " (or use the default 'anny' template, which needs no file)."
        )

    def cache_key(self) -> dict:
        f = self._model_file()
        st = f.stat()
        return {"file": str(f.resolve()), "size": st.st_size, "mtime": int(st.st_mtime), "v": 2}

    def build(self) -> BodyTemplate:
        import smplx

        with tempfile.TemporaryDirectory() as tmp:  # smplx's own loader unpickles: give it a clean copy
            clean = pickle_free_npz(self._model_file(), Path(tmp))
            with np.load(clean) as z:
                n_expr = expression_count(z["shapedirs"].shape[-1])
            model = smplx.create(
                str(clean),
                model_type="smplx",
                gender=self.cfg.gender,
                use_pca=False,
                flat_hand_mean=True,
                use_face_contour=False,
                num_betas=10,
                num_expression_coeffs=max(n_expr, 1),
                ext="npz",
            ).double()
        body_pose = smplx_apose_body_pose().reshape(1, -1)
        with torch.no_grad():
            out = model(body_pose=body_pose, return_full_pose=True)
            # each expression direction's offset at coefficient 1 on the A-posed body (native frame)
            unit = torch.eye(max(n_expr, 1), dtype=torch.float64)
            dense = None
            if n_expr:
                dense = torch.stack(
                    [model(body_pose=body_pose, expression=unit[k : k + 1]).vertices[0] for k in range(n_expr)]
                )
                dense = dense - out.vertices[0]
        verts, joints = out.vertices[0], out.joints[0]
        # world rotation of each of the 55 kinematic joints (forward kinematics on axis-angles)
        from smplx.lbs import batch_rigid_transform, batch_rodrigues

        full = out.full_pose.reshape(-1, 3)
        rots = batch_rodrigues(full).reshape(1, -1, 3, 3)
        J_rest = model.J_regressor.double() @ model.v_template.double()
        _, A = batch_rigid_transform(rots, J_rest[None], model.parents)
        n_j = J_rest.shape[0]
        frames = torch.eye(4, dtype=torch.float64).repeat(n_j, 1, 1)
        frames[:, :3, :3] = A[0, :, :3, :3]
        frames[:, :3, 3] = joints[:n_j]
        R, c, s = similarity_to_world(verts, _SMPLX_TO_WORLD)
        W = model.lbs_weights.double()
        k = min(8, W.shape[1])
        sw, si = W.topk(k, dim=-1)
        sw = sw / sw.sum(-1, keepdim=True)
        names = list(SMPLX_JOINT_NAMES[:n_j])
        return BodyTemplate(
            vertices=apply_similarity(verts, R, c, s).float(),
            faces=torch.as_tensor(model.faces.astype("int64")),
            joints=apply_similarity(joints[:n_j], R, c, s).float(),
            parents=model.parents.long().clone().where(model.parents >= 0, torch.tensor(-1)),
            joint_names=names,
            skin_indices=si.long(),
            skin_weights=sw.float(),
            joint_frames=frames_to_world(frames, R, c, s).float(),
            keypoints=apply_similarity(joints[list(SMPLX_TO_OPENPOSE18)], R, c, s).float(),
            source="smplx",
            expressions=None
            if dense is None
            else ExpressionBasis.from_dense([f"expr_{k:03d}" for k in range(n_expr)], "smplx", s * dense @ R.T),
        )
