"""Standard 3DGS PLY files (Kerbl et al. 2023 layout, read by SuperSplat, the INRIA viewer, gsplat
examples...): binary little-endian ``vertex`` elements with properties
``x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3``.

Stored values are the *raw* (pre-activation) parameters: opacity as a logit, scales as logs,
rotations as unnormalised (w, x, y, z) quaternions, colours as SH coefficients with ``f_rest``
in channel-major order. Extra per-Gaussian properties (e.g. specular features) are kept.

**Frames.** In memory everything is in the project's world frame (z up, the person facing +y,
``models/body/template.py``). Files are written in the frame of the 3DGS ecosystem (OpenCV / COLMAP,
"RDF": y down, the person facing +z, their left at -x), in which SuperSplat/PlayCanvas shows a person
upright and facing its default camera (and the viewers that follow the convention: Spark, gsplat's):
``x_f = x, y_f = -z, z_f = y``, a +90° rotation about x (:data:`FILE_FROM_WORLD`). The header records it
(``comment gaussianip_frame opencv``); a PLY without that comment (written before, or by another tool) is
read as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path

FILE_FROM_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""World (z up, facing +y) -> file frame (y down, facing +z): rotation by +90° about x."""
FRAME_COMMENT = "gaussianip_frame opencv"
"""PLY header comment of a file in the file frame (world = FILE_FROM_WORLD^T file)."""
_SH_C = {
    1: 0.4886025119029199,
    2: (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396),
    3: (
        -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
        -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
    ),
}  # fmt: skip


def _sh_band(d: np.ndarray, degree: int) -> np.ndarray:
    """The real SH basis of one band as 3DGS evaluates it (its constants and signs), for unit
    directions d [M, 3]; returns [M, 2 * degree + 1]."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    if degree == 1:
        c = _SH_C[1]
        return np.stack([-c * y, c * z, -c * x], 1)
    if degree == 2:
        c = _SH_C[2]
        return np.stack([c[0] * x * y, c[1] * y * z, c[2] * (2 * z * z - x * x - y * y), c[3] * x * z,
                         c[4] * (x * x - y * y)], 1)  # fmt: skip
    c = _SH_C[3]
    xx, yy, zz = x * x, y * y, z * z
    return np.stack([c[0] * y * (3 * xx - yy), c[1] * x * y * z, c[2] * y * (4 * zz - xx - yy),
                     c[3] * z * (2 * zz - 3 * xx - 3 * yy), c[4] * x * (4 * zz - xx - yy),
                     c[5] * z * (xx - yy), c[6] * x * (xx - 3 * yy)], 1)  # fmt: skip


def rotate_sh(f_rest: np.ndarray, R: np.ndarray) -> np.ndarray:
    """SH coefficients ``f_rest`` [N, K, 3] (bands 1..3, K = 3, 8 or 15) of a radiance turned by the
    rotation R [3, 3]: ``c'`` such that ``Σ c'_i Y_i(d) = Σ c_i Y_i(R^T d)``. Each band's matrix is
    solved exactly (least squares on 64 directions; the bands are closed under rotation); all bands
    and colour channels are then turned by one matrix product (block-diagonal, [3K, 3K]) in the
    precision of ``f_rest`` (float32 for PLY data, float64 stays float64)."""
    n, K = f_rest.shape[:2]
    if K == 0:
        return f_rest
    rng = np.random.default_rng(0)
    d = rng.normal(size=(64, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    A, start = np.zeros((3 * K, 3 * K)), 0
    for band in (1, 2, 3):
        nb = 2 * band + 1
        if start >= K:
            break
        B, Bt = _sh_band(d, band), _sh_band(d @ R, band)  # Y(d), Y(R^T d)
        M = np.linalg.lstsq(B, Bt, rcond=None)[0]  # Y(R^T d) = Y(d) M
        A[3 * start : 3 * (start + nb), 3 * start : 3 * (start + nb)] = np.kron(M, np.eye(3))  # (i,c) <- (j,c)
        start += nb
    dt = np.result_type(f_rest.dtype, np.float32)
    flat = np.ascontiguousarray(f_rest, dtype=dt).reshape(n, 3 * K)
    return (flat @ A.T.astype(dt)).reshape(n, K, 3).astype(f_rest.dtype, copy=False)


def _quat_of(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion of a rotation matrix (w >= 0)."""
    w = np.sqrt(max(0.0, 1.0 + np.trace(R))) / 2
    if w > 0.5:  # else the largest vector component is the stable pivot (Shepperd's method)
        return np.array(
            [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)]
        )
    i = int(np.argmax(np.diag(R)))
    j, k = (i + 1) % 3, (i + 2) % 3
    v = np.sqrt(max(0.0, 1.0 + R[i, i] - R[j, j] - R[k, k])) / 2
    q = np.zeros(4)
    q[1 + i], q[1 + j], q[1 + k] = v, (R[j, i] + R[i, j]) / (4 * v), (R[k, i] + R[i, k]) / (4 * v)
    q[0] = (R[k, j] - R[j, k]) / (4 * v)
    return q if q[0] >= 0 else -q


def rotate_gaussians(params: dict[str, np.ndarray], R: np.ndarray) -> dict[str, np.ndarray]:
    """The Gaussians of ``params`` (keys of :func:`write_gaussian_ply`) turned by the rotation R [3, 3]
    about the origin: centres ``R x``, rotations ``q(R) ⊗ q``, SH bands rotated; scales, opacities
    and the DC colour are unchanged."""
    w, x, y, z = _quat_of(R)
    q = params["quats"].astype(np.float64)
    qw, qx, qy, qz = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    out = dict(params)
    out["means"] = (params["means"].astype(np.float64) @ R.T).astype(np.float32)
    out["quats"] = np.stack(
        [
            w * qw - x * qx - y * qy - z * qz,
            w * qx + x * qw + y * qz - z * qy,
            w * qy - x * qz + y * qw + z * qx,
            w * qz + x * qy - y * qx + z * qw,
        ],
        1,
    ).astype(np.float32)
    out["f_rest"] = rotate_sh(params["f_rest"], R)
    return out


def to_file_frame(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """World-frame Gaussians in the file frame (see the module docstring)."""
    return rotate_gaussians(params, FILE_FROM_WORLD)


def to_world_frame(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """File-frame Gaussians back in the world frame."""
    return rotate_gaussians(params, FILE_FROM_WORLD.T)


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
    path: str | Path, params: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None, frame: str = "file"
) -> None:
    """Write Gaussians atomically.

    Args:
        params: world-frame ``means`` [N,3], ``f_dc`` [N,3], ``f_rest`` [N,K,3] (K may be 0),
            ``opacity_logit`` [N], ``log_scales`` [N,3], ``quats`` [N,4] (w,x,y,z), all float.
        extra: optional further per-Gaussian columns, name -> [N] or [N, D] (D columns named
            ``<name>_<i>``).
        frame: ``"file"`` (default) writes in the file frame with the frame comment; ``"raw"``
            writes ``params`` as they are, with no comment.
    """
    from plyfile import PlyData, PlyElement

    if frame not in ("file", "raw"):
        raise ValueError(f"frame must be 'file' or 'raw', got {frame!r}")
    params = to_file_frame(params) if frame == "file" else params
    n = params["means"].shape[0]
    f_rest = params["f_rest"].reshape(n, -1, 3).transpose(0, 2, 1).reshape(n, -1)
    blocks = [
        ("x y z", params["means"]),
        ("nx ny nz", np.zeros((n, 3), np.float32)),
        ("f_dc_0 f_dc_1 f_dc_2", params["f_dc"]),
        (" ".join(f"f_rest_{i}" for i in range(f_rest.shape[1])), f_rest),
        ("opacity", params["opacity_logit"]),
        ("scale_0 scale_1 scale_2", params["log_scales"]),
        ("rot_0 rot_1 rot_2 rot_3", params["quats"]),
    ]
    for name, v in (extra or {}).items():
        v = np.asarray(v).reshape(n, -1)
        blocks.append((" ".join(f"{name}_{i}" for i in range(v.shape[1])) if v.shape[1] > 1 else name, v))
    names = [c for cols, _ in blocks for c in cols.split()]
    # one row-major float32 table [N, columns] viewed as the PLY's vertex records (no per-column passes)
    table = np.concatenate([np.asarray(v, dtype=np.float32).reshape(n, -1) for _, v in blocks], axis=1)
    arr = table.view(np.dtype([(c, "<f4") for c in names])).reshape(n)
    with atomic_path(path) as tmp:
        comments = [FRAME_COMMENT] if frame == "file" else []
        PlyData([PlyElement.describe(arr, "vertex")], text=False, comments=comments).write(tmp)


class _Columns:
    """The float columns of a PLY vertex element by property name. Records of float32 properties only
    (3DGS files) are read as one [N, P] float32 table and columns are gathered from it; other records
    field by field. Every returned array is a copy (never a view of the file's memory map)."""

    def __init__(self, v: np.ndarray):
        self.v = v
        fields = v.dtype.fields
        flat = all(fields[k][0] == np.dtype("<f4") for k in v.dtype.names) and v.dtype.itemsize == 4 * len(fields)
        self.table = np.ascontiguousarray(v).view("<f4").reshape(len(v), -1) if flat else None
        self.index = {k: fields[k][1] // 4 for k in v.dtype.names}

    def __call__(self, *names: str) -> np.ndarray:
        """Properties ``names`` as float32 columns [N, len(names)]."""
        if self.table is not None:
            return np.ascontiguousarray(self.table[:, [self.index[k] for k in names]])  # the gather copies
        return np.stack([np.asarray(self.v[k], dtype=np.float32) for k in names], 1)


def read_gaussian_ply(path: str | Path, frame: str = "world") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a 3DGS PLY written by any 3DGS tool.

    Args:
        frame: ``"world"`` (default) converts a file written in the file frame (it carries the frame
            comment) to the world frame and reads any other as is; ``"raw"`` never converts.

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
    cols = _Columns(v)
    f_rest = cols(*rest_names) if rest_names else np.zeros((n, 0), np.float32)
    params = {
        "means": cols("x", "y", "z"),
        "f_dc": cols("f_dc_0", "f_dc_1", "f_dc_2"),
        "f_rest": np.ascontiguousarray(f_rest.reshape(n, 3, -1).transpose(0, 2, 1)),
        "opacity_logit": cols("opacity")[:, 0],
        "log_scales": cols("scale_0", "scale_1", "scale_2"),
        "quats": cols("rot_0", "rot_1", "rot_2", "rot_3"),
    }
    known = set(REQUIRED) | set(rest_names) | {"nx", "ny", "nz"}
    extra = {p: np.array(v[p]) for p in names if p not in known}
    for k, a in params.items():
        if not np.isfinite(a).all():
            raise UserError(f"{path}: property group {k} contains NaN or infinite values")
    if frame == "world" and FRAME_COMMENT in [c.strip() for c in ply.comments]:
        params = to_world_frame(params)
    return params, extra
