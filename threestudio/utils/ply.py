"""Standard 3DGS PLY files (Kerbl et al. 2023 layout, read by SuperSplat, the INRIA viewer, gsplat
examples...): binary little-endian ``vertex`` elements with properties
``x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3``.

Stored values are the *raw* (pre-activation) parameters: opacity as a logit, scales as logs,
rotations as unnormalised (w, x, y, z) quaternions, colours as SH coefficients with ``f_rest``
in channel-major order. Extra per-Gaussian properties (e.g. specular features) are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path

REQUIRED = (
    "x",
    "y",
    "z",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)


def write_gaussian_ply(
    path: str | Path, params: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None
) -> None:
    """Write Gaussians atomically.

    Args:
        params: ``means`` [N,3], ``f_dc`` [N,3], ``f_rest`` [N,K,3] (K may be 0), ``opacity_logit``
            [N], ``log_scales`` [N,3], ``quats`` [N,4] (w,x,y,z), all float.
        extra: optional further per-Gaussian columns, name -> [N] or [N, D] (D columns named
            ``<name>_<i>``).
    """
    from plyfile import PlyData, PlyElement

    n = params["means"].shape[0]
    f_rest = params["f_rest"].reshape(n, -1, 3).transpose(0, 2, 1).reshape(n, -1)
    cols = [("x", params["means"][:, 0]), ("y", params["means"][:, 1]), ("z", params["means"][:, 2])]
    cols += [(f"n{a}", np.zeros(n)) for a in "xyz"]
    cols += [(f"f_dc_{i}", params["f_dc"][:, i]) for i in range(3)]
    cols += [(f"f_rest_{i}", f_rest[:, i]) for i in range(f_rest.shape[1])]
    cols += [("opacity", params["opacity_logit"].reshape(n))]
    cols += [(f"scale_{i}", params["log_scales"][:, i]) for i in range(3)]
    cols += [(f"rot_{i}", params["quats"][:, i]) for i in range(4)]
    for name, v in (extra or {}).items():
        v = np.asarray(v).reshape(n, -1)
        cols += [(f"{name}_{i}", v[:, i]) for i in range(v.shape[1])] if v.shape[1] > 1 else [(name, v[:, 0])]
    arr = np.empty(n, dtype=[(c, "f4") for c, _ in cols])
    for c, v in cols:
        arr[c] = np.asarray(v, dtype=np.float32)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(arr, "vertex")], text=False).write(tmp)


def _columns(v, *names: str) -> np.ndarray:
    """PLY vertex properties ``names`` stacked as float32 columns [N, len(names)]."""
    return np.stack([np.asarray(v[k], dtype=np.float32) for k in names], 1)


def read_gaussian_ply(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a 3DGS PLY written by any 3DGS tool.

    Returns:
        ``(params, extra)`` with the keys of :func:`write_gaussian_ply`; ``extra`` holds the other
        per-vertex properties by name.

    Raises:
        UserError: the file is missing, unreadable, or lacks the 3DGS properties.
    """
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise UserError(f"PLY file not found: {path}")
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise UserError(f"{path} is not a readable PLY file ({e})") from None
    if "vertex" not in [e.name for e in ply.elements]:
        raise UserError(f"{path} is not a 3DGS PLY: it has no 'vertex' element")
    v = ply["vertex"].data
    names = v.dtype.names
    missing = [r for r in REQUIRED if r not in names]
    if missing:
        raise UserError(
            f"{path} is not a 3DGS PLY: missing properties {', '.join(missing)} "
            "(expected x y z f_dc_* opacity scale_* rot_*, as written by 3DGS trainers)"
        )
    n = len(v)
    rest_names = sorted([p for p in names if p.startswith("f_rest_")], key=lambda s: int(s.split("_")[-1]))
    if len(rest_names) % 3:
        raise UserError(f"{path}: number of f_rest properties ({len(rest_names)}) is not a multiple of 3")
    f_rest = np.stack([v[p] for p in rest_names], 1) if rest_names else np.zeros((n, 0), np.float32)
    f_rest = f_rest.reshape(n, 3, -1).transpose(0, 2, 1)
    params = {
        "means": _columns(v, "x", "y", "z"),
        "f_dc": _columns(v, "f_dc_0", "f_dc_1", "f_dc_2"),
        "f_rest": f_rest.astype(np.float32),
        "opacity_logit": np.asarray(v["opacity"], dtype=np.float32),
        "log_scales": _columns(v, "scale_0", "scale_1", "scale_2"),
        "quats": _columns(v, "rot_0", "rot_1", "rot_2", "rot_3"),
    }
    known = set(REQUIRED) | set(rest_names) | {"nx", "ny", "nz"}
    extra = {p: np.asarray(v[p]) for p in names if p not in known}
    for k, a in params.items():
        if not np.isfinite(a).all():
            raise UserError(f"{path}: property group {k} contains NaN or infinite values")
    return params, extra
