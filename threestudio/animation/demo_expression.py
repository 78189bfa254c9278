"""A short procedural facial performance written as a Live Link Face CSV, so the repository ships an
expression recording it may redistribute (and the tests have one):

    python -m threestudio.animation.demo_expression threestudio/assets/expressions/demo_face.csv

Columns as the Live Link Face app writes them: ``Timecode`` (HH:MM:SS:FF.mmm), ``BlendShapeCount``,
the 52 ARKit blendshapes with capitalised names in the app's order, then ``HeadYaw/HeadPitch/HeadRoll``
and the two eyes' yaw/pitch/roll (radians). 60 frames per second.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

LIVE_LINK_ORDER = (
    "EyeBlinkLeft EyeLookDownLeft EyeLookInLeft EyeLookOutLeft EyeLookUpLeft EyeSquintLeft EyeWideLeft "
    "EyeBlinkRight EyeLookDownRight EyeLookInRight EyeLookOutRight EyeLookUpRight EyeSquintRight EyeWideRight "
    "JawForward JawRight JawLeft JawOpen MouthClose MouthFunnel MouthPucker MouthRight MouthLeft "
    "MouthSmileLeft MouthSmileRight MouthFrownLeft MouthFrownRight MouthDimpleLeft MouthDimpleRight "
    "MouthStretchLeft MouthStretchRight MouthRollLower MouthRollUpper MouthShrugLower MouthShrugUpper "
    "MouthPressLeft MouthPressRight MouthLowerDownLeft MouthLowerDownRight MouthUpperUpLeft MouthUpperUpRight "
    "BrowDownLeft BrowDownRight BrowInnerUp BrowOuterUpLeft BrowOuterUpRight CheekPuff CheekSquintLeft "
    "CheekSquintRight NoseSneerLeft NoseSneerRight TongueOut"
).split()
"""The 52 blendshape columns in the order the Live Link Face app writes them."""
ROTATION_COLUMNS = tuple(f"{p}{a}" for p in ("Head", "LeftEye", "RightEye") for a in ("Yaw", "Pitch", "Roll"))


def _bump(t: np.ndarray, start: float, end: float) -> np.ndarray:
    """0 outside [start, end], a smooth rise to 1 and fall back inside."""
    x = np.clip((t - start) / (end - start), 0.0, 1.0)
    return np.sin(math.pi * x) ** 2


def demo_expression(seconds: float = 3.0, fps: float = 60.0) -> tuple[list[str], np.ndarray]:
    """Two blinks, a smile, an open mouth and a slow head turn with the eyes following.

    Returns:
        (column names without ``Timecode``, values [T, 1 + 52 + 9]).
    """
    t = np.arange(int(round(seconds * fps))) / fps
    cols = {name: np.zeros_like(t) for name in LIVE_LINK_ORDER}
    blink = _bump(t, 0.4, 0.65) + _bump(t, 2.3, 2.55)
    cols["EyeBlinkLeft"], cols["EyeBlinkRight"] = blink, blink
    smile = _bump(t, 0.7, 1.7)
    cols["MouthSmileLeft"], cols["MouthSmileRight"], cols["CheekSquintLeft"], cols["CheekSquintRight"] = (
        smile,
        smile,
        0.4 * smile,
        0.4 * smile,
    )
    cols["JawOpen"] = _bump(t, 1.5, 2.6)
    cols["BrowInnerUp"] = 0.6 * _bump(t, 1.6, 2.5)
    rot = {c: np.zeros_like(t) for c in ROTATION_COLUMNS}
    rot["HeadYaw"] = 0.25 * np.sin(2 * math.pi * t / seconds)
    rot["HeadPitch"] = 0.05 * np.sin(4 * math.pi * t / seconds)
    rot["LeftEyeYaw"] = rot["RightEyeYaw"] = 0.5 * rot["HeadYaw"]
    values = np.stack(
        [np.full_like(t, 61)] + [cols[c] for c in LIVE_LINK_ORDER] + [rot[c] for c in ROTATION_COLUMNS], 1
    )
    return ["BlendShapeCount", *LIVE_LINK_ORDER, *ROTATION_COLUMNS], values


def timecode(i: int, fps: float) -> str:
    """Live Link Face's ``HH:MM:SS:FF.mmm`` timecode of frame ``i``."""
    s = i / fps
    return (
        f"{int(s // 3600):02d}:{int(s // 60) % 60:02d}:{int(s) % 60:02d}:{int(round((s % 1) * fps)) % int(fps):02d}.000"
    )


def write_csv(path: str | Path, names: list[str], values: np.ndarray, fps: float = 60.0) -> None:
    """Write ``values`` [T, len(names)] as a Live Link Face CSV (atomically)."""
    from threestudio.utils.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(",".join(["Timecode", *names]) + "\n")
        for i, row in enumerate(values):
            fh.write(",".join([timecode(i, fps)] + [f"{v:.6g}" for v in row]) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .csv")
    ap.add_argument("--seconds", type=float, default=3.0, help="length")
    a = ap.parse_args(argv)
    names, values = demo_expression(a.seconds)
    write_csv(a.out, names, values)
    print(f"wrote {Path(a.out)} ({len(values)} frames at 60 fps)")


if __name__ == "__main__":
    main()
