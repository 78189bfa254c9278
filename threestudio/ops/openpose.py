"""OpenPose-18 skeleton images drawn from projected body keypoints (method §5.4), in the drawing
style of the ControlNet v1.1 OpenPose annotator (limbs at 60 % colour, then 4-px joint dots at full
colour, the standard 18-colour palette), without controlnet-aux (and its torchvision dependency).

Occlusion rules are geometric (camera depths of nose and ears), so they hold in any frame, and the
head close-up keeps the shoulders, not the elbows (fix of method §12.8).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from threestudio.utils.typing import Bool, Float, Shaped, Tensor

OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
"""RGB colour of keypoint i (and of limb i) in the OpenPose/ControlNet palette."""

OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
"""The 17 drawn limbs (0-based keypoint pairs), limb i drawn in colour i."""

HEAD_CLOSEUP_KEYPOINTS = (0, 1, 2, 5, 14, 15, 16, 17)
"""Nose, neck, both shoulders, eyes and ears (the reference kept the elbows 3, 6: §12.8)."""


def keypoint_visibility(
    uv: Float[Tensor, "B 18 2"],
    depth: Float[Tensor, "B 18"],
    width: int,
    height: int,
    head_closeup: bool,
    ear_distance: float,
) -> Bool[Tensor, "B 18"]:
    """Which keypoints an OpenPose detector would report for each view.

    Args:
        uv, depth: projected keypoints (pixels) and their camera depth (world units).
        ear_distance: 3-D distance between the two ears of the body (world units).

    Rules: in front of the camera and inside the image (head close-ups: the fixed head/shoulder
    set); back views (nose farther than both ears): no nose, no eyes; the far ear is hidden once
    the head is turned more than ~30° (ear depth gap > 0.5 ear distance), the far eye once it is
    nearly in profile (gap > 0.85 ear distance).
    """
    inside = (depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    vis = inside.clone()
    if head_closeup:
        vis[:] = False
        idx = list(HEAD_CLOSEUP_KEYPOINTS)
        vis[:, idx] = depth[:, idx] > 0
    z_nose, z_r, z_l = depth[:, 0], depth[:, 16], depth[:, 17]
    back = (z_nose > z_r) & (z_nose > z_l)
    for k in (0, 14, 15):
        vis[:, k] &= ~back
    turn = (z_r - z_l).abs() / max(ear_distance, 1e-8)
    r_far = z_r > z_l
    vis[:, 16] &= ~(r_far & (turn > 0.5))
    vis[:, 17] &= ~(~r_far & (turn > 0.5))
    vis[:, 14] &= ~(r_far & (turn > 0.85))
    vis[:, 15] &= ~(~r_far & (turn > 0.85))
    return vis


def draw_openpose(
    uv: Float[Tensor, "B 18 2"], visible: Bool[Tensor, "B 18"], width: int, height: int, uint8: bool = False
) -> Shaped[Tensor, "B H W 3"]:
    """Draw skeletons on black canvases; returns float RGB in [0, 1] on ``uv``'s device, or with
    ``uint8`` the uint8 RGB canvases on the CPU (4x fewer bytes to move; ``/ 255`` gives the floats).

    Line width and dot radius are 4 px at 512² and scale with the image size (min 1 px).
    """
    import cv2

    s = max(height, width) / 512.0
    stick, radius = max(1.0, 4.0 * s), max(1, int(round(4 * s)))
    uv_np, vis_np = uv.detach().cpu().double().numpy(), visible.cpu().numpy()
    out = np.zeros((uv.shape[0], height, width, 3), np.uint8)
    for b in range(uv.shape[0]):
        canvas = out[b]
        for i, (k1, k2) in enumerate(OPENPOSE_LIMBS):
            if not (vis_np[b, k1] and vis_np[b, k2]):
                continue
            (x1, y1), (x2, y2) = uv_np[b, k1], uv_np[b, k2]
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            length = math.hypot(x1 - x2, y1 - y2)
            angle = math.degrees(math.atan2(y1 - y2, x1 - x2))
            poly = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), int(stick)), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, [int(c * 0.6) for c in OPENPOSE_COLORS[i]])
        for k in range(18):
            if vis_np[b, k]:
                x, y = uv_np[b, k]
                cv2.circle(canvas, (int(x), int(y)), radius, OPENPOSE_COLORS[k], thickness=-1)
    if uint8:
        return torch.from_numpy(out)
    return torch.from_numpy(out).to(uv.device).float() / 255.0


def skeleton_images(
    keypoints: Float[Tensor, "18 3"],
    w2c: Float[Tensor, "B 4 4"],
    K: Float[Tensor, "B 3 3"],
    width: int,
    height: int,
    head_closeup: bool,
    uint8: bool = False,
) -> tuple[Shaped[Tensor, "B H W 3"], Bool[Tensor, " B"]]:
    """Project world keypoints, apply the visibility rules and draw.

    Returns:
        skeleton images [B, H, W, 3] in [0, 1] (``uint8``: uint8 on the CPU, see :func:`draw_openpose`)
        and ``all_visible`` [B] (all 18 keypoints shown: the "full body photo" prompt condition of
        method §3.5).
    """
    from threestudio.ops.camera import project_points

    uv, z = project_points(keypoints.to(w2c), w2c, K)
    vis = keypoint_visibility(uv, z, width, height, head_closeup, float((keypoints[16] - keypoints[17]).norm()))
    return draw_openpose(uv, vis, width, height, uint8), vis.all(-1)
