"""SMPL-X joint tables shared by the body plugins and motion retargeting (``animation/motion.py``):
kinematic parents and names of the 55 joints (22 body joints, jaw, two eyes, 2 x 15 finger joints),
the anny bone of each, and the SMPL-X native frame."""

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
JAW, LEFT_EYE, RIGHT_EYE, NECK, HEAD = 22, 23, 24, 12, 15
_FINGERS = ("index", "middle", "pinky", "ring", "thumb")  # SMPL-X order within a hand, 3 joints each
SMPLX_JOINT_NAMES = (
    SMPLX_BODY_NAMES
    + ("jaw", "left_eye", "right_eye")
    + tuple(f"{side}_{f}{k}" for side in ("left", "right") for f in _FINGERS for k in (1, 2, 3))
)
"""The 55 SMPL-X kinematic joints in model order."""
SMPLX_PARENTS_55 = (
    SMPLX_PARENTS
    + (15, 15, 15)
    + tuple(20 if k == 0 else 25 + 3 * f + k - 1 for f in range(5) for k in range(3))
    + tuple(21 if k == 0 else 40 + 3 * f + k - 1 for f in range(5) for k in range(3))
)
"""Parents of the 55 SMPL-X joints: jaw and eyes hang from the head, each finger chain from its wrist."""
# MakeHuman/anny finger numbering: 1 thumb, 2 index, 3 middle, 4 ring, 5 little finger
_ANNY_FINGER = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}
ANNY_FACE_HAND_MAP = {LEFT_EYE: "eye.L", RIGHT_EYE: "eye.R"} | {
    25 + 15 * s + 3 * f + k: f"finger{_ANNY_FINGER[name]}-{k + 1}.{side}"
    for s, side in enumerate(("L", "R"))
    for f, name in enumerate(_FINGERS)
    for k in range(3)
}
"""SMPL-X eye and finger joint -> anny bone. Anny's default rig has no jaw bone (its ``jawOpen``
blendshape opens the mouth)."""
SMPLX_NATIVE_TO_WORLD = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
"""SMPL-X canonical frame (y up, facing +z) -> template frame (z up, facing +y); a proper rotation."""
