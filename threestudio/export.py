"""Export an avatar to the common Gaussian-splat formats and its skinning rig:

    python -m threestudio.export <avatar.ply> --format glb [--out FILE]
    python -m threestudio.export <avatar.ply> --format all          # every format, beside the avatar

Formats (all in the 3DGS/OpenCV frame: upright and facing the default camera in SuperSplat/PlayCanvas,
checked by the tests, and in the viewers that follow that convention, such as Spark and gsplat's; see
:mod:`threestudio.utils.ply` for the frame and :mod:`threestudio.utils.splat_formats` for the
encodings):

=================  ======================  ==========================================================
``--format``       default output          what
=================  ======================  ==========================================================
``ply``            ``<stem>.3dgs.ply``     standard 3DGS PLY (the avatar's own layout, without extra
                                           per-Gaussian columns such as specular features)
``compressed-ply`` ``<stem>.compressed.ply``  PlayCanvas compressed PLY (SuperSplat), ~4x smaller
``splat``          ``<stem>.splat``        antimatter15 .splat (colour without higher SH bands)
``spz``            ``<stem>.spz``          Niantic .spz (version 3, gzip), ~10x smaller
``glb``            ``<stem>.glb``          glTF 2.0 binary with ``KHR_gaussian_splatting``
``rig``            ``<stem>.rig.npz``      the skinning rig (joints, each Gaussian's top-4 weights,
                                           blendshape offsets): :mod:`threestudio.animation.rig`
=================  ======================  ==========================================================

Each export is read back and its largest round-trip errors printed (positions in body units, colour
and opacity in [0, 1]). Bad input is one error line; nothing is written before the avatar is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from threestudio.utils.splat_formats import SH_C0

FORMATS = {
    "ply": ".3dgs.ply",
    "compressed-ply": ".compressed.ply",
    "splat": ".splat",
    "spz": ".spz",
    "glb": ".glb",
    "rig": ".rig.npz",
}
"""Export format -> default file suffix (the output goes beside the avatar)."""


def _io():
    from threestudio.utils import splat_formats as sf
    from threestudio.utils.ply import read_gaussian_ply, write_gaussian_ply

    def write_ply(path, p):
        write_gaussian_ply(path, p, frame="raw")  # p is already in the file frame

    def read_ply(path):
        return read_gaussian_ply(path, frame="raw")[0]

    return {
        "ply": (write_ply, read_ply),
        "compressed-ply": (sf.write_compressed_ply, sf.read_compressed_ply),
        "splat": (sf.write_splat, sf.read_splat),
        "spz": (sf.write_spz, sf.read_spz),
        "glb": (sf.write_glb, sf.read_glb),
    }


def round_trip_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest differences between two Gaussian sets in the same order: centre (units), colour
    ``0.5 + C0 f_dc`` (clipped to [0, 1] as viewers show it) and opacity (sigmoid)."""

    def rgb(p):
        return np.clip(0.5 + SH_C0 * p["f_dc"].astype(np.float64), 0, 1)

    def alpha(p):
        return 1 / (1 + np.exp(-p["opacity_logit"].astype(np.float64)))

    return {
        "position": float(np.abs(a["means"].astype(np.float64) - b["means"]).max(initial=0)),
        "color": float(np.abs(rgb(a) - rgb(b)).max(initial=0)),
        "opacity": float(np.abs(alpha(a) - alpha(b)).max(initial=0)),
    }


def export_avatar(ply: str | Path, formats: list[str], out: str | Path | None = None, template: str = "auto") -> list:
    """Write ``ply`` in each of ``formats``; returns ``[(format, path, bytes, errors)]``.

    Raises:
        UserError: unreadable avatar, unknown format, ``--out`` with several formats or equal to the
            avatar, or (rig) a template that does not fit.
    """
    from threestudio.utils.errors import UserError
    from threestudio.utils.ply import read_gaussian_ply, to_file_frame

    ply = Path(ply)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)} or all")
    if out is not None and len(formats) > 1:
        raise UserError("--out names one file: give it with a single --format (all formats go beside the avatar)")
    world, _ = read_gaussian_ply(ply)  # checks the avatar before anything is written
    targets = [(f, Path(out) if out else ply.with_name(ply.name[: -len(ply.suffix)] + FORMATS[f])) for f in formats]
    for f, path in targets:
        if path.resolve() == ply.resolve():
            raise UserError(f"--out {path} is the avatar itself; choose another file")
        if out and not path.name.endswith(FORMATS[f].split(".", 2)[-1]):
            raise UserError(f"--out {path}: a {f} export ends in {FORMATS[f]}")
    animator = None
    if "rig" in formats:
        animator = _animator(ply, template)
    file_params = to_file_frame(world)
    io = _io()
    done = []
    for f, path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if f == "rig":
            from threestudio.animation.rig import write_rig

            write_rig(path, animator)
            errors = {}
        else:
            write, read = io[f]
            write(path, file_params)
            errors = round_trip_error(file_params, read(path))
        done.append((f, path, path.stat().st_size, errors))
    return done


def _animator(ply: Path, template: str):
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.animation.cli import resolve_template
    from threestudio.data.handoff import load_avatar

    model, _ = load_avatar(ply, "body-gaussian-geometry", {})
    return GaussianAnimator(model, resolve_template(ply, template))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ply", help="the avatar (a 3DGS PLY, e.g. stage3/save/avatar.ply)")
    ap.add_argument("--format", default="all", help=f"one of {', '.join(FORMATS)}, or all (default)")
    ap.add_argument("--out", default=None, help="output file (one format only; default: beside the avatar)")
    ap.add_argument("--template", default="auto", help="body template of the rig: auto, anny, smplx or a .npz")
    a = ap.parse_args(argv)
    from threestudio.utils.errors import UserError

    formats = list(FORMATS) if a.format == "all" else [a.format]
    try:
        done = export_avatar(a.ply, formats, a.out, a.template)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f, path, size, err in done:
        errs = ", ".join(f"{k} {v:.2g}" for k, v in err.items())
        print(f"{f:15s} {size / 1e6:8.2f} MB  {path}" + (f"  (round trip: {errs})" if errs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
