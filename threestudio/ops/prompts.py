"""View-dependent prompt suffixes (method §3.5), re-derived for the proper (unmirrored) world frame.

"left"/"right" name the side of the *person* that faces the camera: azimuth 0° (camera at +x)
sees the person's right side, ±180° their left side (see ``ops/camera.py``). Close-ups are labelled
as close-ups, not "overhead view" (fix of method §12.8).
"""

from __future__ import annotations

from threestudio.ops.camera import wrap_degrees

DIRECTIONS = ("front", "right front", "right back", "back", "left back", "left front")


def view_direction(azimuth_deg: float) -> str:
    """Direction label for an azimuth in degrees (any range)."""
    a = wrap_degrees(azimuth_deg)
    if 45.0 < a < 135.0:
        return "front"
    if -135.0 < a < -45.0:
        return "back"
    if 0.0 <= a <= 45.0:
        return "right front"
    if -45.0 <= a < 0.0:
        return "right back"
    if a >= 135.0:
        return "left front"
    return "left back"


def view_suffix(direction: str, mode: str, all_visible: bool) -> str:
    """Suffix appended to the user prompt for one view.

    Args:
        direction: one of :data:`DIRECTIONS`.
        mode: camera mode ``body``, ``head`` (face close-up) or ``back`` (head from behind).
        all_visible: all 18 OpenPose keypoints are shown (adds "full body photo", method §3.5).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown view direction {direction!r}")
    if mode == "head":
        return f", close-up photo of the face, {direction} view"
    if mode == "back":
        return f", close-up photo of the head and shoulders, {direction} view"
    return (", full body photo" if all_visible else "") + f", {direction} view"


def refine_suffix(kind: str, azimuth_deg: float) -> str:
    """Stage-2 (VCR) prompt suffix of a ring view (method §7.3), in the unmirrored frame.

    The front view (+90°) and every in-between view get the bare prompt, as in the reference; the
    back view ", back view"; the two side views the side of the person the camera sees
    (0°: ", right view", ±180°: ", left view"); the 45° key views their direction
    (+45°: ", right front view", +135°: ", left front view", −135°: ", left back view",
    −45°: ", right back view").

    Args:
        kind: the view's VCR role, ``primary`` / ``key`` / ``between`` (:func:`threestudio.ops.vcr.view_roles`).
        azimuth_deg: the view's azimuth in degrees.

    Raises:
        ValueError: unknown ``kind``.
    """
    a = wrap_degrees(azimuth_deg)
    if kind == "between":
        return ""
    if kind == "key":
        return f", {view_direction(a)} view"
    if kind != "primary":
        raise ValueError(f"unknown VCR view role {kind!r}")
    if abs(a - 90.0) < 1e-6:
        return ""
    if abs(a + 90.0) < 1e-6:
        return ", back view"
    return ", right view" if abs(a) < 90.0 else ", left view"
