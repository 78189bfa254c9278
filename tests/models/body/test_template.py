import numpy as np
import pytest
import torch

from tests.conftest import planted_array
from threestudio.models.body.template import BodyTemplate
from threestudio.utils.errors import UserError


def test_template_file_round_trip(template, tmp_path):
    template.save(tmp_path / "t.npz")
    t2 = BodyTemplate.load(tmp_path / "t.npz")
    assert t2.joint_names == template.joint_names
    for k in ("vertices", "faces", "skin_weights", "keypoints", "joint_frames"):
        assert torch.equal(getattr(t2, k), getattr(template, k))


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
