import numpy as np
import pytest
import torch

from threestudio.ops.vcr import SDEDIT_GRID, ddim_step, sdedit_timesteps, tiers, view_roles


@pytest.mark.parametrize("n", [32, 16, 8, 40])
def test_roles_and_fusion_weights(n):
    roles = view_roles(n)
    az = {r.index: r.azimuth_deg for r in roles}
    prim = [r for r in roles if r.kind == "primary"]
    keys = [r for r in roles if r.kind == "key"]
    betw = [r for r in roles if r.kind == "between"]
    assert sorted(az[r.index] for r in prim) == [-180.0, -90.0, 0.0, 90.0]
    assert sorted(az[r.index] for r in keys) == [-135.0, -45.0, 45.0, 135.0]
    assert len(betw) == n - 8
    front, back = [r.index for r in prim if az[r.index] == 90.0][0], [r.index for r in prim if az[r.index] == -90.0][0]
    for k in keys:
        assert k.partners == ((front,) if az[k.index] > 0 else (back,))
    for b in betw:
        a, c = b.partners
        assert roles[a].kind != "between" and roles[c].kind != "between"
        d_a = (b.azimuth_deg - az[a]) % 360
        d_c = (az[c] - b.azimuth_deg) % 360
        assert abs(d_a + d_c - 45.0) < 1e-6
        np.testing.assert_allclose(b.weights, (1 - d_a / 45.0, 1 - d_c / 45.0), atol=1e-9)
    t = tiers(n)
    assert [len(x) for x in t] == [4, 4] + ([n - 8] if n > 8 else []) and sorted(sum(t, [])) == list(range(n))


def test_reference_assignment_32():
    r = view_roles(32)
    assert r[24].azimuth_deg == 90.0 and r[8].azimuth_deg == -90.0 and r[24].kind == "primary"
    assert r[20].partners == (24,) and r[28].partners == (24,) and r[4].partners == (8,) and r[12].partners == (8,)
    assert r[17].partners == (16, 20) and r[17].weights == (0.75, 0.25)
    assert r[31].partners == (28, 0) and r[31].weights == (0.25, 0.75)
    with pytest.raises(ValueError, match="multiple of 8"):
        view_roles(30)


def test_sdedit_grid_and_ddim():
    assert tuple(sdedit_timesteps()) == SDEDIT_GRID and SDEDIT_GRID[0] == 142 and SDEDIT_GRID[-1] == 0
    steps = np.diff(SDEDIT_GRID)
    assert (steps < 0).all() and set(-steps) <= {20, 21}
    # consistent DDIM: with the true noise, every step lands exactly on the clean sample's trajectory
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ac = torch.linspace(0.9999, 0.01, 1000)
    x = ac[142].sqrt() * x0 + (1 - ac[142]).sqrt() * eps
    for k, t in enumerate(SDEDIT_GRID[:-1]):
        x = ddim_step(x, eps, ac[t], ac[SDEDIT_GRID[k + 1]])
        tp = SDEDIT_GRID[k + 1]
        np.testing.assert_allclose(x, ac[tp].sqrt() * x0 + (1 - ac[tp]).sqrt() * eps, atol=1e-5)
    np.testing.assert_allclose(ddim_step(x, eps, ac[0], torch.tensor(1.0)), x0, atol=1e-4)
