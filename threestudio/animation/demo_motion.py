"""A short procedural body motion (walk in place while waving), written as an AMASS-style ``.npz`` so
the repository ships a motion it may redistribute (AMASS motions are under AMASS's own licence):

    python -m threestudio.animation.demo_motion threestudio/assets/motions/demo_wave.npz

Keys: ``poses`` [T, 165] SMPL-X axis-angles (global orientation, 21 body joints, jaw/eyes/hands at 0),
``trans`` [T, 3] metres, ``mocap_framerate``. SMPL-X's native frame: y up, facing +z, the person's left
arm along +x in the T-pose (a rotation about +z raises it).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

# SMPL-X body joint indices (1-based in the kinematic tree; ``poses[:, 3 * j : 3 * j + 3]``)
L_HIP, R_HIP, L_KNEE, R_KNEE = 1, 2, 4, 5
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = 16, 17, 18, 19


def demo_motion(frames: int = 120, fps: float = 30.0) -> dict[str, np.ndarray]:
    """The demo motion as AMASS-style arrays: one stride every second, the right arm raised and
    waving (elbow swinging at 1.5 Hz), the left arm swinging with the stride, a slight vertical bob.

    Returns:
        ``poses`` [frames, 165] float32 radians, ``trans`` [frames, 3] float32 metres,
        ``mocap_framerate`` (scalar).
    """
    t = np.arange(frames) / fps
    phase = 2 * math.pi * t  # one stride per second
    poses = np.zeros((frames, 55, 3), np.float64)
    poses[:, L_HIP, 0] = 0.45 * np.sin(phase)  # thighs swing about x
    poses[:, R_HIP, 0] = -0.45 * np.sin(phase)
    poses[:, L_KNEE, 0] = 0.7 * np.clip(np.sin(phase + math.pi / 2), 0, None)  # knees bend forward
    poses[:, R_KNEE, 0] = 0.7 * np.clip(np.sin(phase - math.pi / 2), 0, None)
    poses[:, L_SHOULDER, 2] = -1.2  # left arm down ...
    poses[:, L_SHOULDER, 1] = 0.35 * np.sin(phase)  # ... swinging with the stride
    poses[:, R_SHOULDER, 2] = -0.6  # right arm raised above the horizontal
    poses[:, R_ELBOW, 1] = 0.9 + 0.6 * np.sin(2 * math.pi * 1.5 * t)  # waving forearm
    trans = np.zeros((frames, 3), np.float64)
    trans[:, 1] = 0.02 * np.cos(2 * phase)  # bob twice per stride (y up)
    return {
        "poses": poses.reshape(frames, 165).astype(np.float32),
        "trans": trans.astype(np.float32),
        "mocap_framerate": np.asarray(fps),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .npz")
    ap.add_argument("--frames", type=int, default=120, help="number of frames")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate")
    a = ap.parse_args(argv)
    from threestudio.utils.io import atomic_path

    with atomic_path(a.out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **demo_motion(a.frames, a.fps))
    print(f"wrote {Path(a.out)} ({a.frames} frames at {a.fps:g} fps)")


if __name__ == "__main__":
    main()
