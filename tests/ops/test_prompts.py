from threestudio.ops.prompts import view_direction, view_suffix


def test_view_prompts():
    assert view_direction(90) == "front" and view_direction(-90) == "back"
    assert view_direction(10) == "right front" and view_direction(170) == "left front"
    assert view_direction(-170) == "left back" and view_direction(-10) == "right back"
    assert view_direction(450) == "front"
    s = view_suffix("front", "head", False)
    assert "overhead" not in s and "close-up" in s
    assert view_suffix("back", "body", True) == ", full body photo, back view"
    assert view_suffix("back", "body", False) == ", back view"


def test_stage2_prompt_table_method_7_3():
    """Stage-2 prompts of the 32-view ring (method §7.3), in our unmirrored frame: azimuth 0 sees the
    person's right side, ±180 their left side; front and in-between views get the bare prompt."""
    from threestudio.ops.prompts import refine_suffix
    from threestudio.ops.vcr import view_roles

    roles = view_roles(32)
    got = {r.azimuth_deg: refine_suffix(r.kind, r.azimuth_deg) for r in roles}
    table = {
        90.0: "",
        -90.0: ", back view",
        0.0: ", right view",
        -180.0: ", left view",
        45.0: ", right front view",
        135.0: ", left front view",
        -135.0: ", left back view",
        -45.0: ", right back view",
    }
    for az, suffix in table.items():
        assert got[az] == suffix, (az, got[az])
    between = [r for r in roles if r.kind == "between"]
    assert len(between) == 24 and all(got[r.azimuth_deg] == "" for r in between)
    assert refine_suffix("primary", 180.0) == ", left view"  # +180 and -180 are the same view
    import pytest

    with pytest.raises(ValueError):
        refine_suffix("other", 0.0)
