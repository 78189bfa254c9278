"""SMPL-X body-joint tables shared by the body plugins and motion retargeting (``animation/motion.py``):
kinematic parents, names, the anny bone of each SMPL-X body joint, and the SMPL-X native frame."""

from __future__ import annotations

import torch

# SMPL-X / SMPL-H parents of the 22 body joints (pelvis + 21)
SMPLX_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
SMPLX_BODY_NAMES = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
)
# SMPL-X body joint -> anny bone (anatomical left = ".L")
ANNY_JOINT_MAP = {
    0: "root",
    1: "upperleg01.L",
    2: "upperleg01.R",
    3: "spine05",
    4: "lowerleg01.L",
    5: "lowerleg01.R",
    6: "spine03",
    7: "foot.L",
    8: "foot.R",
    9: "spine02",
    10: "toe1-1.L",
    11: "toe1-1.R",
    12: "neck01",
    13: "clavicle.L",
    14: "clavicle.R",
    15: "head",
    16: "upperarm01.L",
    17: "upperarm01.R",
    18: "lowerarm01.L",
    19: "lowerarm01.R",
    20: "wrist.L",
    21: "wrist.R",
}
SMPLX_NATIVE_TO_WORLD = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
"""SMPL-X canonical frame (y up, facing +z) -> template frame (z up, facing +y); a proper rotation."""
