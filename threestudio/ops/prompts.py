"""View-dependent prompt suffixes (method §3.5), re-derived for the proper (unmirrored) world frame.

"left"/"right" name the side of the *person* that faces the camera: azimuth 0° (camera at +x)
sees the person's right side, ±180° their left side (see ``ops/camera.py``). Close-ups are labelled
as close-ups, not "overhead view" (fix of method §12.8).
"""
from __future__ import annotations

DIRECTIONS = ("front", "right front", "right back", "back", "left back", "left front")


def view_direction(azimuth_deg: float) -> str:
    """Direction label for an azimuth in degrees (any range)."""
    a = -((-float(azimuth_deg) + 180.0) % 360.0 - 180.0)  # wrap to (-180, 180]
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
