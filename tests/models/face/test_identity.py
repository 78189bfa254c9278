import numpy as np
import pytest

from tests.conftest import face
from threestudio.utils.errors import UserError


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
