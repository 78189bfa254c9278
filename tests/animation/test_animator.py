import math

import numpy as np
import pytest
import torch

from tests.conftest import AMASS_MOTION, animator_on_surface, motions
from threestudio.animation.motion import Motion, load_motion, retarget
from threestudio.models.body.template import BODY_HEIGHT
from threestudio.ops.lbs import (
    lbs_gaussians,
    surface_skinning_weights,
)


def dense_weights(t):
    return torch.zeros(t.vertices.shape[0], t.joints.shape[0]).scatter_(1, t.skin_indices, t.skin_weights)


def static_motion(body_pose, T=1):
    return Motion.from_body(torch.zeros(T, 3), body_pose.float().repeat(T, 1, 1), torch.zeros(T, 3), 30.0)


@pytest.mark.parametrize("motion", motions())
def test_skinned_gaussians_stay_on_posed_surface(template, motion):
    an = animator_on_surface(template)
    G = retarget(load_motion(motion), template)
    W = dense_weights(template)
    for f in (10, len(G) // 2, len(G) - 6):
        posed = an.pose(G[f])
        verts, _ = lbs_gaussians(
            template.vertices, torch.tensor([[1.0, 0, 0, 0]]).repeat(len(template.vertices), 1), W, G[f]
        )
        _, d = surface_skinning_weights(posed.means, verts, template.faces, W)
        assert d.mean() <= 0.01 * BODY_HEIGHT, (f, float(d.mean()))
        assert (posed.means - an.model.means).norm(dim=-1).max() > 0.05  # the body really moved


def test_left_shoulder_raises_left_arm(template):
    from threestudio.models.body.smplx_body import smplx_apose_body_pose

    pose = smplx_apose_body_pose().clone()
    pose[15] = torch.tensor([0.0, 0.0, math.pi / 4])  # left shoulder: arm up to 45° above horizontal
    G = retarget(static_motion(pose[None]), template)[0]
    W = dense_weights(template)
    v = template.vertices
    out, _ = lbs_gaussians(v, torch.tensor([[1.0, 0, 0, 0]]).repeat(len(v), 1), W, G)
    lw, rw = template.keypoints[7], template.keypoints[4]
    near_l = (v - lw).norm(dim=-1) < 0.05
    near_r = (v - rw).norm(dim=-1) < 0.05
    assert (out[near_l, 2] - v[near_l, 2]).mean() > 0.3, "left hand goes up"
    assert (out[near_l, 0] < 0).all(), "the left arm is at -x"
    assert (out[near_r] - v[near_r]).norm(dim=-1).max() < 1e-4, "right arm unchanged"
    # canonical A-pose motion = identity transforms
    G0 = retarget(static_motion(smplx_apose_body_pose()[None]), template)[0]
    np.testing.assert_allclose(G0, torch.eye(4).expand_as(G0), atol=1e-5)


def test_canonical_frame_reproduces_ply_exactly(template, tmp_path):
    from threestudio.utils.ply import read_gaussian_ply

    an = animator_on_surface(template, 500)
    an.model.save_ply(tmp_path / "in.ply")
    an.export_ply(tmp_path / "out.ply", torch.eye(4).repeat(template.joints.shape[0], 1, 1))
    a, _ = read_gaussian_ply(tmp_path / "in.ply")
    b, _ = read_gaussian_ply(tmp_path / "out.ply")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def on_vertices(template, vertices):
    """An animator whose Gaussians sit exactly on the given template vertices."""
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.models.geometry.gaussian_model import GaussianModel

    m = GaussianModel({"num_points": len(vertices)}).init_from_template(template)
    with torch.no_grad():
        m.means.copy_(template.vertices[vertices])
    return GaussianAnimator(m, template)


def one_hot(template, name):
    w = torch.zeros(len(template.expressions))
    w[template.expressions.names.index(name)] = 1.0
    return w


def rest(template):
    return torch.eye(4).repeat(template.joints.shape[0], 1, 1)


def test_neutral_face_and_rest_pose_reproduce_the_avatar_bit_exactly(template, tmp_path):
    from tests.conftest import DEMO_FACE
    from threestudio.animation.expression import read_arkit_csv
    from threestudio.animation.performance import build_performance
    from threestudio.utils.ply import read_gaussian_ply

    an = animator_on_surface(template, 800)
    assert an.num_expressions == 52 and len(an.expression["gaussians"]) > 20
    neutral = read_arkit_csv(DEMO_FACE)
    neutral.weights.zero_()
    neutral.rotations = {k: torch.zeros_like(r) for k, r in neutral.rotations.items()}
    perf = build_performance(template, None, neutral, 30.0)
    assert (perf.weights == 0).all()
    an.model.save_ply(tmp_path / "in.ply")
    an.export_ply(tmp_path / "out.ply", perf.transforms[5], perf.weights[5])
    a, _ = read_gaussian_ply(tmp_path / "in.ply")
    b, _ = read_gaussian_ply(tmp_path / "out.ply")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("body", ["anny", "smplx"])
def test_gaussian_on_a_vertex_moves_exactly_by_its_blendshape_offset(template, smplx_template, body):
    tpl = template if body == "anny" else smplx_template
    name = "jawOpen" if body == "anny" else "expr_002"
    idx, off = tpl.expressions.blendshape(name)
    pick = torch.linspace(0, len(idx) - 1, 40).long()
    an = on_vertices(tpl, idx[pick])
    posed = an.pose(rest(tpl), 2.0 * one_hot(tpl, name))
    assert torch.equal(posed.means, tpl.vertices[idx[pick]] + 2.0 * off[pick])


def test_jaw_open_moves_the_lower_face_and_nothing_below_the_neck(template):
    an = animator_on_surface(template, 30000)
    moved = an.pose(rest(template), one_hot(template, "jawOpen")).means - an.model.means
    d = moved.norm(dim=-1)
    x = an.model.means.detach()
    neck, nose = template.keypoints[1], template.keypoints[0]
    assert (d > 1e-6).sum() > 100
    assert (x[d > 1e-6, 2] > neck[2]).all(), "nothing below the neck moves"
    chin = d > 0.5 * d.max()
    assert (x[chin, 2] < nose[2]).all() and moved[chin, 2].mean() < -0.01, "the chin goes down"


def test_eye_blink_left_closes_the_persons_left_eyelid(template):
    an = animator_on_surface(template, 30000)
    moved = an.pose(rest(template), one_hot(template, "eyeBlinkLeft")).means - an.model.means
    d = moved.norm(dim=-1)
    lid = d > 0.5 * d.max()
    x = an.model.means.detach()
    assert lid.sum() >= 3 and (x[lid, 0] < 0).float().mean() > 0.8, "the person's left is at -x"
    assert moved[lid, 2].mean() < 0, "the upper lid comes down"
    right = an.pose(rest(template), one_hot(template, "eyeBlinkRight")).means - an.model.means
    assert (x[right.norm(dim=-1) > 0.5 * d.max(), 0] > 0).float().mean() > 0.8


def finger_weight(an, template, side=""):
    """Each Gaussian's total skinning weight on the finger bones (of one side, or both)."""
    fingers = [i for i, n in enumerate(template.joint_names) if n.startswith("finger") and n.endswith(side)]
    return an.weights[:, fingers].sum(-1)


def finger_gaussians(an, template, side):
    return finger_weight(an, template, f".{side}") > 0.9


def test_finger_joints_of_a_motion_bend_the_fingers(template):
    from threestudio.animation.motion import smplx_apose
    from threestudio.animation.performance import build_performance

    an = animator_on_surface(template, 20000)
    flat = smplx_apose(1)
    curled = smplx_apose(1)
    curled.pose[:, 25:40, 2] = 0.8  # every left-hand finger joint (SMPL-X 25-39)
    left, right = finger_gaussians(an, template, "L"), finger_gaussians(an, template, "R")
    assert left.sum() > 50
    a = an.pose(build_performance(template, flat).transforms[0]).means
    b = an.pose(build_performance(template, curled).transforms[0]).means
    d = (a - b).norm(dim=-1)
    assert d[left].max() > 0.03 and d[left].mean() > 0.005, "the left fingers bend"
    assert d[right].max() < 1e-5 and d[~left].max() < 0.5 * d[left].max()


@pytest.mark.skipif(not AMASS_MOTION.is_file(), reason="../shared AMASS motion not present")
def test_amass_hand_rotations_are_played(template):
    from threestudio.animation.motion import Motion

    m = load_motion(AMASS_MOTION)
    assert m.pose[:, 25:55].abs().max() > 0.1, "the AMASS file has finger rotations"
    flat = Motion(m.pose.clone(), m.trans, m.fps)
    flat.pose[:, 25:55] = 0
    an = animator_on_surface(template, 20000)
    left = finger_gaussians(an, template, "L")
    f = len(m) // 2
    d = (an.pose(retarget(m, template)[f]).means - an.pose(retarget(flat, template)[f]).means).norm(dim=-1)
    assert d[left].max() > 0.01 and d[finger_weight(an, template) == 0].max() < 1e-4


def test_exported_frames_include_the_expression(template, tmp_path):
    from threestudio.utils.ply import read_gaussian_ply

    an = animator_on_surface(template, 3000)
    an.export_ply(tmp_path / "open.ply", rest(template), one_hot(template, "jawOpen"))
    a, _ = read_gaussian_ply(tmp_path / "open.ply")
    moved = np.abs(a["means"] - an.model.means.detach().numpy()).max(1) > 1e-4
    bound = np.zeros(len(moved), bool)
    bound[an.expression["gaussians"].numpy()] = True
    assert moved.sum() > 10 and not (moved & ~bound).any()


def test_viewer_sliders_add_to_the_played_frame(template):
    from tests.conftest import DEMO_FACE
    from threestudio.animation.expression import load_expression
    from threestudio.animation.performance import build_performance
    from threestudio.animation.viewer import face_rig

    an = animator_on_surface(template, 500)
    perf = build_performance(template, None, load_expression(DEMO_FACE), 30.0)
    k = template.expressions.names.index("jawOpen")
    i = 60  # the mouth is open in the recording here
    G, W = face_rig(an, perf, i, {"weights": {}})
    assert torch.equal(G, perf.transforms[i]) and torch.equal(W, perf.weights[i])
    G, W = face_rig(an, perf, i, {"weights": {k: 0.8}})
    assert W[k] == min(1.0, float(perf.weights[i, k]) + 0.8) and W[k] <= 1
    _, W = face_rig(an, perf, 0, {"weights": {}, "jaw": 10.0})  # anny: the jaw slider opens jawOpen
    assert 0 < W[k] < 1
    G, _ = face_rig(an, perf, 0, {"weights": {}, "eye_yaw": 20.0})
    changed = [
        template.joint_names[j] for j in ((G - perf.transforms[0]).abs().flatten(1).amax(1) > 1e-6).nonzero()[:, 0]
    ]
    assert changed == ["eye.L", "eye.R"]
