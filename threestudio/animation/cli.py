"""``animation.py``: drive a Gaussian avatar with an AMASS motion and/or a facial expression recording
(see :func:`main`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HELP = """Animate a 3D Gaussian avatar: body motion, facial expressions, or both.

  python animation.py --ply <avatar.ply> --motion <motion.npz> --play [--rotate] [--gui]
  python animation.py --ply <avatar.ply> --expression <face.csv> --view face --play
  python animation.py --ply <avatar.ply> --gui          # pose the face by hand in the web viewer

Writes an mp4 with --play (default <trial>/save/anim_<motion or expression>.mp4), per-frame PLYs with
--export-ply DIR, and serves a web viewer with --gui (http://127.0.0.1:<port>).

Motion and expression are both resampled to --fps. When they differ in length the result is as long
as the longer one and the shorter one holds its last frame. Without --motion the body keeps its
trained A-pose; the expression recording's head, neck, jaw and eye rotations apply on top of the
motion's."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ply", required=True, help="avatar (standard 3DGS PLY, e.g. stage3/save/avatar.ply)")
    ap.add_argument(
        "--motion",
        default=None,
        help="AMASS-style .npz (SMPL-X poses [T,165]/[T,55,3] or SMPL-H [T,156]); body, jaw, eye and finger "
        "rotations are played",
    )
    ap.add_argument(
        "--expression",
        default=None,
        metavar="FILE",
        help="facial expression recording: an ARKit blendshape .csv as Live Link Face exports it (anny avatars), "
        "or an AnimPortrait3D folder / expressions.npy [T,100] (+ poses.npy [T,15]; SMPL-X avatars)",
    )
    ap.add_argument(
        "--expression-fps",
        type=float,
        default=None,
        help="frame rate of the expression recording (default: 60 for a .csv, 30 for AnimPortrait3D .npy)",
    )
    ap.add_argument(
        "--view",
        choices=("body", "face"),
        default="body",
        help="camera of the video and the viewer: the whole body, or a close-up of the head",
    )
    ap.add_argument("--play", action="store_true", help="render the animation to an mp4")
    ap.add_argument("--rotate", action="store_true", help="orbit the camera once while playing")
    ap.add_argument("--gui", action="store_true", help="start the web viewer (viser)")
    ap.add_argument("--port", type=int, default=8080, help="web viewer port (127.0.0.1)")
    ap.add_argument(
        "--out",
        default=None,
        help="output mp4 path, or an existing folder (or one ending in /) for <folder>/anim_<motion>.mp4",
    )
    ap.add_argument("--fps", type=float, default=30.0, help="output frame rate; the motion is resampled to it")
    ap.add_argument("--resolution", type=int, default=512, help="video size in pixels (square)")
    ap.add_argument(
        "--template",
        default="auto",
        help="body template the avatar was made on: auto (from the avatar's trial directory), anny, "
        "smplx, or a template .npz",
    )
    ap.add_argument("--export-ply", default=None, metavar="DIR", help="write every posed frame as DIR/frame_NNNNN.ply")
    ap.add_argument("--max-frames", type=int, default=0, help="use at most this many frames (0 = all)")
    ap.add_argument("--no-follow", action="store_true", help="keep the camera fixed instead of following the body")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return ap.parse_args(argv)


def resolve_template(ply: Path, spec: str):
    """Body template of an avatar: explicit (.npz / plugin kind) or found through the manifests of the
    avatar's trial directory (stage 3 -> stage 2 -> stage 1 config); anny if nothing says otherwise."""
    from omegaconf import OmegaConf

    import threestudio
    from threestudio.models.body.template import BodyTemplate
    from threestudio.utils.errors import UserError

    if spec.endswith(".npz"):
        return BodyTemplate.load(spec)
    if spec != "auto":
        try:
            return threestudio.find(spec if spec.endswith("-body") else f"{spec}-body")({}).template()
        except KeyError as e:
            raise UserError(f"--template {spec}: {e.args[0]}") from None
    trial = ply.resolve().parent.parent
    for _ in range(4):
        man = trial / "manifest.json"
        if not man.is_file():
            break
        data = json.loads(man.read_text())
        cfg_path = trial / "configs" / "parsed.yaml"
        if data.get("stage") == "ahds" and cfg_path.is_file():
            sys_cfg = OmegaConf.load(cfg_path).system
            kind = sys_cfg.get("body_type", data.get("body", "anny-body"))
            return threestudio.find(kind)(dict(sys_cfg.get("body", {}))).template()
        if not data.get("init_from"):
            break
        trial = Path(data["init_from"])
    return threestudio.find("anny-body")({}).template()


def video_path(out: str | None, ply: Path, motion: Path) -> Path:  # motion: the motion or expression file
    """Where ``--play`` writes: ``--out`` as given, ``<out>/anim_<motion>.mp4`` when ``--out`` is a
    folder, else :func:`default_out`.

    Raises:
        UserError: ``--out`` is a file path that does not end in ``.mp4``.
    """
    from threestudio.utils.errors import UserError

    if not out:
        return default_out(ply, motion)
    p = Path(out)
    if p.is_dir() or out.endswith(("/", "\\")):
        return p / f"anim_{motion.stem}.mp4"
    if p.suffix.lower() != ".mp4":
        raise UserError(f"--out {out}: give an .mp4 file or a folder (the video is an H.264 mp4)")
    return p


def default_out(ply: Path, motion: Path) -> Path:
    trial = ply.resolve().parent.parent
    if (trial / "manifest.json").is_file():
        return trial / "save" / f"anim_{motion.stem}.mp4"
    return Path("videos") / f"{ply.stem}_{motion.stem}.mp4"


def _translated(cam, offset: torch.Tensor):
    """``cam`` moved by the world offset [3] (it keeps looking the same way)."""
    cam.c2w = cam.c2w.clone()
    cam.c2w[:, :3, 3] += offset
    cam.center = cam.center + offset
    return cam


def head_cameras(perf, template, size: int, rotate: bool) -> list:
    """One close-up camera per frame on the posed head (the ears' midpoint carried by the head joint)."""
    from threestudio.ops.camera import orbit_cameras

    centres = perf.head_centers(template)
    T, cams = len(perf), []
    for i in range(T):
        cam = orbit_cameras([90.0 + (360.0 * i / T if rotate else 0.0)], 5.0, 0.8, 30.0, size, size, 0.0, "head")
        cams.append(_translated(cam, centres[i]))
    return cams


def body_cameras(perf, template, size: int, rotate: bool, follow: bool) -> list:
    """One full-body camera per frame, following the root joint in the ground plane unless ``follow`` is off."""
    from threestudio.ops.camera import orbit_cameras

    G = perf.transforms.cpu()
    root = G[:, 0, :3, 3] + torch.einsum("tab,b->ta", G[:, 0, :3, :3], template.joints[0].to(G))
    T, cams = len(perf), []
    for i in range(T):
        cam = orbit_cameras([90.0 + (360.0 * i / T if rotate else 0.0)], 5.0, 2.5, 50.0, size, size, 0.0, "body")
        cams.append(_translated(cam, torch.cat([root[i, :2], root.new_zeros(1)])) if follow else cam)
    return cams


def run(a) -> int:
    import threestudio
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.animation.expression import load_expression
    from threestudio.animation.motion import load_motion
    from threestudio.animation.performance import build_performance
    from threestudio.utils.errors import UserError
    from threestudio.utils.io import save_video
    from threestudio.utils.ply import read_gaussian_ply

    if not (a.play or a.gui or a.export_ply):
        raise UserError("nothing to do: add --play (video), --gui (web viewer) and/or --export-ply DIR")
    if not (a.motion or a.expression or a.gui):
        raise UserError("nothing to play: give --motion FILE and/or --expression FILE (or --gui to pose by hand)")
    if not a.fps > 0:
        raise UserError(f"--fps must be positive, got {a.fps}")
    ply = Path(a.ply)
    name = Path(a.motion or a.expression or "rest")
    out = video_path(a.out, ply, name) if a.play else None
    read_gaussian_ply(ply)  # validates before anything heavy
    motion = load_motion(a.motion, fps=a.fps) if a.motion else None
    expression = load_expression(a.expression, a.expression_fps) if a.expression else None
    template = resolve_template(ply, a.template)
    perf = build_performance(template, motion, expression, a.fps)  # checks the recording fits the template
    if a.max_frames and a.max_frames < len(perf):
        n = a.max_frames
        perf.transforms = perf.transforms[:n]
        perf.weights = perf.weights[:n] if perf.weights is not None else None
        perf.motion = perf.motion.frames(n)
    dev = torch.device(
        "cuda" if (a.device == "auto" and torch.cuda.is_available()) else (a.device if a.device != "auto" else "cpu")
    )
    from threestudio.data.handoff import load_avatar
    from threestudio.models.renderers.base import resolve_renderer_type

    model, appearance = load_avatar(
        ply, "body-gaussian-geometry", {}
    )  # + highlights if avatar.specular.safetensors exists
    model.to(dev)
    if appearance is not None:
        appearance.to(dev)
        print("specular appearance loaded: rendering view-dependent highlights")
    animator = GaussianAnimator(model, template, appearance=appearance)
    G = perf.transforms.to(dev)
    W = perf.weights.to(dev) if perf.weights is not None else None
    T = G.shape[0]
    if a.export_ply:
        for i in range(T):
            animator.export_ply(Path(a.export_ply) / f"frame_{i:05d}.ply", G[i], None if W is None else W[i])
        print(f"wrote {T} posed PLY frames to {a.export_ply}")
    if a.play:
        renderer = threestudio.find(resolve_renderer_type("auto", dev.type))({})
        if a.view == "face":
            cams = head_cameras(perf, template, a.resolution, a.rotate)
        else:
            cams = body_cameras(perf, template, a.resolution, a.rotate, not a.no_follow)
        frames = []
        for i in range(T):
            with torch.no_grad():
                cam = cams[i].to(dev)
                posed = animator.pose(G[i], None if W is None else W[i])
                frames.append(renderer.render(posed, cam, animator.colors(posed, cam.c2w))["comp_rgb"][0].cpu())
        save_video(out, frames, fps=int(round(a.fps)))
        print(f"wrote {out} ({T} frames at {a.fps:g} fps)")
    if a.gui:
        from threestudio.animation.viewer import serve

        try:
            serve(animator, perf, "127.0.0.1", a.port, view=a.view)
        except KeyboardInterrupt:
            pass
    return 0


def main(argv=None) -> int:
    import logging
    import warnings

    a = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("viser").setLevel(logging.ERROR)
    from threestudio.utils.errors import UserError

    try:
        return run(a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
