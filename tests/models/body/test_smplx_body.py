import math

import numpy as np
import pytest
import torch

from tests.conftest import planted_array
from threestudio.utils.errors import UserError


def test_smplx_without_files_is_a_clear_error(tmp_path):
    from threestudio.models.body.smplx_body import SMPLXBody

    with pytest.raises(UserError, match="SMPLX_DIR"):
        SMPLXBody({"model_path": str(tmp_path)}).template()


def test_smplx_template_frame(smplx_template, template):
    t = smplx_template
    assert t.source == "smplx" and t.joints.shape == (55, 3) and t.parents[0] == -1
    assert abs(t.height - 1.5562) < 1e-3
    kp = t.keypoints
    assert kp[5, 0] < 0 < kp[2, 0], "the person's left is at -x (no mirroring)"
    assert kp[1, 2] > kp[8, 2] > kp[10, 2], "z up"
    assert kp[4, 2] < kp[2, 2] - 0.2, "A-pose: wrists below the shoulders"
    # torso vertices (skinned to pelvis/spine only) land where they are on the source body
    spine = {0, 3, 6, 9}
    W = torch.zeros(t.vertices.shape[0], 55).scatter_(1, t.skin_indices, t.skin_weights)
    torso = W[:, sorted(spine)].sum(-1) > 0.999
    a, b = t.vertices[torso], template.vertices[torso]
    assert torso.sum() > 500
    assert ((a - a.mean(0)) - (b - b.mean(0))).norm(dim=-1).mean() < 0.01


def test_smplx_direct_retarget_left_shoulder(smplx_template):
    from threestudio.animation.motion import Motion, retarget
    from threestudio.models.body.smplx_body import smplx_apose_body_pose
    from threestudio.ops.lbs import lbs_gaussians

    t = smplx_template
    pose = smplx_apose_body_pose().clone()
    G0 = retarget(Motion.from_body(torch.zeros(1, 3), pose[None].float(), torch.zeros(1, 3), 30.0), t)[0]
    np.testing.assert_allclose(G0, torch.eye(4).expand_as(G0), atol=1e-5)
    pose[15] = torch.tensor([0.0, 0.0, math.pi / 4])
    G = retarget(Motion.from_body(torch.zeros(1, 3), pose[None].float(), torch.zeros(1, 3), 30.0), t)[0]
    W = torch.zeros(t.vertices.shape[0], 55).scatter_(1, t.skin_indices, t.skin_weights)
    out, _ = lbs_gaussians(t.vertices, torch.tensor([[1.0, 0, 0, 0]]).repeat(len(t.vertices), 1), W, G)
    lw = W[:, 20] > 0.5  # left wrist vertices
    rw = W[:, 21] > 0.5
    assert (out[lw, 2] - t.vertices[lw, 2]).mean() > 0.3 and (out[lw, 0] < 0).all()
    assert (out[rw] - t.vertices[rw]).norm(dim=-1).max() < 1e-4


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


def test_smplx_template_carries_the_files_expression_directions(smplx_template, tmp_path):
    from threestudio.models.body.smplx_body import expression_count

    e = smplx_template.expressions
    assert e.kind == "smplx" and len(e) == 100 and e.names[0] == "expr_000"
    assert (expression_count(400), expression_count(20), expression_count(10)) == (100, 10, 0)
    names = smplx_template.joint_names
    assert names[22:25] == ["jaw", "left_eye", "right_eye"] and names[-1] == "right_thumb3"
    # the synthetic file's directions live on the head only
    idx = e.moved_vertices()
    assert smplx_template.vertices[idx, 2].min() > smplx_template.keypoints[1, 2] - 0.05
