import numpy as np
import pytest

from tests.conftest import planted_array
from threestudio.animation.motion import load_motion
from threestudio.utils.errors import UserError


def test_motion_npz_with_pickle_is_refused(tmp_path):
    from threestudio.animation.motion import load_motion

    marker = tmp_path / "ran"
    np.savez(tmp_path / "m.npz", poses=planted_array(marker), mocap_framerate=np.array(30.0))
    with pytest.raises(UserError, match="cannot read motion"):
        load_motion(tmp_path / "m.npz")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,pattern",
    [
        ({"trans": np.zeros((3, 3))}, "no 'poses'"),
        ({"poses": np.zeros((3, 40, 3))}, "expected 55"),
        ({"poses": np.full((3, 165), np.nan)}, "NaN"),
        ({"poses": np.zeros((0, 165))}, "zero frames"),
        ({"poses": np.zeros((3, 165)), "trans": np.zeros((2, 3))}, "'trans' has shape"),
    ],
)
def test_bad_motion_files(tmp_path, content, pattern):
    f = tmp_path / "m.npz"
    np.savez(f, **content)
    with pytest.raises(UserError, match=pattern):
        load_motion(f)


def test_motion_formats_and_resampling(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "h.npz", poses=rng.normal(0, 0.2, (20, 156)), trans=np.zeros((20, 3)), mocap_framerate=60)
    m = load_motion(tmp_path / "h.npz", fps=30)
    assert len(m) == 10 and m.body_pose.shape == (10, 21, 3) and m.fps == 30
    m2 = load_motion(tmp_path / "h.npz")
    np.testing.assert_allclose(m.body_pose[3], m2.body_pose[6], atol=1e-5)  # exact source frames
    np.savez(tmp_path / "x.npz", poses=rng.normal(0, 0.2, (4, 55, 3)))  # no trans, no rate
    assert len(load_motion(tmp_path / "x.npz")) == 4
    body = rng.normal(0, 0.2, (5, 63))
    np.savez(tmp_path / "split.npz", pose_body=body)  # no global orientation, no translation
    m3 = load_motion(tmp_path / "split.npz")
    assert len(m3) == 5 and (m3.global_orient == 0).all()
    np.testing.assert_allclose(m3.body_pose.reshape(5, 63), body, atol=1e-6)
    np.savez(tmp_path / "bad.npz", pose_body=np.zeros((5, 30)))
    with pytest.raises(UserError, match=r"expected \[5, 63\]"):
        load_motion(tmp_path / "bad.npz")
