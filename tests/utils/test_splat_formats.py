import subprocess

import numpy as np
import pytest

from tests.conftest import animator_on_surface, splat_transform
from threestudio.utils import splat_formats as sf
from threestudio.utils.ply import read_gaussian_ply, to_file_frame, write_gaussian_ply

FORMATS = {  # format -> (suffix, writer, reader, largest position error)
    "compressed-ply": (".compressed.ply", sf.write_compressed_ply, sf.read_compressed_ply, 2e-3),
    "splat": (".splat", sf.write_splat, sf.read_splat, 0.0),
    "spz": (".spz", sf.write_spz, sf.read_spz, 0.5 / 4096 + 1e-6),
    "glb": (".glb", sf.write_glb, sf.read_glb, 1e-6),
}


@pytest.fixture(scope="module")
def avatar(template):
    """World-frame parameters of a 3,000-Gaussian avatar on the template: grey body, red head."""
    an = animator_on_surface(template, 3000)
    p = an.model.numpy_params()
    rng = np.random.default_rng(0)
    rgb = np.full((3000, 3), 0.6) + rng.uniform(-0.1, 0.1, (3000, 3))
    rgb[p["means"][:, 2] > 0.45] = [0.9, 0.1, 0.1]
    p["f_dc"] = ((rgb - 0.5) / sf.SH_C0).astype(np.float32)
    p["opacity_logit"] = rng.uniform(-2, 4, 3000).astype(np.float32)
    p["log_scales"] = (p["log_scales"] + 0.3).astype(np.float32)
    p["quats"] = rng.normal(size=(3000, 4)).astype(np.float32)
    return p


def errors(a, b):
    qa = a["quats"] / np.linalg.norm(a["quats"], axis=1, keepdims=True)
    qb = b["quats"] / np.linalg.norm(b["quats"], axis=1, keepdims=True)

    def alpha(p):
        return 1 / (1 + np.exp(-p["opacity_logit"].astype(np.float64)))

    return {
        "position": np.abs(a["means"] - b["means"]).max(),
        "color": np.abs(sf.SH_C0 * (a["f_dc"] - b["f_dc"])).max(),
        "opacity": np.abs(alpha(a) - alpha(b)).max(),
        "log_scale": np.abs(a["log_scales"] - b["log_scales"]).max(),
        "rotation": 1 - np.abs((qa * qb).sum(1)).min(),
    }


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips(avatar, tmp_path, fmt):
    suffix, write, read, pos_err = FORMATS[fmt]
    p = to_file_frame(avatar)
    write(tmp_path / f"a{suffix}", p)
    b = read(tmp_path / f"a{suffix}")
    assert len(b["means"]) == len(p["means"])  # every Gaussian, in the same order
    e = errors(p, b)
    assert e["position"] <= pos_err and e["color"] <= 0.004 and e["opacity"] <= 0.004, e
    assert e["log_scale"] <= 1 / 32 + 1e-6 and e["rotation"] < 1e-3, e
    assert (tmp_path / f"a{suffix}").stat().st_size < 0.5 * len(p["means"]) * 62 * 4 or fmt == "glb"


def test_sh_bands_survive_the_formats_that_have_them(avatar, tmp_path):
    rng = np.random.default_rng(1)
    p = to_file_frame(avatar | {"f_rest": rng.uniform(-0.3, 0.3, (3000, 3, 3)).astype(np.float32)})
    for fmt, tol in (("compressed-ply", 0.02), ("spz", 0.005), ("glb", 1e-6)):
        suffix, write, read, _ = FORMATS[fmt]
        write(tmp_path / f"a{suffix}", p)
        assert np.abs(read(tmp_path / f"a{suffix}")["f_rest"] - p["f_rest"]).max() <= tol, fmt


@pytest.mark.parametrize("fmt", ["ply", "compressed-ply", "splat", "spz"])
def test_splat_transform_reads_our_exports(avatar, tmp_path, fmt):
    exe = splat_transform()
    p = to_file_frame(avatar)
    if fmt == "ply":
        path = tmp_path / "a.ply"
        write_gaussian_ply(path, avatar)  # the avatar file itself (world -> file frame)
    else:
        suffix, write, _, _ = FORMATS[fmt]
        path = tmp_path / f"a{suffix}"
        write(path, p)
    r = subprocess.run([exe, "-q", "-w", str(path), str(tmp_path / "back.ply")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    back, _ = read_gaussian_ply(tmp_path / "back.ply", frame="raw")
    assert len(back["means"]) == 3000
    e = errors(p, back)
    assert e["position"] <= 2e-3 and e["color"] <= 0.004 and e["opacity"] <= 0.004, e


def test_our_glb_matches_splat_transforms(avatar, tmp_path):
    """The same avatar through PlayCanvas's own KHR_gaussian_splatting writer: same frame and encodings."""
    exe = splat_transform()
    write_gaussian_ply(tmp_path / "a.ply", avatar)
    r = subprocess.run([exe, "-q", "-w", str(tmp_path / "a.ply"), str(tmp_path / "theirs.glb")], capture_output=True)
    assert r.returncode == 0, r.stderr[-2000:]
    sf.write_glb(tmp_path / "ours.glb", to_file_frame(avatar))
    ours, theirs = sf.read_glb_attributes(tmp_path / "ours.glb"), sf.read_glb_attributes(tmp_path / "theirs.glb")
    assert set(ours) == set(theirs)
    for k in ours:
        a, b = ours[k].astype(np.float64), theirs[k].astype(np.float64)
        if k.endswith("ROTATION"):  # they keep the file's unnormalised quaternions
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            assert np.abs(np.abs((a * b).sum(1)) - 1).max() < 1e-5, k
        else:
            np.testing.assert_allclose(a, b, atol=1e-5 if a.dtype != np.uint8 else 1, err_msg=k)


def silhouette(png):
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    h, w = img.shape[:2]
    img = img[: int(0.86 * h), : int(0.64 * w)]  # left of the viewer's panel, above its timeline
    fg = img.sum(-1) > 60
    red = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] < 80)
    ys, xs = np.nonzero(fg)
    return fg, red, ys, xs


def test_supersplat_viewer_shows_the_avatar_upright(avatar, tmp_path):
    """splat-transform's self-contained SuperSplat viewer page, rendered in headless Chromium: our PLY
    stands (taller than wide, the red head on top); the same Gaussians in our old z-up frame lie down."""
    import os

    pw = pytest.importorskip("playwright.sync_api")
    exe = splat_transform()
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("Debian chromium is not installed")
    write_gaussian_ply(tmp_path / "upright.ply", avatar)
    write_gaussian_ply(tmp_path / "old.ply", avatar, frame="raw")  # a file of before: z up, no frame comment
    shots = {}
    with pw.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
        )
        for name in ("upright", "old"):
            html = tmp_path / f"{name}.html"
            r = subprocess.run([exe, "-q", "-w", str(tmp_path / f"{name}.ply"), str(html)], capture_output=True)
            assert r.returncode == 0, r.stderr[-2000:]
            page = b.new_page(viewport={"width": 640, "height": 640})
            page.goto(html.as_uri(), wait_until="load", timeout=60000)
            page.wait_for_timeout(6000)
            shots[name] = page.screenshot()
            (tmp_path / f"{name}.png").write_bytes(shots[name])
            page.close()
        b.close()
    fg, red, ys, xs = silhouette(shots["upright"])
    assert fg.sum() > 500, "the avatar is drawn"
    assert np.ptp(ys) > 1.3 * np.ptp(xs), (np.ptp(ys), np.ptp(xs))
    ry, _ = np.nonzero(red)
    assert len(ry) > 20 and ry.mean() < ys.min() + 0.25 * np.ptp(ys), "the head is at the top"
    fg, _, ys, xs = silhouette(shots["old"])
    assert fg.sum() > 500 and np.ptp(ys) < np.ptp(xs), "an old z-up file lies on its back in this viewer"
