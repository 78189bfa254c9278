"""Atomic file writing, images and video."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from threestudio.utils.errors import UserError


def cache_root() -> Path:
    """``$GIP_CACHE_DIR`` or ``~/.cache/gaussianip`` (body templates, text embeddings, compiled kernels)."""
    return Path(os.environ.get("GIP_CACHE_DIR", Path.home() / ".cache" / "gaussianip"))


def persist_compile_cache() -> Path:
    """Point inductor's on-disk cache (compiled Triton kernels, FX and AOTAutograd graphs) at
    ``$GIP_CACHE_DIR/inductor`` unless ``$TORCHINDUCTOR_CACHE_DIR`` is set, so that ``torch.compile``
    work survives reboots (PyTorch's default is a folder under /tmp). Call it before anything imports
    inductor: PyTorch writes its default into that variable on first use. Returns the folder."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on
    POSIX), on error it is removed, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def to_uint8(img) -> np.ndarray:
    """[H, W, C] image -> uint8 array: floats in [0, 1] (tensor or array; values outside are clipped)
    are rounded to the nearest of 0..255; uint8 input (e.g. from :func:`quantize_uint8`) is returned as
    it is (as an array)."""
    if hasattr(img, "detach"):
        if str(img.dtype) == "torch.uint8":
            return img.detach().cpu().numpy()
        img = img.detach().float().cpu().numpy()
    elif isinstance(img, np.ndarray) and img.dtype == np.uint8:
        return img
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def quantize_uint8(img):
    """:func:`to_uint8` on the tensor's own device, as a uint8 tensor of the same shape: the same
    formula (clip to [0, 1], times 255, plus 0.5, truncated), so the same bytes, with a quarter of the
    float image's copy to the host and no conversion on the CPU afterwards (validation grids, turntable
    frames)."""
    import torch

    return (img.detach().float().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def save_image(path: str | Path, img) -> None:
    """Write a [H, W, 3] float image in [0, 1] (or uint8) as PNG, atomically. zlib level 1: the same
    lossless pixels as the default level 6, a third less time to encode (1024² renders), a few
    percent larger files."""
    import imageio.v3 as iio

    arr = to_uint8(img)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png", compress_level=1)


class BackgroundWriter:
    """Runs file writes (PNG/video encoding) on worker threads so that the caller does not wait for
    them: one thread (the default) keeps submission order; ``workers`` > 1 writes independent files
    concurrently (PNG and video encoders release the GIL while they compress). :meth:`wait` blocks
    until every submitted write is done and re-raises the first error; the writes themselves stay
    atomic (:func:`atomic_path`)."""

    def __init__(self, workers: int = 1):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="gip-writer")
        self._pending: list = []

    def submit(self, fn, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)``; the arguments must not be changed by the caller afterwards."""
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def submit_detached(self, fn, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)`` as :meth:`submit` does, but leave it out of :meth:`wait`: the
        caller waits for the returned ``concurrent.futures.Future`` itself (e.g. through
        :func:`after_launches`)."""
        return self._pool.submit(fn, *args, **kwargs)

    def wait(self) -> None:
        """Block until all queued writes are finished, then raise the first one's error, if any."""
        from concurrent.futures import wait

        pending, self._pending = self._pending, []
        wait(pending)
        for f in pending:
            f.result()


_after_launches: list | None = None
"""Callables queued by :func:`after_launches` inside :func:`finishing_after_launches` (None outside)."""


@contextlib.contextmanager
def finishing_after_launches() -> Iterator[None]:
    """A block of launches (``launch.py ... --then ...``): work that a launch hands to
    :func:`after_launches` runs when the block ends, in order, even when a launch in it failed; the
    first error is raised after all of it ran (an error of the block itself takes precedence). Used by
    ``launch.main`` so that a stage's turntable video is encoded while the next stage runs."""
    global _after_launches
    outer, _after_launches = _after_launches, []
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        todo, _after_launches = _after_launches, outer
        first = None
        for fn in todo:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - every queued write gets its chance first
                first = first or e
        if first is not None and not failed:
            raise first


def after_launches(fn) -> bool:
    """Queue ``fn()`` for the end of the enclosing :func:`finishing_after_launches` block and return
    True; outside such a block, queue nothing and return False (the caller runs ``fn`` itself)."""
    if _after_launches is None:
        return False
    _after_launches.append(fn)
    return True


def save_video(path: str | Path, frames: Sequence, fps: int = 30) -> None:
    """Write frames ([H, W, 3], float [0, 1] or uint8; H, W even) as an H.264 mp4, atomically.

    Uses the ffmpeg binary shipped by ``imageio-ffmpeg``; ``yuv420p`` so common players open it.
    """
    import imageio.v2 as iio2

    frames = [to_uint8(f) for f in frames]
    if not frames:
        raise ValueError("save_video: no frames")
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:  # fall back to OpenCV's bundled encoder (MPEG-4 part 2)
        import cv2

        with atomic_path(path) as tmp:
            h, w = frames[0].shape[:2]
            vw = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            for f in frames:
                vw.write(np.ascontiguousarray(f[..., ::-1]))
            vw.release()
        return
    with atomic_path(path) as tmp:
        w = iio2.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=2,
            quality=8,
        )
        try:
            for f in frames:
                w.append_data(f)
        finally:
            w.close()


def read_first_frame(path: str | Path) -> np.ndarray:
    """The first frame of a video as a [H, W, 3] uint8 RGB array, with the decoder :func:`save_video`
    wrote it with: imageio's ffmpeg when ``imageio-ffmpeg`` is installed, else OpenCV.

    Raises:
        UserError: the file cannot be decoded.
    """
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        import cv2

        cap = cv2.VideoCapture(str(path))
        ok, frame = cap.read()
        cap.release()
        if not ok:
            raise UserError(f"{path}: cannot read a frame of this video") from None
        return np.ascontiguousarray(frame[..., ::-1])
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(str(path), format="FFMPEG")
        try:
            return np.asarray(reader.get_data(0))[..., :3]
        finally:
            reader.close()
    except (OSError, IndexError, RuntimeError) as e:
        raise UserError(f"{path}: cannot read a frame of this video ({e})") from None


def read_npz(path: str | Path, what: str, skip_pickled: bool = False, hint: str = "") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read with ``allow_pickle=False``: a file someone sent never runs
    code when loaded.

    Args:
        what: what the file should be, for the messages (e.g. ``"motion"``).
        skip_pickled: leave out object (pickled) arrays instead of refusing the file.
        hint: appended to the "cannot read" message (what was expected).

    Raises:
        UserError: the file is missing, is not an ``.npz`` (zip) archive, cannot be read, or (unless
            ``skip_pickled``) holds pickled objects.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file not found: {path}")
    suffix = f" ({hint})" if hint else ""
    if not zipfile.is_zipfile(p):
        raise UserError(f"cannot read {what} {path}: it is not an .npz archive{suffix}")
    arrays = {}
    try:
        with np.load(p, allow_pickle=False) as z:
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as e:  # an object array: pickled, never loaded
                    if not skip_pickled or "pickle" not in str(e):
                        raise
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        why = "it holds pickled objects, which are never loaded" if "pickle" in str(e) else str(e)
        raise UserError(f"cannot read {what} {path}: {why}{suffix}") from None
    return arrays
