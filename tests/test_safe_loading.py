"""Files people share never run code when loaded (DESIGN.md §9): for each loader a pickle payload is
planted; it is refused with a clear error (or skipped) and never runs."""

import numpy as np
import pytest
import torch

from threestudio.utils.errors import UserError


class Payload:
    """Unpickling this writes the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def planted_array(marker):
    a = np.empty(1, dtype=object)
    a[0] = Payload(marker)
    return a


def test_motion_npz_with_pickle_is_refused(tmp_path):
    from threestudio.animation.motion import load_motion

    marker = tmp_path / "ran"
    np.savez(tmp_path / "m.npz", poses=planted_array(marker), mocap_framerate=np.array(30.0))
    with pytest.raises(UserError, match="cannot read motion"):
        load_motion(tmp_path / "m.npz")
    assert not marker.exists()


def test_body_template_with_pickle_is_refused(tmp_path, template):
    from threestudio.models.body.template import BodyTemplate

    template.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        arrays = {k: z[k] for k in z.files}
    marker = tmp_path / "ran"
    arrays["vertices"] = planted_array(marker)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match="pickled objects"):
        BodyTemplate.load(tmp_path / "bad.npz")
    assert not marker.exists()
    assert BodyTemplate.load(tmp_path / "t.npz").vertices.shape == template.vertices.shape


def test_smplx_model_file_pickles_are_dropped(tmp_path, template):
    from threestudio.models.body.smplx_body import SMPLXBody
    from threestudio.models.body.synthetic_smplx import write_synthetic_smplx

    write_synthetic_smplx(tmp_path / "m", template)
    f = tmp_path / "m" / "smplx" / "SMPLX_NEUTRAL.npz"
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    marker = tmp_path / "ran"
    arrays["joint2num"] = planted_array(marker)  # the real files pickle name tables under this key
    np.savez(f, **arrays)
    t = SMPLXBody({"model_path": str(tmp_path / "m")}).build()
    assert t.vertices.shape[0] == arrays["v_template"].shape[0]
    assert not marker.exists()


def test_specular_network_pickle_is_refused(tmp_path):
    from tests.test_specular import one_flat_gaussian
    from threestudio.models.appearance.specular import SpecularAppearance
    from threestudio.systems.base import load_avatar

    marker = tmp_path / "ran"
    one_flat_gaussian(8).save_ply(tmp_path / "avatar.ply")
    torch.save({"config": Payload(marker)}, tmp_path / "avatar.specular.safetensors")  # a pickle in disguise
    with pytest.raises(UserError, match="not a specular network file"):
        load_avatar(tmp_path / "avatar.ply", "body-gaussian-geometry", {})
    with pytest.raises(UserError):
        SpecularAppearance.load(tmp_path / "avatar.specular.safetensors")
    # an old-format network (pickle) beside the avatar is never opened: the avatar loads diffuse-only
    (tmp_path / "avatar.specular.safetensors").unlink()
    torch.save({"config": Payload(marker)}, tmp_path / "avatar.specular.pt")
    m, app = load_avatar(tmp_path / "avatar.ply", "body-gaussian-geometry", {})
    assert app is None and m.num_points == 1
    assert not marker.exists()


def test_pickle_renamed_to_ply_is_refused(tmp_path):
    import pickle

    from threestudio.utils.ply import read_gaussian_ply

    marker = tmp_path / "ran"
    (tmp_path / "avatar.ply").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError):
        read_gaussian_ply(tmp_path / "avatar.ply")
    assert not marker.exists()
