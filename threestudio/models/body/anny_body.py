"""Anny body template (NAVER, Apache-2.0 code, CC0 MakeHuman assets shipped in the wheel).

The template carries anny's 52 facial blendshapes, named like Apple ARKit's (CC0 "Face Units" assets,
``anny.Anny(facial_actions="all")``; same topology as the default model: 13,718 vertices with eyeballs
and tongue), and its 104 bones, which include the eyes (``eye.L``/``eye.R``) and 30 finger bones
(``finger1-1.L``... : finger1 is the thumb, finger5 the little finger). The default rig has no jaw
bone: the jaw opens through the ``jawOpen`` blendshape.

Anny's rest pose is already an A-pose (arms ~45° below horizontal, like the SMPL-X A-pose of
method §2.1), so it is used as is. Anny's native frame is z up, facing -y, left at +x; a 180°
rotation about z (a proper rotation) brings it to the template frame (facing +y, left at -x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import threestudio
from threestudio.models.body.base import BodyModel
from threestudio.models.body.expression import ARKIT_BLENDSHAPES, ExpressionBasis
from threestudio.models.body.template import (
    BodyTemplate,
    apply_similarity,
    frames_to_world,
    similarity_to_world,
)
from threestudio.utils.errors import UserError

# Anny native (z up, facing -y) -> template frame (z up, facing +y): rotation by pi about z.
_ANNY_TO_WORLD = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


@threestudio.register("anny-body")
class AnnyBody(BodyModel):
    """Default body template; needs no licence-gated file. First build ~45-90 s, then cached."""

    @dataclass
    class Config(BodyModel.Config):
        phenotype: dict = field(default_factory=dict)
        """Anny phenotype values in [0, 1] (gender, age, muscle, weight, height, proportions...);
        unset ones are 0.5."""

    def cache_key(self) -> dict:
        import anny

        return {"anny": anny.__version__, "phenotype": dict(self.cfg.phenotype or {}), "v": 2}

    def build(self) -> BodyTemplate:
        try:
            import anny
        except ImportError as e:  # pragma: no cover - exercised only without the package
            raise UserError("the 'anny' body template needs `pip install anny`") from e
        model = anny.Anny(facial_actions="all").to(torch.float64)
        phenotype = dict(self.cfg.phenotype or {}) or None
        with torch.no_grad():
            out = model(pose_parameters=None, phenotype_kwargs=phenotype)
            coco = anny.KeypointsRegressor.coco(model)(out)[0]
            if list(model.facial_action_labels) != list(ARKIT_BLENDSHAPES):  # pragma: no cover - other anny
                raise UserError(f"anny {anny.__version__} has unexpected facial actions; install anny==0.6.2")
            # each blendshape's offset at weight 1 on this phenotype's rest pose (native frame)
            dense = torch.stack(
                [
                    model(pose_parameters=None, phenotype_kwargs=phenotype, facial_actions={k: 1.0})["vertices"][0]
                    - out["vertices"][0]
                    for k in ARKIT_BLENDSHAPES
                ]
            )
        verts = out["vertices"][0]
        frames = out["bone_poses"][0]
        names = list(model.bone_labels)
        R, c, s = similarity_to_world(verts, _ANNY_TO_WORLD)
        labels = anny.KeypointsRegressor.coco(model).labels
        kp = {n: coco[i] for i, n in enumerate(labels)}
        op = [
            kp["nose"], 0.5 * (kp["left_shoulder"] + kp["right_shoulder"]),
            kp["right_shoulder"], kp["right_elbow"], kp["right_wrist"],
            kp["left_shoulder"], kp["left_elbow"], kp["left_wrist"],
            kp["right_hip"], kp["right_knee"], kp["right_ankle"],
            kp["left_hip"], kp["left_knee"], kp["left_ankle"],
            kp["right_eye"], kp["left_eye"], kp["right_ear"], kp["left_ear"],
        ]  # fmt: skip
        w = model.vertex_bone_weights.double()
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        return BodyTemplate(
            vertices=apply_similarity(verts, R, c, s).float(),
            faces=model.get_triangular_faces().long().cpu(),
            joints=apply_similarity(frames[:, :3, 3], R, c, s).float(),
            parents=torch.as_tensor(list(model.bone_parents), dtype=torch.long),
            joint_names=names,
            skin_indices=model.vertex_bone_indices.long().cpu(),
            skin_weights=w.float(),
            joint_frames=frames_to_world(frames, R, c, s).float(),
            keypoints=apply_similarity(torch.stack(op), R, c, s).float(),
            source="anny",
            expressions=ExpressionBasis.from_dense(list(ARKIT_BLENDSHAPES), "arkit", s * dense @ R.T),
        )
