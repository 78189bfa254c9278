"""Avatar PLY write and read time (host only; every stage writes its avatar and the next reads it).

Ours: :func:`threestudio.utils.ply.write_gaussian_ply` / :func:`read_gaussian_ply` (file frame with
the SH bands turned, one float32 table viewed as the vertex records). Naive reference, timed in the
same run: the 3DGS reference codes' writer (the same float32 table turned into one Python tuple per
Gaussian before plyfile writes it), on the same file-frame data, SH degree 3.

    python bench/ply_io.py --points 471125 823400 --out bench/results/ply_io.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit


def gaussians(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random world-frame Gaussians with the keys of ``write_gaussian_ply`` (SH degree 3)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    return {
        "means": r(n, 3),
        "f_dc": r(n, 3),
        "f_rest": r(n, 15, 3),
        "opacity_logit": r(n),
        "log_scales": r(n, 3),
        "quats": r(n, 4),
    }


def naive_write(path: Path, params: dict[str, np.ndarray]) -> None:
    """The reference codes' PLY writer: a structured array filled from a list of per-row tuples."""
    from plyfile import PlyData, PlyElement

    n = params["means"].shape[0]
    f_rest = params["f_rest"].transpose(0, 2, 1).reshape(n, -1)
    table = np.concatenate(
        [params["means"], np.zeros((n, 3), np.float32), params["f_dc"], f_rest, params["opacity_logit"][:, None],
         params["log_scales"], params["quats"]], axis=1)  # fmt: skip
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(f_rest.shape[1])] + ["opacity"]
    names += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    rows = np.empty(n, dtype=[(c, "f4") for c in names])
    rows[:] = list(map(tuple, table))
    PlyData([PlyElement.describe(rows, "vertex")]).write(str(path))


def timed(fn, repeat: int) -> float:
    """Median wall seconds of ``fn()``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    from threestudio.utils.ply import read_gaussian_ply, to_file_frame, write_gaussian_ply

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, nargs="+", default=[471_125, 823_400])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    result: dict = {"benchmark": "ply_io", "sh_degree": 3, "repeat": a.repeat}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.points:
            p, path = gaussians(n), Path(tmp) / "avatar.ply"
            ours_write = timed(lambda: write_gaussian_ply(path, p), a.repeat)  # noqa: B023
            ours_read = timed(lambda: read_gaussian_ply(path), a.repeat)  # noqa: B023
            size = path.stat().st_size
            back, _ = read_gaussian_ply(path)
            naive = timed(lambda: naive_write(path, to_file_frame(p)), 1)  # noqa: B023
            result[str(n)] = {
                "file_mb": round(size / 1e6, 1),
                "ours_write_s": round(ours_write, 3),
                "ours_read_s": round(ours_read, 3),
                "reference_write_s": round(naive, 3),
                "write_speedup": round(naive / ours_write, 1),
                "max_roundtrip_error": float(max(np.abs(back[k] - p[k]).max() for k in p)),
            }
    emit(result, a.out)


if __name__ == "__main__":
    main()
