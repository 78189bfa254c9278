"""``utils/io``: safe ``.npz`` reading (motion, body-template and SMPL-X loaders), the background writer,
the compile-cache folder, and reading back the videos ``save_video`` writes."""

import numpy as np
import pytest

from tests.conftest import planted_array
from threestudio.utils.errors import UserError
from threestudio.utils.io import (
    BackgroundWriter,
    after_launches,
    finishing_after_launches,
    persist_compile_cache,
    quantize_uint8,
    read_npz,
    save_image,
    to_uint8,
)


def test_a_file_that_is_not_an_npz_is_named_as_such_not_as_a_pickle(tmp_path):
    (tmp_path / "m.npz").write_text("garbage")
    with pytest.raises(UserError, match=r"cannot read motion .*m\.npz: it is not an \.npz archive \(expected x\)"):
        read_npz(tmp_path / "m.npz", "motion", hint="expected x")
    with pytest.raises(UserError, match="motion file not found"):
        read_npz(tmp_path / "none.npz", "motion")


def test_pickled_arrays_are_refused_or_skipped_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    np.savez(tmp_path / "a.npz", plain=np.arange(3), obj=planted_array(marker))
    with pytest.raises(UserError, match="pickled objects, which are never loaded"):
        read_npz(tmp_path / "a.npz", "template")
    arrays = read_npz(tmp_path / "a.npz", "SMPL-X model file", skip_pickled=True)
    assert list(arrays) == ["plain"] and arrays["plain"].tolist() == [0, 1, 2]
    assert not marker.exists()


def test_images_made_uint8_on_the_device_have_the_bytes_of_the_host_conversion(tmp_path):
    import torch

    g = torch.Generator().manual_seed(0)
    # out of range, the exact rounding boundaries k / 255 +- half a step, and random values
    edges = torch.arange(256, dtype=torch.float32) / 255.0
    x = torch.cat([torch.tensor([-1.0, -1e-7, 0.0, 1.0, 1.0 + 1e-7, 2.0]), edges - 0.5 / 255, edges + 0.5 / 255])
    x = torch.cat([x, torch.rand(4000, generator=g) * 1.2 - 0.1]).reshape(-1, 2, 3)
    q = quantize_uint8(x)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    assert np.array_equal(q.numpy(), to_uint8(x))
    assert np.array_equal(to_uint8(q), q.numpy()) and np.array_equal(to_uint8(q.numpy()), q.numpy())
    # a grid of uint8 device frames is written as the same PNG as the float frames
    img = torch.rand(8, 6, 3, generator=g)
    save_image(tmp_path / "f.png", img)
    save_image(tmp_path / "q.png", quantize_uint8(img))
    assert (tmp_path / "f.png").read_bytes() == (tmp_path / "q.png").read_bytes()


def test_background_writer_keeps_order_and_reports_a_failed_write():
    w, out = BackgroundWriter(), []
    for i in range(5):
        w.submit(out.append, i)
    w.wait()
    assert out == [0, 1, 2, 3, 4]

    def full_disk():
        raise OSError("No space left on device")

    w.submit(full_disk)
    w.submit(out.append, 5)
    with pytest.raises(OSError, match="No space left"):
        w.wait()
    assert out[-1] == 5  # the writes after a failed one still ran
    w.wait()  # and the error is reported once


def test_work_left_to_the_end_of_the_launches_runs_in_order_even_after_errors():
    done = []
    assert not after_launches(lambda: done.append("outside"))  # no block: nothing queued, the caller runs it
    assert done == []

    def fail(msg):
        done.append(msg)
        raise OSError(msg)

    with pytest.raises(OSError, match="first"):  # all queued work runs, then the first error is raised
        with finishing_after_launches():
            assert after_launches(lambda: done.append("a"))
            after_launches(lambda: fail("first"))
            after_launches(lambda: fail("second"))
            after_launches(lambda: done.append("b"))
            assert done == []  # nothing before the block ends
    assert done == ["a", "first", "second", "b"]
    done.clear()
    with pytest.raises(KeyError):  # an error of the block itself wins; the queued work still ran
        with finishing_after_launches():
            after_launches(lambda: fail("queued"))
            raise KeyError("launch")
    assert done == ["queued"]
    assert not after_launches(lambda: None)  # the block is over


def test_a_detached_write_is_not_waited_for_by_the_writer():
    import threading

    w, gate, order = BackgroundWriter(), threading.Event(), []
    fut = w.submit_detached(lambda: (gate.wait(10), order.append("detached")))
    w.wait()  # returns although the detached write is still blocked
    assert not fut.done() and order == []
    gate.set()
    fut.result(timeout=10)
    assert order == ["detached"]


def test_background_writer_with_several_workers_writes_every_file_concurrently(tmp_path):
    """Stage 2's PNGs: several workers run writes at the same time (a barrier that needs 3 waiting
    threads would time out with one), every file is written, and a failure is still reported."""
    import threading

    import numpy as np

    from threestudio.utils.io import save_image

    w, barrier = BackgroundWriter(workers=3), threading.Barrier(3, timeout=20)
    img = np.full((8, 8, 3), 7, np.uint8)

    def write(i: int):
        barrier.wait()  # BrokenBarrierError unless 3 writes run at once
        save_image(tmp_path / f"v{i}.png", img)

    for i in range(6):
        w.submit(write, i)
    w.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v{i}.png" for i in range(6)]
    w.submit(save_image, tmp_path / "v0.png" / "x.png", img)  # a file where its folder should be
    with pytest.raises(OSError):
        w.wait()
    with pytest.raises(threading.BrokenBarrierError):  # and one worker cannot pass the barrier alone
        one, lone = BackgroundWriter(), threading.Barrier(2, timeout=0.5)
        one.submit(lone.wait)
        one.wait()


def test_compile_cache_goes_under_the_project_cache_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unused")  # restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    assert persist_compile_cache() == tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert persist_compile_cache() == tmp_path / "mine"


@pytest.mark.parametrize("ffmpeg", [True, False], ids=["imageio-ffmpeg", "opencv"])
def test_first_frame_of_a_saved_video_with_either_codec_stack(tmp_path, monkeypatch, ffmpeg):
    """Without imageio-ffmpeg (as on machines that lack it) save_video writes, and read_first_frame reads,
    with OpenCV; a file that is not a video is one clear error."""
    import sys

    from threestudio.utils.io import read_first_frame, save_video

    if not ffmpeg:
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    frames = [np.zeros((32, 48, 3), np.uint8) for _ in range(3)]
    frames[0][:, :24] = (250, 20, 20)  # left half red in the first frame only
    save_video(tmp_path / "v.mp4", frames, fps=10)
    first = read_first_frame(tmp_path / "v.mp4").astype(int)
    assert first.shape == (32, 48, 3)
    assert first[16, 8, 0] > 180 and first[16, 8, 1] < 80 and first[16, 40].max() < 60  # red left, black right
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(UserError, match="cannot read a frame"):
        read_first_frame(tmp_path / "bad.mp4")
