"""Compact and engine file formats for 3D Gaussians (writers and readers, NumPy only).

All functions take and return the parameter dict of :mod:`threestudio.utils.ply` (``means``, ``f_dc``,
``f_rest``, ``opacity_logit``, ``log_scales``, ``quats`` (w, x, y, z)) **in the file frame** of that
module (OpenCV/3DGS: y down, the person facing +z), the frame these formats share in practice:

* PlayCanvas **compressed PLY** (``.compressed.ply``; SuperSplat): chunks of 256 Gaussians with
  float bounds; per Gaussian 11-10-11-bit position and log-scale within the chunk bounds, a
  "largest three" 2+3x10-bit quaternion, 8-bit RGB within the chunk colour bounds and 8-bit opacity;
  higher SH bands as bytes (``(c / 8 + 0.5) * 256``). The opacity byte is kept within 1..254, so
  that readers which take its logit stay finite.
* antimatter15 **.splat**: 32 bytes per Gaussian: position and linear scale (float32 x 3 each),
  RGBA bytes (colour ``0.5 + C0 f_dc``, opacity), quaternion bytes ``(q * 128 + 128)``, w first.
  No higher SH bands.
* Niantic **.spz** version 3: a gzip stream with a 16-byte header (``NGSP``, version, count, SH
  degree, fractional bits, flags), then 24-bit fixed-point positions, opacity bytes, colour bytes
  ``(f_dc * 0.15 + 0.5) * 255``, log-scale bytes ``(s + 10) * 16``, "smallest three" 2+3x10-bit
  quaternions, SH bytes ``c * 128 + 128``. Written without coordinate conversion (the "unspecified"
  system splat-transform reads and writes), i.e. in the PLY file frame.
* **glTF 2.0 binary** (``.glb``) with ``KHR_gaussian_splatting``: a POINTS primitive with float
  ``POSITION``, ``KHR_gaussian_splatting:ROTATION`` (x, y, z, w), ``:SCALE`` (linear, exp of the
  log-scale), ``:OPACITY`` (sigmoid), ``:SH_DEGREE_l_COEF_k`` (raw SH, RGB) and a ``COLOR_0``
  fallback for point-cloud viewers. glTF is y up with the asset facing +z, so the file frame is
  turned 180° about z (as PlayCanvas's splat-transform writes it).

Why not gsplat's ``export_splats``: its compressed PLY drops Gaussians below 1/255 opacity (the count
changes) and divides by zero when a chunk's colours or scales are all equal (a fresh, uniformly grey
avatar), and its ``.splat`` writer loops in Python; there is no maintained SPZ or glTF-splat writer on
PyPI. The round trips are tested here, and against PlayCanvas's splat-transform when npm is there.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path
from threestudio.utils.ply import rotate_gaussians

SH_C0 = 0.28209479177387814
GLB_FROM_FILE = np.diag([-1.0, -1.0, 1.0])
"""File frame (y down, facing +z) -> glTF (y up, facing +z): 180° about z."""
_CHUNK = 256
_ROT_NORM = math.sqrt(2.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _logit(p):
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _unit_quats(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.float64)
    return q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)


def _write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _params(n, means, f_dc, f_rest, opacity, log_scales, quats) -> dict[str, np.ndarray]:
    return {
        "means": means.astype(np.float32).reshape(n, 3),
        "f_dc": f_dc.astype(np.float32).reshape(n, 3),
        "f_rest": f_rest.astype(np.float32),
        "opacity_logit": opacity.astype(np.float32).reshape(n),
        "log_scales": log_scales.astype(np.float32).reshape(n, 3),
        "quats": quats.astype(np.float32).reshape(n, 4),
    }


# ---------------------------------------------------------------- compressed PLY (PlayCanvas)


def _unorm(v: np.ndarray, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return np.clip(np.floor(v * t + 0.5), 0, t).astype(np.uint64)


def _norm_in(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    return np.where(span > 0, (v - lo) / np.where(span > 0, span, 1.0), 0.0)


def _largest_three(q: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternions -> 2-bit index of the largest component + 3 x 10 bits."""
    q = _unit_quats(q)
    big = np.abs(q).argmax(1)
    q = q * np.where(q[np.arange(len(q)), big] < 0, -1.0, 1.0)[:, None]
    rest = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[big]
    comps = np.take_along_axis(q, rest, 1) / _ROT_NORM + 0.5
    p = _unorm(comps, 10)
    return (big.astype(np.uint64) << 30) | (p[:, 0] << 20) | (p[:, 1] << 10) | p[:, 2]


def write_compressed_ply(path: str | Path, p: dict[str, np.ndarray]) -> None:
    """PlayCanvas compressed PLY (see the module docstring). Keeps every Gaussian, in input order."""
    n = len(p["means"])
    k = p["f_rest"].shape[1] * 3
    nc = (n + _CHUNK - 1) // _CHUNK
    pad = nc * _CHUNK - n

    def chunks(a):
        a = np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a
        return a.reshape(nc, _CHUNK, *a.shape[1:])

    def unit(a):  # per-chunk bounds and the values in [0, 1] within them
        lo, hi = a.min(1), a.max(1)
        return lo, hi, _norm_in(a, lo[:, None], hi[:, None]).reshape(-1, 3)[:n]

    def pack_111011(u):
        return (_unorm(u[:, 0], 11) << 21) | (_unorm(u[:, 1], 10) << 11) | _unorm(u[:, 2], 11)

    pos_lo, pos_hi, pos = unit(chunks(p["means"].astype(np.float64)))
    sc_lo, sc_hi, sc = unit(chunks(p["log_scales"].astype(np.float64).clip(-20, 20)))
    rgb_lo, rgb_hi, rgb = unit(chunks(0.5 + SH_C0 * p["f_dc"].astype(np.float64)))
    alpha = np.clip(_unorm(_sigmoid(p["opacity_logit"]), 8), 1, 254)  # readers take its logit: keep it finite
    color = (_unorm(rgb[:, 0], 8) << 24) | (_unorm(rgb[:, 1], 8) << 16) | (_unorm(rgb[:, 2], 8) << 8) | alpha
    # chunk rows: min xyz, max xyz, min scale, max scale, min rgb, max rgb
    chunk = np.concatenate([pos_lo, pos_hi, sc_lo, sc_hi, rgb_lo, rgb_hi], 1).astype("<f4")
    vert = np.stack([pack_111011(pos), _largest_three(p["quats"]), pack_111011(sc), color], 1).astype("<u4")
    names = [f"{m}_{a}" for m in ("min", "max") for a in "xyz"] + [
        f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"
    ]
    names += [f"{m}_{c}" for m in ("min", "max") for c in "rgb"]
    head = ["ply", "format binary_little_endian 1.0", f"element chunk {nc}"] + [f"property float {x}" for x in names]
    head += [f"element vertex {n}"] + [f"property uint packed_{x}" for x in ("position", "rotation", "scale", "color")]
    body = chunk.tobytes() + vert.tobytes()
    if k:
        f_rest = p["f_rest"].transpose(0, 2, 1).reshape(n, k)  # channel-major, as in a PLY
        head += [f"element sh {n}"] + [f"property uchar f_rest_{j}" for j in range(k)]
        body += np.clip(np.trunc((f_rest / 8 + 0.5) * 256), 0, 255).astype(np.uint8).tobytes()
    _write_bytes(path, ("\n".join(head + ["end_header"]) + "\n").encode() + body)


def read_compressed_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PlayCanvas compressed PLY (this writer's layout, 18-float chunks).

    Raises:
        UserError: not a compressed PLY.
    """
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    names = [e.name for e in ply.elements]
    if names[:2] != ["chunk", "vertex"]:
        raise UserError(f"{path} is not a PlayCanvas compressed PLY (elements {names})")
    c, v = ply["chunk"].data, ply["vertex"].data
    n = len(v)
    ci = np.arange(n) // _CHUNK

    def lerp(prefix, axis, u):
        lo = np.asarray(c[f"min_{prefix}{axis}"], np.float64)[ci]
        return lo + (np.asarray(c[f"max_{prefix}{axis}"], np.float64)[ci] - lo) * u

    def un(x, shift, bits):
        return ((x >> shift) & ((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)

    pp, pr, ps, pc = (np.asarray(v[f"packed_{x}"], np.uint64) for x in ("position", "rotation", "scale", "color"))
    means = np.stack([lerp("", a, un(pp, s, b)) for a, s, b in (("x", 21, 11), ("y", 11, 10), ("z", 0, 11))], 1)
    scales = np.stack([lerp("scale_", a, un(ps, s, b)) for a, s, b in (("x", 21, 11), ("y", 11, 10), ("z", 0, 11))], 1)
    rgb = np.stack([lerp("", a, un(pc, s, 8)) for a, s in (("r", 24), ("g", 16), ("b", 8))], 1)
    abc = np.stack([(un(pr, s, 10) - 0.5) * _ROT_NORM for s in (20, 10, 0)], 1)
    big = (pr >> 30).astype(np.int64)
    q = np.zeros((n, 4))
    rest = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[big]
    np.put_along_axis(q, rest, abc, 1)
    q[np.arange(n), big] = np.sqrt(np.clip(1 - (abc**2).sum(1), 0, None))
    f_rest = np.zeros((n, 0, 3))
    if "sh" in names:
        sh = ply["sh"].data
        k = len(sh.dtype.names)
        raw = np.stack([np.asarray(sh[f"f_rest_{j}"], np.float64) for j in range(k)], 1)
        nrm = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256))
        f_rest = ((nrm - 0.5) * 8).reshape(n, 3, k // 3).transpose(0, 2, 1)
    return _params(n, means, (rgb - 0.5) / SH_C0, f_rest, _logit(un(pc, 0, 8)), scales, q)


# ---------------------------------------------------------------- .splat (antimatter15)


def write_splat(path: str | Path, p: dict[str, np.ndarray]) -> None:
    """antimatter15 ``.splat`` (32 bytes per Gaussian, see the module docstring); SH bands beyond DC
    are dropped (the format has none)."""
    n = len(p["means"])
    rec = np.zeros(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = p["means"]
    rec["scale"] = np.exp(p["log_scales"].astype(np.float64))
    rgba = np.concatenate([0.5 + SH_C0 * p["f_dc"].astype(np.float64), _sigmoid(p["opacity_logit"])[:, None]], 1)
    rec["rgba"] = np.clip(np.round(rgba * 255), 0, 255)
    rec["rot"] = np.clip(np.round(_unit_quats(p["quats"]) * 128 + 128), 0, 255)
    _write_bytes(path, rec.tobytes())


def read_splat(path: str | Path) -> dict[str, np.ndarray]:
    """Read an antimatter15 ``.splat``.

    Raises:
        UserError: the size is not a multiple of 32 bytes.
    """
    data = Path(path).read_bytes()
    if len(data) % 32:
        raise UserError(f"{path} is not a .splat file (size {len(data)} is not a multiple of 32 bytes)")
    rec = np.frombuffer(data, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    n = len(rec)
    rgba = rec["rgba"].astype(np.float64) / 255
    q = (rec["rot"].astype(np.float64) - 128) / 128
    return _params(
        n, rec["pos"], (rgba[:, :3] - 0.5) / SH_C0, np.zeros((n, 0, 3)), _logit(rgba[:, 3]), np.log(rec["scale"]), q
    )


# ---------------------------------------------------------------- .spz (Niantic, version 3)

_SPZ_MAGIC, _SPZ_VERSION, _SPZ_FRACTION = 0x5053474E, 3, 12
_SH_DEGREE_OF = {0: 0, 3: 1, 8: 2, 15: 3}


def write_spz(path: str | Path, p: dict[str, np.ndarray]) -> None:
    """Niantic ``.spz`` version 3 (see the module docstring), positions at 1/4096 resolution."""
    n = len(p["means"])
    K = p["f_rest"].shape[1]
    if K not in _SH_DEGREE_OF:
        raise UserError(f"cannot write {K} SH coefficients per channel to .spz (0, 3, 8 or 15)")
    fixed = np.round(p["means"].astype(np.float64) * (1 << _SPZ_FRACTION)).astype(np.int64)
    if np.abs(fixed).max(initial=0) >= 1 << 23:
        raise UserError(f"positions beyond ±{(1 << 23) >> _SPZ_FRACTION} units do not fit a .spz")
    pos = (fixed & 0xFFFFFF).astype(np.uint32)
    pos = np.stack([(pos >> s) & 0xFF for s in (0, 8, 16)], -1).astype(np.uint8).reshape(n, 9)
    alpha = np.clip(np.round(_sigmoid(p["opacity_logit"]) * 255), 0, 255).astype(np.uint8)
    color = np.clip(np.round((p["f_dc"].astype(np.float64) * 0.15 + 0.5) * 255), 0, 255).astype(np.uint8)
    scale = np.clip(np.round((p["log_scales"].astype(np.float64) + 10) * 16), 0, 255).astype(np.uint8)
    q = _unit_quats(p["quats"])[:, [1, 2, 3, 0]]  # x, y, z, w
    big = np.abs(q).argmax(1)
    q = q * np.where(q[np.arange(n), big] < 0, -1.0, 1.0)[:, None]
    packed = big.astype(np.uint32)
    for j in range(4):  # the components other than the largest, x first, 9-bit magnitude + sign each
        mag = np.clip(np.round(np.abs(q[:, j]) / math.sqrt(0.5) * 511), 0, 511).astype(np.uint32)
        word = (mag | (np.where(q[:, j] < 0, 1, 0).astype(np.uint32) << 9)).astype(np.uint32)
        packed = np.where(big == j, packed, (packed << 10) | word)
    sh = np.clip(np.round(p["f_rest"].astype(np.float64) * 128 + 128), 0, 255).astype(np.uint8).reshape(n, -1)
    header = struct.pack("<IIIBBBB", _SPZ_MAGIC, _SPZ_VERSION, n, _SH_DEGREE_OF[K], _SPZ_FRACTION, 0, 0)
    body = b"".join(a.tobytes() for a in (pos, alpha, color, scale, packed.astype("<u4"), sh))
    _write_bytes(path, gzip.compress(header + body, mtime=0))


def read_spz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``.spz`` of version 2 or 3.

    Raises:
        UserError: not gzip, wrong magic or an unsupported version.
    """
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except OSError as e:
        raise UserError(f"{path} is not a .spz file (not a gzip stream: {e})") from None
    magic, version, n, deg, frac, _, _ = struct.unpack_from("<IIIBBBB", data)
    if magic != _SPZ_MAGIC or version not in (2, 3):
        raise UserError(f"{path} is not a .spz file of version 2 or 3")
    K = {0: 0, 1: 3, 2: 8, 3: 15}[deg]
    o = 16

    def take(size):
        nonlocal o
        a = np.frombuffer(data, np.uint8, size, o)
        o += size
        return a

    raw = take(9 * n).reshape(n, 3, 3).astype(np.int64)
    fixed = raw[..., 0] | (raw[..., 1] << 8) | (raw[..., 2] << 16)
    means = np.where(fixed & 0x800000, fixed - (1 << 24), fixed) / float(1 << frac)
    alpha = take(n).astype(np.float64) / 255
    color = (take(3 * n).reshape(n, 3).astype(np.float64) / 255 - 0.5) / 0.15
    scale = take(3 * n).reshape(n, 3).astype(np.float64) / 16 - 10
    if version == 2:
        xyz = take(3 * n).reshape(n, 3).astype(np.float64) / 127.5 - 1
        q = np.concatenate([np.sqrt(np.clip(1 - (xyz**2).sum(1), 0, None))[:, None], xyz], 1)
    else:
        packed = take(4 * n).view("<u4").astype(np.int64)
        big = packed >> 30
        qx = np.zeros((n, 4))
        for j in (3, 2, 1, 0):
            mag = (packed & 511) / 511 * math.sqrt(0.5)
            val = np.where((packed >> 9) & 1, -mag, mag)
            qx[:, j] = np.where(big == j, qx[:, j], val)
            packed = np.where(big == j, packed, packed >> 10)
        qx[np.arange(n), big] = np.sqrt(np.clip(1 - (qx**2).sum(1), 0, None))
        q = qx[:, [3, 0, 1, 2]]
    sh = (take(K * 3 * n).reshape(n, K, 3).astype(np.float64) - 128) / 128
    return _params(n, means, color, sh, _logit(alpha), scale, q)


# ---------------------------------------------------------------- glTF (KHR_gaussian_splatting)

_FLOAT, _UBYTE = 5126, 5121


def write_glb(path: str | Path, p: dict[str, np.ndarray]) -> None:
    """glTF 2.0 binary with ``KHR_gaussian_splatting`` (see the module docstring)."""
    g = rotate_gaussians(p, GLB_FROM_FILE)
    n = len(g["means"])
    q = _unit_quats(g["quats"])[:, [1, 2, 3, 0]]  # x, y, z, w
    rgb = 0.5 + SH_C0 * g["f_dc"].astype(np.float64)
    alpha = _sigmoid(g["opacity_logit"])
    color = np.clip(np.round(np.concatenate([rgb, alpha[:, None]], 1) * 255), 0, 255).astype(np.uint8)
    attrs = [
        ("POSITION", g["means"].astype("<f4"), "VEC3", _FLOAT),
        ("COLOR_0", color, "VEC4", _UBYTE),
        ("KHR_gaussian_splatting:ROTATION", q.astype("<f4"), "VEC4", _FLOAT),
        ("KHR_gaussian_splatting:SCALE", np.exp(g["log_scales"].astype(np.float64)).astype("<f4"), "VEC3", _FLOAT),
        ("KHR_gaussian_splatting:OPACITY", alpha.astype("<f4"), "SCALAR", _FLOAT),
        ("KHR_gaussian_splatting:SH_DEGREE_0_COEF_0", g["f_dc"].astype("<f4"), "VEC3", _FLOAT),
    ]
    start = 0
    for degree in (1, 2, 3):
        for c in range(2 * degree + 1):
            if start + c < g["f_rest"].shape[1]:
                name = f"KHR_gaussian_splatting:SH_DEGREE_{degree}_COEF_{c}"
                attrs.append((name, g["f_rest"][:, start + c].astype("<f4"), "VEC3", _FLOAT))
        start += 2 * degree + 1
    blob, views, accessors, attributes = b"", [], [], {}
    for i, (name, a, kind, comp) in enumerate(attrs):
        data = np.ascontiguousarray(a).tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": 34962})
        acc = {"bufferView": i, "componentType": comp, "count": n, "type": kind}
        if comp == _UBYTE:
            acc["normalized"] = True
        if name == "POSITION":
            acc["min"] = [float(x) for x in a.min(0)] if n else [0.0] * 3
            acc["max"] = [float(x) for x in a.max(0)] if n else [0.0] * 3
        accessors.append(acc)
        attributes[name] = i
        blob += data + b"\0" * (-len(data) % 4)
    ext = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "sortingMethod": "cameraDistance",
           "projection": "perspective"}  # fmt: skip
    gltf = {
        "asset": {"version": "2.0", "generator": "GaussianIP framework"},
        "extensionsUsed": ["KHR_gaussian_splatting"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [
            {"primitives": [{"attributes": attributes, "mode": 0, "extensions": {"KHR_gaussian_splatting": ext}}]}
        ],
        "buffers": [{"byteLength": len(blob)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    out = struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(js), 0x4E4F534A) + js
    out += struct.pack("<II", len(blob), 0x004E4942) + blob
    _write_bytes(path, out)


def read_glb_attributes(path: str | Path) -> dict[str, np.ndarray]:
    """The attributes of the first primitive of a ``.glb``, by name, as arrays [count, components].

    Raises:
        UserError: not a glTF binary with an embedded buffer.
    """
    data = Path(path).read_bytes()
    if len(data) < 20 or struct.unpack_from("<I", data)[0] != 0x46546C67:
        raise UserError(f"{path} is not a glTF binary (.glb)")
    jlen = struct.unpack_from("<I", data, 12)[0]
    gltf = json.loads(data[20 : 20 + jlen])
    blob = data[20 + jlen + 8 :]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
    out = {}
    for name, i in gltf["meshes"][0]["primitives"][0]["attributes"].items():
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        dtype = {_FLOAT: "<f4", _UBYTE: "u1"}[acc["componentType"]]
        w = width[acc["type"]]
        a = np.frombuffer(blob, dtype, acc["count"] * w, view.get("byteOffset", 0) + acc.get("byteOffset", 0))
        out[name] = a.reshape(acc["count"], w)
    return out


def read_glb(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``KHR_gaussian_splatting`` ``.glb`` back into the file frame."""
    a = read_glb_attributes(path)
    n = len(a["POSITION"])
    rest = []
    for degree in (1, 2, 3):
        names = [f"KHR_gaussian_splatting:SH_DEGREE_{degree}_COEF_{c}" for c in range(2 * degree + 1)]
        if all(k in a for k in names):
            rest += [a[k] for k in names]
    f_rest = np.stack(rest, 1) if rest else np.zeros((n, 0, 3))
    q = a["KHR_gaussian_splatting:ROTATION"][:, [3, 0, 1, 2]]
    g = _params(
        n,
        a["POSITION"],
        a["KHR_gaussian_splatting:SH_DEGREE_0_COEF_0"],
        f_rest,
        _logit(a["KHR_gaussian_splatting:OPACITY"][:, 0]),
        np.log(a["KHR_gaussian_splatting:SCALE"].astype(np.float64)),
        q,
    )
    return rotate_gaussians(g, GLB_FROM_FILE.T)
