import torch

from tests.conftest import random_model
from threestudio.models.geometry.strategy import DensifyStrategy


def make_opt(m):
    opt = torch.optim.Adam(m.param_groups(), lr=0.0, eps=1e-15)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return opt


def test_densify_clone_split_and_prune_fire():
    m = random_model(100)
    with torch.no_grad():
        m.log_scales[:50] = torch.log(torch.tensor(0.01))  # small -> clone
        m.log_scales[50:] = torch.log(torch.tensor(0.1))  # large -> split
        m.opacity_logit[:] = 3.0
        m.opacity_logit[0] = -6.0  # transparent -> pruned
    opt = make_opt(m)
    s = DensifyStrategy({"densify_steps": [5], "prune_steps": [9], "grad_threshold": 1e-4, "stats_until": 8})
    grad = torch.zeros(2, 100, 2)
    grad[:, ::2] = 1.0  # every other Gaussian has a large gradient
    radii = torch.ones(2, 100, dtype=torch.long)
    s.accumulate(4, grad, radii, 64, 64)
    info = s.step(5, m, opt)
    assert info["cloned"] == 25 and info["split"] == 25
    assert info["grown_to"] == 100 + 25 + 25  # +25 clones, 25 parents -> 50 children
    assert info["pruned"] >= 1 and m.num_points == info["points"] == info["grown_to"] - info["pruned"]
    # optimiser follows the new parameters, moments kept for old, zero for new
    for group in opt.param_groups:
        p = group["params"][0]
        assert p.shape[0] == m.num_points
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape
    st = opt.state[m.means]
    assert (st["exp_avg"][: 100 - 26].abs().sum(-1) > 0).all()
    assert (st["exp_avg"][-50:] == 0).all()
    # prune-only fires on its own step: scales above the world threshold and low opacity go
    n = m.num_points
    info2 = s.step(9, m, opt)
    assert info2["pruned"] > 0 and m.num_points == n - info2["pruned"]
    assert (m.scales.max(-1).values <= 0.015).all()


def test_unscaled_threshold():
    """The threshold is compared against the mean true NDC gradient: just below does nothing."""
    m = random_model(10)
    opt = make_opt(m)
    s = DensifyStrategy({"densify_steps": [1], "select": "gradient", "grad_threshold": 1.0, "densify_min_opacity": 0.0})
    g = torch.zeros(1, 10, 2)
    g[0, :, 0] = 0.99 / 32  # NDC gradient = pixel gradient * W/2 = 0.99
    s.accumulate(0, g, torch.ones(1, 10, dtype=torch.long), 64, 64)
    info = s.step(1, m, opt)
    assert info["cloned"] + info["split"] == 0


def test_visible_policy_densifies_every_seen_gaussian_and_caps_by_gradient():
    """``select: visible`` (the reference's effective behaviour) grows every Gaussian that was seen with
    a non-zero gradient, however small; never the unseen ones; ``max_points`` keeps the largest gradients."""
    m = random_model(10)
    opt = make_opt(m)
    s = DensifyStrategy({"densify_steps": [1], "densify_min_opacity": 0.0, "grad_threshold": 1.0})
    assert s.cfg.select == "visible"
    g = torch.zeros(1, 10, 2)
    g[0, :8, 0] = 1e-9 * torch.arange(1, 9)  # tiny true gradients (far below any 3DGS threshold)
    radii = torch.ones(1, 10, dtype=torch.long)
    radii[0, 9] = 0  # Gaussian 9 unseen
    s.accumulate(0, g, radii, 64, 64)
    info = s.step(1, m, opt)
    assert info["cloned"] + info["split"] == 8 and info["points"] >= 10
    m2 = random_model(10)
    opt2 = make_opt(m2)
    means_before = m2.means.detach().clone()
    s2 = DensifyStrategy(
        {"densify_steps": [1], "densify_min_opacity": 0.0, "max_points": 13, "percent_dense": 1e9}
    )  # every candidate is a clone
    s2.accumulate(0, g, radii, 64, 64)
    info2 = s2.step(1, m2, opt2)
    assert info2["cloned"] == 3 and info2["points"] == 13 and info2["cap"] == 13
    torch.testing.assert_close(m2.means.detach()[10:], means_before[[5, 6, 7]])  # clones of the 3 largest gradients


def test_statistics_match_the_masked_update_of_the_reference():
    """Accumulated gradient, view count and largest radius (method §2.4) equal the reference's boolean-
    indexed updates, over steps where different Gaussians are visible."""
    gen = torch.Generator().manual_seed(0)
    s = DensifyStrategy({})
    n = 50
    acc, den, rad = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for step in range(3):
        grad = torch.randn(2, n, 2, generator=gen)
        radii = torch.randint(0, 3, (2, n), generator=gen) * (torch.rand(2, n, generator=gen) > 0.4)
        s.accumulate(step, grad, radii, 64, 48)
        vis = (radii > 0).any(0)
        g = grad.sum(0) * torch.tensor([32.0, 24.0])
        acc[vis] += g.norm(dim=-1)[vis]
        den[vis] += 1
        rad[vis] = torch.maximum(rad[vis], radii.max(0).values[vis].float())
    assert (den > 0).any() and (den == 0).any()
    torch.testing.assert_close(s.grad_accum, acc, rtol=0, atol=0)
    torch.testing.assert_close(s.denom, den, rtol=0, atol=0)
    torch.testing.assert_close(s.max_radii, rad, rtol=0, atol=0)


def test_fused_adam_trains_the_gaussians_as_the_default_adam_through_a_densify_event():
    """gaussian_adam's fused kernel (chosen on CUDA; PyTorch has it on the CPU too) gives the same
    parameters as PyTorch's default Adam over steps with per-group learning rates, a position learning
    rate changed between steps, and a clone/split/prune event that edits the optimiser state."""
    from threestudio.models.geometry.strategy import gaussian_adam

    models = [random_model(60), random_model(60)]
    with torch.no_grad():
        models[0].log_scales[:30] = torch.log(torch.tensor(0.01))  # small -> cloned
        models[0].log_scales[30:] = torch.log(torch.tensor(0.1))  # large -> split
        models[0].opacity_logit[:] = 3.0
        models[0].opacity_logit[:5] = -6.0  # transparent -> pruned
    models[1].load_state_dict(models[0].state_dict())
    opts = [gaussian_adam(models[0].param_groups(), fused=False), gaussian_adam(models[1].param_groups(), fused=True)]
    assert not opts[0].defaults["fused"] and opts[1].defaults["fused"]
    policy = {"densify_steps": [3], "prune_steps": [5], "grad_threshold": 1e-4, "stats_until": 4}
    strategies = [DensifyStrategy(policy), DensifyStrategy(policy)]
    gen = torch.Generator().manual_seed(0)
    events = [[], []]
    for step in range(7):
        n = models[0].num_points
        grads = {name: torch.randn(getattr(models[0], name).shape, generator=gen) for name in models[0].param_names}
        screen = torch.rand(2, n, 2, generator=gen)
        for m, opt, s in zip(models, opts, strategies, strict=True):
            for name in m.param_names:
                getattr(m, name).grad = grads[name].clone()
            opt.param_groups[0]["lr"] = 1e-3 / (step + 1)
            s.accumulate(step, screen, torch.ones(2, n, dtype=torch.long), 64, 64)
            opt.step()
            events[m is models[1]].append(s.step(step + 1, m, opt))
    assert events[0] == events[1] and events[0][2]["grown_to"] > 60 and events[0][4]["pruned"] > 0
    for name in models[0].param_names:
        a, b = getattr(models[0], name), getattr(models[1], name)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
