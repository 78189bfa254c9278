"""A synthetic ``SMPLX_NEUTRAL.npz`` with the real keys and shapes, for tests of the SMPL-X code path
where the licence-gated files cannot be had (DESIGN.md §5). Its body is the anny template put back
into SMPL-X's native frame (y up, facing +z, left at +x) and un-A-posed to a T-pose-free rest, with the
55 SMPL-X joints placed at the corresponding anny joints, rigid (one-hot) skinning and 100 smooth random
expression directions on the head, so the
``smplx`` loader, its A-pose and our frame conversion can be checked end to end.

    python -m threestudio.models.body.synthetic_smplx OUT_DIR   # writes OUT_DIR/smplx/SMPLX_NEUTRAL.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from threestudio.models.body.smplx_joints import ANNY_JOINT_MAP, SMPLX_NATIVE_TO_WORLD, SMPLX_PARENTS_55
from threestudio.models.body.template import BodyTemplate


def write_synthetic_smplx(out_dir: str | Path, template: BodyTemplate) -> Path:
    """Write ``out_dir/smplx/SMPLX_NEUTRAL.npz`` built from ``template`` (an anny template)."""
    M = SMPLX_NATIVE_TO_WORLD.double()
    v = (template.vertices.double() @ M).numpy()  # world -> native (M orthogonal: x_n = M^T x_w)
    names = {n: i for i, n in enumerate(template.joint_names)}
    tj = (template.joints.double() @ M).numpy()
    J = np.zeros((55, 3))
    for sj, name in ANNY_JOINT_MAP.items():
        J[sj] = tj[names[name]]
    for k in range(22, 55):  # jaw/eyes at the head, fingers at the wrists
        J[k] = J[15] if k < 25 else J[20] if k < 40 else J[21]
    V = v.shape[0]
    nearest = np.argmin(((v[None] - J[:22, None]) ** 2).sum(-1), axis=1)
    J_reg = np.zeros((55, V))
    J_reg[np.arange(22), nearest] = 1.0
    J_reg[22:25, nearest[15]] = 1.0
    J_reg[25:40, nearest[20]] = 1.0
    J_reg[40:55, nearest[21]] = 1.0
    # one-hot skinning to the template's dominant joint, mapped to the nearest SMPL-X body joint
    dom = template.skin_indices[torch.arange(V), template.skin_weights.argmax(-1)].numpy()
    anny_to_smplx = np.argmin(((tj[:, None] - J[None, :22]) ** 2).sum(-1), axis=1)
    for sj, name in ANNY_JOINT_MAP.items():
        anny_to_smplx[names[name]] = sj
    W = np.zeros((V, 55))
    W[np.arange(V), anny_to_smplx[dom]] = 1.0
    F = template.faces.numpy()
    # 100 expression directions (shapedirs[..., 300:]): smooth random fields on the head, zero elsewhere
    rng = np.random.default_rng(0)
    head = (v[:, 1] > J[12, 1]).astype(np.float64)[:, None]  # above the neck joint (y up)
    freq, phase = rng.normal(0, 20, (100, 3, 3)), rng.uniform(0, 2 * np.pi, (100, 3))
    expr = 0.004 * np.sin(np.einsum("vb,kab->vak", v, freq) + phase.T[None]) * head[..., None]
    shapedirs = np.concatenate([np.zeros((V, 3, 300)), expr], -1)
    arrays = dict(
        v_template=v,
        f=F.astype(np.int64),
        J_regressor=J_reg,
        weights=W,
        kintree_table=np.stack([np.array(SMPLX_PARENTS_55), np.arange(55)]).astype(np.int64),
        shapedirs=shapedirs,
        posedirs=np.zeros((V, 3, 486)),
        hands_componentsl=np.eye(45),
        hands_componentsr=np.eye(45),
        hands_meanl=np.zeros(45),
        hands_meanr=np.zeros(45),
        lmk_faces_idx=np.zeros(51, np.int64),
        lmk_bary_coords=np.full((51, 3), 1 / 3),
        dynamic_lmk_faces_idx=np.zeros((79, 17), np.int64),
        dynamic_lmk_bary_coords=np.full((79, 17, 3), 1 / 3),
    )
    out = Path(out_dir) / "smplx" / "SMPLX_NEUTRAL.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


if __name__ == "__main__":
    from threestudio.models.body.anny_body import AnnyBody

    print(write_synthetic_smplx(sys.argv[1], AnnyBody({}).template()))
