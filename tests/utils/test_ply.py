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
    for k in PARAM_NAMES:  # the frame change is exact on centres; rotations and SH bands to float precision
        a, b = getattr(m, k).detach().numpy(), getattr(m2, k).detach().numpy()
        if k in ("quats", "f_rest"):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(a, b, err_msg=k)
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


def test_files_are_written_upright_for_splat_viewers_and_old_files_still_load(tmp_path):
    from plyfile import PlyData

    from threestudio.utils.ply import FRAME_COMMENT, read_gaussian_ply, write_gaussian_ply

    m = random_model(100)
    params = m.numpy_params()
    write_gaussian_ply(tmp_path / "new.ply", params)
    ply = PlyData.read(str(tmp_path / "new.ply"))
    assert FRAME_COMMENT in ply.comments
    raw, _ = read_gaussian_ply(tmp_path / "new.ply", frame="raw")
    x = params["means"]
    np.testing.assert_array_equal(raw["means"], np.stack([x[:, 0], -x[:, 2], x[:, 1]], 1))  # y down, facing +z
    back, _ = read_gaussian_ply(tmp_path / "new.ply")
    np.testing.assert_array_equal(back["means"], x)
    # a file written before the frame was recorded (z up, no comment) is read as it is
    write_gaussian_ply(tmp_path / "old.ply", params, frame="raw")
    assert PlyData.read(str(tmp_path / "old.ply")).comments == []
    old, _ = read_gaussian_ply(tmp_path / "old.ply")
    for k in params:
        np.testing.assert_array_equal(old[k], params[k], err_msg=k)


def test_sh_bands_turn_with_the_frame():
    from threestudio.utils.ply import FILE_FROM_WORLD, _sh_band, rotate_sh

    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 15, 3))
    d = rng.normal(size=(32, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)

    def radiance(c, dirs):
        return sum(_sh_band(dirs, b) @ c[:, s : s + 2 * b + 1].transpose(1, 0, 2).reshape(2 * b + 1, -1)
                   for b, s in ((1, 0), (2, 3), (3, 8)))  # fmt: skip

    R = FILE_FROM_WORLD
    np.testing.assert_allclose(radiance(rotate_sh(f, R), d @ R.T), radiance(f, d), atol=1e-9)


def test_ply_with_mixed_property_types_reads_the_same_as_float32(tmp_path):
    """Other tools write doubles or bytes beside the 3DGS floats (e.g. ``red``/``green``/``blue`` as
    uchar): the field-by-field path reads them like the one-table float32 path, and the arrays it
    returns are copies, not views of the file's memory map."""
    from plyfile import PlyData, PlyElement

    from threestudio.utils.ply import read_gaussian_ply

    m = random_model(64, sh_degree=1)
    m.save_ply(tmp_path / "f4.ply")
    ref, _ = read_gaussian_ply(tmp_path / "f4.ply", frame="raw")
    v = PlyData.read(str(tmp_path / "f4.ply"))["vertex"].data
    mixed = np.empty(len(v), dtype=[(k, "<f8" if k == "opacity" else "<f4") for k in v.dtype.names] + [("red", "u1")])
    for k in v.dtype.names:
        mixed[k] = v[k]
    mixed["red"] = np.arange(64, dtype=np.uint8)
    PlyData([PlyElement.describe(mixed, "vertex")]).write(str(tmp_path / "mixed.ply"))
    got, extra = read_gaussian_ply(tmp_path / "mixed.ply", frame="raw")
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        assert got[k].dtype == np.float32 and got[k].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(extra["red"], np.arange(64))
    kept = {k: a.copy() for k, a in ref.items()}
    with open(tmp_path / "f4.ply", "r+b") as fh:  # the file changes in place under a reader's memory map
        fh.seek(-v.itemsize * len(v), 2)
        fh.write(bytes(v.itemsize * len(v)))
    assert not read_gaussian_ply(tmp_path / "f4.ply", frame="raw")[0]["opacity_logit"].any()
    for k in ref:  # what was read before is unchanged: copies, not views of the map
        np.testing.assert_array_equal(ref[k], kept[k], err_msg=k)
