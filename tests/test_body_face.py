import time

import numpy as np
import pytest
import torch

from tests.conftest import face
from threestudio.models.body.template import BODY_HEIGHT, BodyTemplate
from threestudio.utils.errors import UserError


def test_anny_template_frame(template):
    t = template
    assert t.source == "anny"
    assert abs(t.height - BODY_HEIGHT) < 1e-3
    assert torch.allclose(0.5 * (t.vertices.min(0).values + t.vertices.max(0).values), torch.zeros(3), atol=1e-4)
    kp = t.keypoints
    assert kp[0, 1] > kp[16, 1] and kp[0, 1] > kp[17, 1], "faces +y"
    assert kp[5, 0] < 0 < kp[2, 0], "the person's left is at -x"
    assert kp[0, 2] > kp[1, 2] > kp[8, 2] > kp[10, 2], "z up: nose > neck > hip > ankle"
    # A-pose: wrists well below the shoulders and away from the body
    assert (kp[4, 2] < kp[2, 2] - 0.2) and abs(kp[4, 0]) > abs(kp[2, 0]) + 0.15
    np.testing.assert_allclose(t.skin_weights.sum(-1), 1.0, atol=1e-5)
    assert t.skin_indices.max() < t.joints.shape[0] and t.parents[0] == -1
    # joint frames are rigid
    R = t.joint_frames[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(1, 2), torch.eye(3).expand_as(R), atol=1e-4)
    assert torch.det(R).min() > 0.99
    # faces wind outward (proper rotation, not a mirror): total signed volume is positive
    v, f = t.vertices.double(), t.faces
    vol = (v[f[:, 0]] * torch.linalg.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert vol > 0


def test_template_file_round_trip(template, tmp_path):
    template.save(tmp_path / "t.npz")
    t0 = time.time()
    t2 = BodyTemplate.load(tmp_path / "t.npz")
    assert time.time() - t0 < 2.0
    assert t2.joint_names == template.joint_names
    for k in ("vertices", "faces", "skin_weights", "keypoints", "joint_frames"):
        assert torch.equal(getattr(t2, k), getattr(template, k))


def test_smplx_without_files_is_a_clear_error(tmp_path):
    from threestudio.models.body.smplx_body import SMPLXBody

    with pytest.raises(UserError, match="SMPLX_DIR"):
        SMPLXBody({"model_path": str(tmp_path)}).template()


def test_face_identity_haar(tiny_dir):
    from threestudio.models.face.identity import FaceIdentity

    fid = FaceIdentity({"detector": "haar", "model_name": "tiny_l", "root": str(tiny_dir / "insightface")})
    a = fid(face("man.png"))
    assert a.embedding.shape == (512,) and abs(np.linalg.norm(a.embedding) - 1) < 1e-5
    assert a.crop.shape == (224, 224, 3) and a.crop.dtype == np.uint8 and a.crop.std() > 10
    b = fid(face("woman.png"))
    assert float(a.embedding @ b.embedding) < 0.9999


def test_face_errors(tiny_dir, tmp_path):
    from PIL import Image

    from threestudio.models.face.identity import FaceIdentity

    fid = FaceIdentity({"detector": "haar", "model_name": "tiny_l", "root": str(tiny_dir / "insightface")})
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(blank)
    with pytest.raises(UserError, match="no face found in .*blank.png"):
        fid(blank)
    with pytest.raises(UserError, match="not found"):
        fid(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(UserError, match="cannot read"):
        fid(bad)
    missing = FaceIdentity({"detector": "insightface", "root": str(tmp_path)})
    assert missing.missing() and "buffalo_l" in missing.missing()[0]
