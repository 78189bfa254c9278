"""Safe ``.npz`` reading shared by the motion, body-template and SMPL-X loaders."""

import numpy as np
import pytest

from tests.conftest import planted_array
from threestudio.utils.errors import UserError
from threestudio.utils.io import BackgroundWriter, persist_compile_cache, read_npz


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


def test_compile_cache_goes_under_the_project_cache_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unused")  # restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    assert persist_compile_cache() == tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert persist_compile_cache() == tmp_path / "mine"
