import numpy as np
import pytest

from tests.conftest import Payload, random_model
from threestudio.models.geometry.gaussian_model import PARAM_NAMES, GaussianModel
from threestudio.utils.errors import UserError


def test_ply_round_trip(tmp_path):
    m = random_model(257, sh_degree=1)
    m.save_ply(tmp_path / "a.ply")
    m2 = GaussianModel({"sh_degree": 1})
    m2.load_ply(tmp_path / "a.ply")
    assert m2.num_points == 257
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(getattr(m, k).detach().numpy(), getattr(m2, k).detach().numpy())
    from plyfile import PlyData

    names = PlyData.read(str(tmp_path / "a.ply"))["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert "f_rest_8" in names and names[-4:] == ("rot_0", "rot_1", "rot_2", "rot_3")


def test_ply_rejects_non_3dgs(tmp_path):
    import trimesh

    trimesh.creation.box().export(tmp_path / "mesh.ply")
    with pytest.raises(UserError, match="not a 3DGS PLY"):
        GaussianModel({}).load_ply(tmp_path / "mesh.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(UserError):
        GaussianModel({}).load_ply(tmp_path / "junk.ply")
    with pytest.raises(UserError, match="SH degree"):
        random_model(10, sh_degree=1).save_ply(tmp_path / "sh1.ply") or GaussianModel({}).load_ply(tmp_path / "sh1.ply")


def test_pickle_renamed_to_ply_is_refused(tmp_path):
    import pickle

    from threestudio.utils.ply import read_gaussian_ply

    marker = tmp_path / "ran"
    (tmp_path / "avatar.ply").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError):
        read_gaussian_ply(tmp_path / "avatar.ply")
    assert not marker.exists()
