import numpy as np
import pytest
import torch

from threestudio.models.body.expression import ARKIT_BLENDSHAPES, ARKIT_GROUPS, ExpressionBasis, arkit_group
from threestudio.models.body.template import BodyTemplate
from threestudio.utils.errors import UserError


def test_sparse_basis_round_trips_exactly():
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(4, 30, 3, generator=gen) * (torch.rand(4, 30, 1, generator=gen) > 0.7)
    b = ExpressionBasis.from_dense(["a", "b", "c", "d"], "smplx", dense)
    assert torch.equal(b.dense(30), dense)
    assert len(b.index) == int((dense != 0).any(-1).sum())  # only the moved vertices are stored
    idx, off = b.blendshape("c")
    assert torch.equal(off, dense[2, idx]) and (dense[2].abs().sum(-1)[idx] > 0).all()
    with pytest.raises(KeyError, match="no blendshape"):
        b.blendshape("jawOpen")
    with pytest.raises(ValueError, match="kind"):
        ExpressionBasis(["a"], "flame", b.ptr[:2], b.index[: b.ptr[1]], b.offsets[: b.ptr[1]])


def test_anny_template_has_the_52_arkit_blendshapes(template):
    e = template.expressions
    assert e.kind == "arkit" and e.names == list(ARKIT_BLENDSHAPES) and len(e) == 52
    assert {arkit_group(n) for n in e.names} == set(ARKIT_GROUPS)
    assert len(e.index) < 0.1 * 52 * template.vertices.shape[0]  # compact: only the face moves
    names = template.joint_names
    assert {"eye.L", "eye.R", "finger1-1.L", "finger5-3.R"} <= set(names)
    # the person's left eye is at -x; ARKit's "Left" is the person's left
    for name, sign in (("eyeBlinkLeft", -1), ("eyeBlinkRight", 1)):
        idx, off = e.blendshape(name)
        d = off.norm(dim=-1)
        big = d > 0.5 * d.max()  # the eyelid (and a few vertices of the inner eye cavity near the midline)
        x = sign * template.vertices[idx, 0]
        assert d.max() > 0.005 and (x[big] > 0.01).float().mean() > 0.9, name
        assert (x * d).sum() / d.sum() > 0.02, name


def test_old_template_files_load_without_expressions(template, tmp_path):
    template.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        v1 = {k: z[k] for k in z.files if not k.startswith("expression_")}
    v1["format_version"] = np.asarray(1)
    np.savez(tmp_path / "v1.npz", **v1)
    old = BodyTemplate.load(tmp_path / "v1.npz")
    assert old.expressions is None and torch.equal(old.vertices, template.vertices)
    new = BodyTemplate.load(tmp_path / "t.npz")
    assert new.expressions.names == template.expressions.names
    assert torch.equal(new.expressions.offsets, template.expressions.offsets)
    v1["format_version"] = np.asarray(7)
    np.savez(tmp_path / "v7.npz", **v1)
    with pytest.raises(UserError, match="format version 1 or 2"):
        BodyTemplate.load(tmp_path / "v7.npz")


def test_export_cli_writes_the_expressions(template, tmp_path, capsys):
    from threestudio.models.body.export import main

    main(["anny", str(tmp_path / "anny.npz")])
    t = BodyTemplate.load(tmp_path / "anny.npz")
    assert len(t.expressions) == 52 and torch.equal(t.expressions.index, template.expressions.index)
    assert "52 ARKit blendshapes" in capsys.readouterr().out
