"""A performance: a body motion and/or a facial expression recording, put on one clock and turned into
what the animator plays (per-frame joint transforms and blendshape weights for a body template)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from threestudio.animation.expression import Expression, resample_expression, template_weights
from threestudio.animation.motion import Motion, joint_map_for, resample, retarget, smplx_apose
from threestudio.models.body.smplx_joints import HEAD, JAW, LEFT_EYE, NECK, RIGHT_EYE
from threestudio.models.body.template import BodyTemplate
from threestudio.ops.lbs import axis_angle_to_matrix

_JOINT_OF = {"global": 0, "neck": NECK, "head": HEAD, "jaw": JAW, "left_eye": LEFT_EYE, "right_eye": RIGHT_EYE}


@dataclass
class Performance:
    """T frames at ``fps`` for one body template.

    Attributes:
        motion: the SMPL-X motion played, with the expression recording's head, neck, jaw and eye
            rotations composed in (``pose`` [T, 55, 3]).
        transforms: [T, J, 4, 4] joint transforms relative to the canonical A-pose (LBS, template world).
        weights: [T, E] blendshape weights in the template's order, or None (no expression at all).
        fps: frames per second.
    """

    motion: Motion
    transforms: torch.Tensor
    weights: torch.Tensor | None
    fps: float

    def __len__(self) -> int:
        return self.transforms.shape[0]

    def head_centers(self, template: BodyTemplate) -> torch.Tensor:
        """[T, 3] the posed head centre of each frame (the ears' midpoint carried by the head joint)."""
        G = self.transforms[:, joint_map_for(template)[HEAD]].cpu()  # T 4 4
        return torch.einsum("tab,b->ta", G[:, :3, :3], template.head_center.to(G)) + G[:, :3, 3]


def jaw_open_angle(template: BodyTemplate) -> float | None:
    """Jaw rotation (radians) that the template's ``jawOpen`` blendshape amounts to: the chord angle of
    its most-moved vertex (the chin) about the midpoint of the ears (≈ the jaw hinge). None when the
    template has no ``jawOpen``."""
    e = template.expressions
    if e is None or "jawOpen" not in e.names:
        return None
    idx, off = e.blendshape("jawOpen")
    k = int(off.norm(dim=-1).argmax())
    r = float((template.vertices[idx[k]] - template.head_center).norm())
    return 2.0 * math.asin(min(1.0, float(off[k].norm()) / (2.0 * r)))


def compose_rotations(motion: Motion, expression: Expression) -> Motion:
    """``motion`` with the recording's joint rotations applied in each joint's local frame
    (``R = R_motion R_expression``); the recording's ``global`` rotation replaces the root's."""
    import roma

    pose = motion.pose.clone()
    for key, rv in expression.rotations.items():
        j = _JOINT_OF[key]
        if key == "global":
            pose[:, 0] = rv
        else:
            R = axis_angle_to_matrix(pose[:, j].double()) @ axis_angle_to_matrix(rv.double())
            pose[:, j] = roma.rotmat_to_rotvec(R).float()
    return Motion(pose, motion.trans, motion.fps)


def build_performance(
    template: BodyTemplate, motion: Motion | None = None, expression: Expression | None = None, fps: float = 30.0
) -> Performance:
    """Put ``motion`` and ``expression`` on one clock at ``fps`` and retarget them to ``template``.

    Both are resampled to ``fps``; the performance is as long as the longer one and the shorter one
    holds its last frame. Without a motion the body stays in the canonical A-pose (an expression
    recording's ``global`` rotation then turns the body; with a motion, the motion's root wins). The
    SMPL-X jaw rotation drives the smplx template's jaw joint; on a template without a jaw bone (anny) its
    opening angle becomes ``jawOpen`` weight (:func:`jaw_open_angle`), added to the recording's.

    Raises:
        UserError: an expression recording the template cannot play (see
            :func:`~threestudio.animation.expression.template_weights`).
    """
    if motion is None and expression is None:
        motion = smplx_apose(1)
    expr = resample_expression(expression, fps) if expression is not None else None
    weights = template_weights(expr, template) if expr is not None else None  # checks before any work
    mot = resample(motion, fps) if motion is not None and abs(motion.fps - fps) > 1e-6 else motion
    T = max(len(mot) if mot is not None else 0, len(expr) if expr is not None else 0)
    mot = mot.frames(T) if mot is not None else smplx_apose(T)
    mot = Motion(mot.pose, mot.trans, fps)
    if expr is not None:
        expr = expr.frames(T)
        weights = weights[torch.arange(T).clamp(max=len(weights) - 1)]
        rot = dict(expr.rotations)
        if motion is not None:
            rot.pop("global", None)
        mot = compose_rotations(mot, Expression(expr.weights, expr.names, expr.kind, rot, fps))
    angle = jaw_open_angle(template)
    if template.source != "smplx" and angle is not None and bool((mot.pose[:, JAW] != 0).any()):
        w = weights if weights is not None else torch.zeros(T, len(template.expressions))
        k = template.expressions.names.index("jawOpen")
        w[:, k] = (w[:, k] + (mot.pose[:, JAW, 0] / angle).clamp(min=0)).clamp(0, 1)
        weights = w
    return Performance(mot, retarget(mot, template), weights, fps)
