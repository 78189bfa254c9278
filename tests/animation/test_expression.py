import csv

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_FACE, DEMO_MOTION, planted_array
from threestudio.animation.demo_expression import LIVE_LINK_ORDER
from threestudio.animation.expression import load_expression, read_arkit_csv, template_weights
from threestudio.animation.motion import load_motion
from threestudio.animation.performance import build_performance
from threestudio.models.body.expression import ARKIT_BLENDSHAPES
from threestudio.utils.errors import UserError


def table(path=DEMO_FACE):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def write(path, header, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def test_live_link_csv_any_order_any_case(tmp_path):
    assert sorted(n.lower() for n in LIVE_LINK_ORDER) == sorted(n.lower() for n in ARKIT_BLENDSHAPES)
    e = read_arkit_csv(DEMO_FACE)
    assert e.kind == "arkit" and len(e) == 180 and e.fps == 60 and e.names == list(ARKIT_BLENDSHAPES)
    assert e.weights[:, e.names.index("jawOpen")].max() > 0.9
    assert set(e.rotations) == {"head", "left_eye", "right_eye"}
    assert (e.weights[:, [i for i, n in enumerate(e.names) if n.startswith("eyeLook")]] == 0).all()
    header, rows = table()
    order = np.random.default_rng(0).permutation(len(header))
    shuffled = [h.upper() if i % 2 else h.lower() for i, h in enumerate(np.array(header)[order])]
    e2 = read_arkit_csv(write(tmp_path / "s.csv", shuffled, [list(np.array(r)[order]) for r in rows]), fps=30)
    assert e2.fps == 30 and torch.equal(e2.weights, e.weights)
    for k in e.rotations:
        torch.testing.assert_close(e2.rotations[k], e.rotations[k])
    # head yaw turns to the person's left: the forward axis (native +z) goes to native +x
    from threestudio.ops.lbs import axis_angle_to_matrix

    i = 45  # a quarter of the 3 s period: yaw at its maximum
    fwd = axis_angle_to_matrix(e.rotations["head"][i]) @ torch.tensor([0.0, 0.0, 1.0])
    assert fwd[0] > 0.2


@pytest.mark.parametrize("case,pattern", [
    ("unknown column", "unknown columns \\['Smirk'\\]"),
    ("missing column", "lacks the columns jawOpen"),
    ("nan", "row 4, column 'JawOpen' is NaN"),
    ("weight > 1", "jawOpen = 1.5 is outside \\[0, 1\\]"),
    ("weight < 0", "is outside \\[0, 1\\]"),
    ("zero frames", "zero frames"),
    ("text", "is not a number"),
    ("empty", "is empty"),
    ("pickled npy", "pickled"),
    ("npy shape", "expected \\[T, n\\]"),
    ("poses shape", "expected \\[10, 15\\]"),
    ("suffix", "give an ARKit blendshape .csv"),
    ("missing file", "expression file not found"),
])  # fmt: skip
def test_bad_expression_files_are_one_clear_error(tmp_path, case, pattern):
    header, rows = table()
    j = header.index("JawOpen")
    path = tmp_path / "bad.csv"
    if case == "unknown column":
        write(path, header + ["Smirk"], [r + ["0"] for r in rows])
    elif case == "missing column":
        write(path, header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows])
    elif case in ("nan", "weight > 1", "weight < 0", "text"):
        rows[2][j] = {"nan": "nan", "weight > 1": "1.5", "weight < 0": "-0.2", "text": "abc"}[case]
        write(path, header, rows)
    elif case == "zero frames":
        write(path, header, [])
    elif case == "empty":
        path.write_text("")
    elif case == "pickled npy":
        path = tmp_path / "expressions.npy"
        np.save(path, planted_array(tmp_path / "ran"), allow_pickle=True)
    elif case == "npy shape":
        path = tmp_path / "expressions.npy"
        np.save(path, np.zeros(10))
    elif case == "poses shape":
        path = tmp_path / "expressions.npy"
        np.save(path, np.zeros((10, 100)))
        np.save(tmp_path / "poses.npy", np.zeros((10, 12)))
    elif case == "suffix":
        path = tmp_path / "face.txt"
        path.write_text("x")
    elif case == "missing file":
        path = tmp_path / "none.csv"
    with pytest.raises(UserError, match=pattern):
        load_expression(path)
    assert not (tmp_path / "ran").exists()


def test_animportrait3d_sequence(tmp_path, template, smplx_template):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "expressions.npy", rng.normal(0, 1, (12, 100)).astype(np.float32))
    poses = np.zeros((12, 15), np.float32)
    poses[:, 6] = 0.3  # jaw opens about x
    np.save(tmp_path / "poses.npy", poses)
    for path in (tmp_path, tmp_path / "expressions.npy"):
        e = load_expression(path)
        assert e.kind == "smplx" and len(e) == 12 and e.fps == 30 and set(e.rotations) >= {"jaw", "global"}
    w = template_weights(e, smplx_template)
    assert w.shape == (12, 100) and torch.equal(w, e.weights)
    perf = build_performance(smplx_template, None, e, 30.0)
    assert torch.allclose(perf.motion.pose[:, 22, 0], torch.tensor(0.3)), "the jaw joint turns"
    with pytest.raises(UserError, match="anny template cannot play"):
        build_performance(template, None, e, 30.0)
    with pytest.raises(UserError, match="smplx template cannot play"):
        build_performance(smplx_template, None, load_expression(DEMO_FACE), 30.0)


def test_motion_and_expression_on_one_clock(template):
    motion = load_motion(DEMO_MOTION)  # 120 frames at 30 fps = 4 s
    face = load_expression(DEMO_FACE)  # 180 frames at 60 fps = 3 s
    perf = build_performance(template, motion, face, 30.0)
    assert len(perf) == 120 and perf.weights.shape == (120, 52)
    assert torch.equal(perf.weights[100], perf.weights[89]), "the shorter one holds its last frame"
    assert torch.equal(perf.weights[10], face.weights[20])  # exact source frames at half the rate
    alone = build_performance(template, None, face, 30.0)
    assert len(alone) == 90
    # without a motion the body stays in the A-pose: only the head, neck and eyes turn
    moved = (alone.transforms - torch.eye(4)).abs().flatten(2).amax(-1).amax(0) > 1e-5
    names = [template.joint_names[j] for j in moved.nonzero()[:, 0]]
    assert "head" in names and all(n in ("head", "eye.L", "eye.R") for n in names), names


def test_amass_jaw_rotation_opens_anny_mouth(template):
    from threestudio.animation.motion import smplx_apose
    from threestudio.animation.performance import jaw_open_angle

    m = smplx_apose(3)
    m.pose[:, 22, 0] = torch.tensor([0.0, 0.5, -0.2]) * jaw_open_angle(template) * 2
    perf = build_performance(template, m, None, 30.0)
    k = template.expressions.names.index("jawOpen")
    torch.testing.assert_close(perf.weights[:, k], torch.tensor([0.0, 1.0, 0.0]))
    assert 0.2 < jaw_open_angle(template) < 0.6  # a plausible jaw (radians)
