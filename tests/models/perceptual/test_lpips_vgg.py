import pytest
import torch

from threestudio.models.perceptual.lpips_vgg import LPIPSVGG, missing
from threestudio.utils.errors import ConfigError, MissingModelError


def _vgg(tiny_dir):
    return {"vgg_path": str(tiny_dir / "vgg16" / "vgg16-397923af.pth")}


def test_lpips_loads_standard_files_and_is_a_distance(tiny_dir):
    m = LPIPSVGG(_vgg(tiny_dir))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 24, generator=g, requires_grad=True)  # non-square, below 32 px: upsampled
    y = torch.rand(2, 3, 40, 24, generator=g)
    d = m(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    assert float(m(y, y).abs().max()) < 1e-6
    d.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_missing_vgg_file_names_file_and_fetch_command(tmp_path):
    cfg = {"vgg_path": str(tmp_path / "nowhere" / "vgg16-397923af.pth")}
    lines = missing(cfg)
    assert len(lines) == 1 and "vgg16-397923af.pth" in lines[0] and "curl" in lines[0]
    assert "download.pytorch.org/models/vgg16-397923af.pth" in lines[0]
    with pytest.raises(MissingModelError, match="LPIPS backbone"):
        LPIPSVGG(cfg)


def test_wrong_backbone_file_is_refused(tmp_path):
    bad = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision VGG-16"):
        LPIPSVGG({"vgg_path": str(bad)})


def test_matches_the_lpips_package(tiny_dir):
    """Same number as ``lpips.LPIPS(net='vgg')`` with the same backbone weights (needs torchvision)."""
    pytest.importorskip("torchvision")
    lpips = pytest.importorskip("lpips")
    ours = LPIPSVGG(_vgg(tiny_dir))
    ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # heads from the package, random trunk
    sd = torch.load(tiny_dir / "vgg16" / "vgg16-397923af.pth", map_location="cpu", weights_only=True)
    slices = [ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5]
    for sl in slices:
        for name, mod in sl.named_children():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.data.copy_(sd[f"features.{name}.weight"].float())
                mod.bias.data.copy_(sd[f"features.{name}.bias"].float())
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 64, 48, generator=g), torch.rand(3, 3, 64, 48, generator=g)
    want = ref(x, y, normalize=True).flatten()
    torch.testing.assert_close(ours(x, y), want, rtol=1e-4, atol=1e-6)


def _lpips_one_trunk_pass(m, x, y):
    """Eq. 1 with x and y through the VGG trunk in one batch (how LPIPS is usually computed)."""
    from threestudio.models.perceptual.lpips_vgg import SLICE_ENDS, _unit

    z = ((2 * torch.cat([x, y]) - 1) - m.shift) / m.scale
    d, start = 0.0, 0
    for end, lin in zip(SLICE_ENDS, m.lins, strict=True):
        z = m.features[start:end](z)
        start = end
        fx, fy = _unit(z).chunk(2)
        d = d + lin((fx - fy) ** 2).mean(dim=(2, 3))[:, 0]
    return d


def test_separate_trunk_passes_give_the_one_pass_distance_and_gradients(tiny_dir):
    """x and y run through the trunk separately (the target without autograd): the same distance and
    input gradients as one pass over cat([x, y])."""
    m = LPIPSVGG(_vgg(tiny_dir))
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 3, 48, 40, generator=g)
    y0 = (x0 + 0.1 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    for y_grad in (False, True):
        got, want = [], []
        for fn, out in ((m, got), (lambda a, b: _lpips_one_trunk_pass(m, a, b), want)):
            x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_(y_grad)
            d = fn(x, y)
            d.sum().backward()
            out += [d.detach(), x.grad, y.grad]
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-9)
        if y_grad:
            torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-9)
        else:
            assert got[2] is None and want[2] is None


def test_target_features_are_computed_without_autograd(tiny_dir):
    m = LPIPSVGG(_vgg(tiny_dir))
    img = torch.rand(1, 3, 32, 32)
    assert not any(f.requires_grad for f in m.features_of(img))  # frozen trunk, input without grad
    assert all(f.requires_grad for f in m.features_of(img.clone().requires_grad_()))


def test_bf16_trunk_stays_close_to_fp32_and_bad_precision_is_refused(tiny_dir):
    """``trunk_precision=bf16`` (autocast on the VGG trunk): the same distance within 1 % and an image
    gradient pointing the same way (cosine > 0.97) as the float32 trunk."""
    m32 = LPIPSVGG({**_vgg(tiny_dir), "trunk_precision": "fp32"})
    mbf = LPIPSVGG({**_vgg(tiny_dir), "trunk_precision": "bf16"})
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 96, 64, generator=g)
    y = (x0 + 0.1 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    out = []
    for m in (m32, mbf):
        x = x0.clone().requires_grad_(True)
        d = m(x, y)
        d.sum().backward()
        out.append((d.detach(), x.grad))
    (d32, g32), (dbf, gbf) = out
    assert dbf.dtype == torch.float32 and float(((dbf - d32).abs() / d32).max()) < 1e-2
    assert float(torch.nn.functional.cosine_similarity(g32.flatten(), gbf.flatten(), dim=0)) > 0.97
    assert not torch.equal(g32, gbf)  # the bf16 trunk did run
    with pytest.raises(ConfigError, match="trunk_precision must be auto, bf16 or fp32"):
        missing({**_vgg(tiny_dir), "trunk_precision": "fp16"})  # stage 3's preflight, before anything is written


def test_unit_normalisation_has_a_finite_gradient_at_an_all_zero_pixel():
    from threestudio.models.perceptual.lpips_vgg import _unit

    f = torch.rand(1, 4, 2, 3)
    f[0, :, 1, 2] = 0  # a pixel whose ReLU features are all zero
    f.requires_grad_(True)
    u = _unit(f)
    torch.testing.assert_close(u[0, :, 0, 0], f[0, :, 0, 0] / f[0, :, 0, 0].norm(), rtol=1e-5, atol=1e-7)
    u.sum().backward()
    assert bool(torch.isfinite(f.grad).all())  # sqrt(sum(f²)) gave NaN there
