"""``animation.py``: drive a Gaussian avatar with an AMASS motion (see :func:`main`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HELP = """Animate a 3D Gaussian avatar with body motion.

  python animation.py --ply <avatar.ply> --motion <motion.npz> --play [--rotate] [--gui]

Writes an mp4 with --play (default <trial>/save/anim_<motion>.mp4), per-frame PLYs with
--export-ply DIR, and serves a web viewer with --gui (http://127.0.0.1:<port>)."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ply", required=True, help="avatar (standard 3DGS PLY, e.g. stage3/save/avatar.ply)")
    ap.add_argument(
        "--motion", required=True, help="AMASS-style .npz (SMPL-X poses [T,165]/[T,55,3] or SMPL-H [T,156])"
    )
    ap.add_argument("--play", action="store_true", help="render the motion to an mp4")
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


def video_path(out: str | None, ply: Path, motion: Path) -> Path:
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


def run(a) -> int:
    import threestudio
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.animation.motion import load_motion, retarget
    from threestudio.ops.camera import orbit_cameras
    from threestudio.utils.errors import UserError
    from threestudio.utils.io import save_video
    from threestudio.utils.ply import read_gaussian_ply

    if not (a.play or a.gui or a.export_ply):
        raise UserError("nothing to do: add --play (video), --gui (web viewer) and/or --export-ply DIR")
    ply, motion_path = Path(a.ply), Path(a.motion)
    out = video_path(a.out, ply, motion_path) if a.play else None
    read_gaussian_ply(ply)  # validates before anything heavy
    motion = load_motion(motion_path, fps=a.fps)
    if a.max_frames:
        from threestudio.animation.motion import Motion

        n = a.max_frames
        motion = Motion(motion.global_orient[:n], motion.body_pose[:n], motion.trans[:n], motion.fps)
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
    template = resolve_template(ply, a.template)
    animator = GaussianAnimator(model, template, appearance=appearance)
    G = retarget(motion, template).to(dev)
    T = G.shape[0]
    if a.export_ply:
        for i in range(T):
            animator.export_ply(Path(a.export_ply) / f"frame_{i:05d}.ply", G[i])
        print(f"wrote {T} posed PLY frames to {a.export_ply}")
    if a.play:
        renderer = threestudio.find(resolve_renderer_type("auto", dev.type))({})
        root = G[:, 0, :3, 3] + torch.einsum(
            "tab,b->ta", G[:, 0, :3, :3], template.joints[0].to(G)
        )  # root joint position
        frames = []
        for i in range(T):
            az = 90.0 + (360.0 * i / T if a.rotate else 0.0)
            cz = 0.0
            cam = orbit_cameras([az], 5.0, 2.5, 50.0, a.resolution, a.resolution, cz, "body")
            if not a.no_follow:
                shift = torch.zeros(1, 4, 4)
                shift[0, :2, 3] = root[i, :2].cpu()
                cam.c2w = cam.c2w + shift
                cam.center = cam.center + shift[:, :3, 3]
            with torch.no_grad():
                cam = cam.to(dev)
                posed = animator.pose(G[i])
                frames.append(renderer.render(posed, cam, animator.colors(posed, cam.c2w))["comp_rgb"][0].cpu())
        save_video(out, frames, fps=int(round(a.fps)))
        print(f"wrote {out} ({T} frames at {a.fps:g} fps)")
    if a.gui:
        from threestudio.animation.viewer import serve

        try:
            serve(animator, G, a.fps, "127.0.0.1", a.port)
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
