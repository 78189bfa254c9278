"""``python -m threestudio.export``: every format of a tiny avatar, the rig sidecar posed with NumPy alone
(the README's example, run as written), bad input."""

import re

import numpy as np
import pytest
import torch

from tests.conftest import REPO, animator_on_surface
from threestudio.export import FORMATS, main


@pytest.fixture()
def avatar(template, tmp_path):
    an = animator_on_surface(template, 2000)
    with torch.no_grad():
        an.model.f_dc.uniform_(-1, 1)
        an.model.opacity_logit.fill_(2.0)
    an.model.save_ply(tmp_path / "avatar.ply")
    return tmp_path / "avatar.ply"


def test_every_format_is_written_with_its_size_and_round_trip_error(avatar, capsys):
    assert main([str(avatar), "--template", "anny"]) == 0
    out = capsys.readouterr().out
    sizes = {}
    for fmt, suffix in FORMATS.items():
        path = avatar.with_name("avatar" + suffix)
        assert path.is_file(), fmt
        sizes[fmt] = path.stat().st_size
        assert re.search(rf"^{fmt}\s+[\d.]+ MB\s+{re.escape(str(path))}", out, re.M), out
    assert "round trip: position" in out
    assert sizes["spz"] < sizes["compressed-ply"] < sizes["ply"] / 2 and sizes["splat"] < sizes["ply"]


def test_readme_numpy_rig_example_poses_the_avatar(avatar, template):
    """The README's NumPy-only example, run as written, raises the left arm of the avatar."""
    assert main([str(avatar), "--format", "rig", "--template", "anny"]) == 0
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# pose an exported avatar with NumPy alone.*?)```", readme, re.S).group(1)
    scope = {}
    exec(compile(code.replace("avatar.", str(avatar.with_name("avatar."))), "README", "exec"), scope)
    x, posed, rig = scope["x"], scope["x_posed"], scope["rig"]
    from threestudio.utils.ply import FILE_FROM_WORLD

    wrists = template.keypoints[[7, 4]].numpy() @ FILE_FROM_WORLD.T  # OpenPose left, right wrist
    left_hand = np.linalg.norm(x - wrists[0], axis=1) < 0.08
    right_hand = np.linalg.norm(x - wrists[1], axis=1) < 0.08
    assert left_hand.sum() > 5 and right_hand.sum() > 5
    assert (posed[left_hand, 1] - x[left_hand, 1]).mean() < -0.3, "the left hand goes up (file frame: y down)"
    np.testing.assert_allclose(posed[right_hand], x[right_hand], atol=1e-5)
    assert rig["expression_offsets"].shape == (52, len(rig["expression_gaussians"]), 3)


@pytest.mark.parametrize("args,pattern", [
    (["--format", "fbx"], "unknown export format 'fbx'"),
    (["--out", "x.glb"], "--out names one file"),
    (["--format", "glb", "--out", "{avatar}"], "is the avatar itself"),
    (["--format", "glb", "--out", "{dir}/x.ply"], "a glb export ends in .glb"),
])  # fmt: skip
def test_bad_export_input_is_one_clear_error(avatar, capsys, args, pattern):
    before = sorted(p.name for p in avatar.parent.iterdir())
    args = [a.format(avatar=avatar, dir=avatar.parent) for a in args]
    assert main([str(avatar), *args]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("error:") == 1
    assert sorted(p.name for p in avatar.parent.iterdir()) == before


def test_missing_avatar(tmp_path, capsys):
    assert main([str(tmp_path / "none.ply"), "--format", "spz"]) == 2
    assert "PLY file not found" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_rig_reader_never_unpickles_and_checks_the_format(avatar, tmp_path):
    from tests.conftest import planted_array
    from threestudio.animation.rig import read_rig
    from threestudio.utils.errors import UserError

    assert main([str(avatar), "--format", "rig", "--template", "anny"]) == 0
    rig = read_rig(avatar.with_name("avatar.rig.npz"))
    assert rig["gaussian_weights"].shape == (2000, 4) and str(rig["frame"]) == "opencv"
    marker = tmp_path / "ran"
    np.savez(tmp_path / "bad.rig.npz", **(rig | {"parents": planted_array(marker)}))
    with pytest.raises(UserError, match="pickled"):
        read_rig(tmp_path / "bad.rig.npz")
    assert not marker.exists()
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="not a gaussianip-rig file"):
        read_rig(tmp_path / "other.npz")
