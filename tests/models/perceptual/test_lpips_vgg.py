import pytest
import torch

from threestudio.models.perceptual.lpips_vgg import LPIPSVGG, missing
from threestudio.utils.errors import MissingModelError


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
