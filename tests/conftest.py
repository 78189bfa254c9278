"""Shared fixtures and helpers. The tests mirror the package (``tests/ops/test_sds.py`` tests
``threestudio/ops/sds.py``, ...); ``test_launch.py``, ``test_run_sh.py`` and ``animation/test_cli.py``
test the command-line programs. Everything they need ships in the repository (sample portraits, the
procedural demo motion, tiny random models built by ``threestudio.tiny``); the captured AMASS motion of
``../shared`` is used in addition when it is there, never required."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from jaxtyping import install_import_hook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import tests.typecheck  # noqa: E402, F401  (the checker the hook below names)

install_import_hook("threestudio", "tests.typecheck.typechecker")
"""Every annotation in ``threestudio`` (jaxtyping shapes included) is checked at run time in the tests."""
ASSETS = REPO / "threestudio" / "assets"
DEMO_MOTION = ASSETS / "motions" / "demo_wave.npz"
"""Procedural motion shipped with the repository (``threestudio/animation/demo_motion.py``)."""
DEMO_FACE = ASSETS / "expressions" / "demo_face.csv"
"""Procedural Live Link Face CSV shipped with the repository (``threestudio/animation/demo_expression.py``)."""
AMASS_MOTION = REPO.parent / "shared" / "data" / "motions" / "amass_test_17.npz"
"""A captured AMASS motion, used when present (AMASS's licence forbids shipping it)."""
PROMPT = "A man wearing a green t-shirt"

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one intra-op thread per test worker: no oversubscribed cores
    torch.set_num_threads(1)


def face(name: str = "man.png") -> Path:
    """A sample portrait shipped in ``threestudio/assets/faces``."""
    return ASSETS / "faces" / name


def motions() -> list:
    """``pytest.param`` of the demo motion and, when present, the AMASS one."""
    amass = pytest.mark.skipif(not AMASS_MOTION.is_file(), reason="../shared AMASS motion not present")
    return [pytest.param(DEMO_MOTION, id="demo"), pytest.param(AMASS_MOTION, id="amass", marks=amass)]


@pytest.fixture(scope="session")
def tiny_dir():
    """Tiny random models in the real formats (built once per machine, reused)."""
    from threestudio.tiny import ensure

    return ensure()


@pytest.fixture(scope="session")
def template():
    from threestudio.models.body.anny_body import AnnyBody

    return AnnyBody({}).template()


@pytest.fixture(scope="session")
def smplx_template(template, tmp_path_factory):
    """The SMPL-X template of a synthetic SMPL-X file (``threestudio/models/body/synthetic_smplx.py``)."""
    from threestudio.models.body.smplx_body import SMPLXBody
    from threestudio.models.body.synthetic_smplx import write_synthetic_smplx

    root = tmp_path_factory.mktemp("smplx")
    write_synthetic_smplx(root, template)
    return SMPLXBody({"model_path": str(root), "use_cache": False}).template()


def tiny_guidance_cfg(tiny: Path, **kw) -> dict:
    """Guidance config on the tiny models (Haar face detector, 32² SDS)."""
    cfg = {
        "pretrained_model_name_or_path": str(tiny / "rv"),
        "vae_name_or_path": str(tiny / "vae"),
        "controlnet_name_or_path": str(tiny / "controlnet"),
        "ip_adapter_name_or_path": str(tiny / "ip-adapter"),
        "image_encoder_name_or_path": str(tiny / "image_encoder"),
        "sds_resolution": 32,
        "n_steps": 20,
        "face": {"detector": "haar", "model_name": "tiny_l", "root": str(tiny / "insightface")},
    }
    cfg.update(kw)
    return cfg


def stage2_ring(g):
    """Stage 2's refiner on a loaded guidance ``g`` and a fixed random 8-view ring at 32² (the identity
    of ``face()``, the image encoder freed as the refine system does; stage 2's IP-Adapter scales).
    Returns ``(refiner, (rgb, pose, text_cond, text_uncond))``: ``refiner.refine(*inputs)`` refines it."""
    from threestudio.models.guidance.vcr import VCRRefiner

    n, gen = 8, torch.Generator().manual_seed(0)
    rgb, pose = torch.rand(n, 32, 32, 3, generator=gen), torch.rand(n, 32, 32, 3, generator=gen)
    tc, tu = torch.randn(n, 77, 64, generator=gen), torch.randn(n, 77, 64, generator=gen)
    g.prepare_identity(str(face()))
    g.free_image_encoder()
    return VCRRefiner(g, ip_adapter_scale=0.6, ip_adapter_shortcut_scale=0.5), (rgb, pose, tc, tu)


def tiny_stage1_args(root: Path, steps: int = 4, **extra) -> list[str]:
    """``launch.py`` arguments of a tiny stage-1 run into ``root``."""
    a = [
        "--config",
        REPO / "configs/ahds.yaml",
        "--config",
        REPO / "configs/tiny/ahds.yaml",
        "--train",
        f"system.prompt_processor.prompt={PROMPT}",
        f"system.face_image={face()}",
        f"exp_root_dir={root}",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2",
        "checkpoint.every_n_train_steps=2",
        "data.n_test_views=4",
        "trainer.enable_progress_bar=false",
    ]
    return [str(x) for x in a + [f"{k}={v}" for k, v in extra.items()]]


def trials(root: Path) -> list[Path]:
    """Trial directories ``launch.py`` made under ``root`` (default experiment name)."""
    return sorted(Path(root).glob("gaussianip/*@*"))


class Payload:
    """Unpickling this runs code (writes ``marker``): the test that a loader never unpickles."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def planted_array(marker) -> np.ndarray:
    """An object array holding a :class:`Payload`: ``np.save`` pickles it."""
    a = np.empty(1, dtype=object)
    a[0] = Payload(marker)
    return a


SLOW_FIRST = (
    "test_readme_main_job",
    "test_gallery",
    "test_two_process",
    "test_web_viewer",
    "test_tier_batching",
    "test_reconstruction_lowers",
    "test_two_processes",
)
"""The longest tests start first, so that the two test workers finish together."""


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda it: next((i for i, s in enumerate(SLOW_FIRST) if s in it.nodeid), len(SLOW_FIRST)))
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for it in items:
            if "gpu" in it.keywords:
                it.add_marker(skip)


def splat_transform() -> str:
    """PlayCanvas's splat-transform CLI (installed from npm by ``tests/run.sh``), or skip the test."""
    default = Path(os.environ.get("GIP_CACHE_DIR", Path.home() / ".cache/gaussianip")) / "npm/node_modules/.bin"
    exe = os.environ.get("SPLAT_TRANSFORM") or str(default / "splat-transform")
    if not os.access(exe, os.X_OK):
        pytest.skip("splat-transform is not installed (tests/run.sh installs it when npm is present)")
    return exe


def random_model(n: int = 300, seed: int = 0, sh_degree: int = 0):
    """A :class:`GaussianModel` of ``n`` random Gaussians around the origin."""
    from threestudio.models.geometry.gaussian_model import GaussianModel

    gen = torch.Generator().manual_seed(seed)
    m = GaussianModel({"num_points": n, "sh_degree": sh_degree})
    m.set_params(
        {
            "means": torch.randn(n, 3, generator=gen) * 0.3,
            "f_dc": torch.randn(n, 3, generator=gen),
            "f_rest": torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen),
            "opacity_logit": torch.randn(n, generator=gen),
            "log_scales": torch.randn(n, 3, generator=gen) * 0.3 - 3.0,
            "quats": torch.randn(n, 4, generator=gen),
        }
    )
    return m


def animator_on_surface(template, n: int = 3000):
    """A :class:`GaussianAnimator` of ``n`` Gaussians exactly on ``template``'s surface."""
    from threestudio.animation.animator import GaussianAnimator
    from threestudio.models.body.template import sample_surface
    from threestudio.models.geometry.gaussian_model import GaussianModel

    pts, _, _ = sample_surface(template, n, seed=3)
    m = GaussianModel({"num_points": n}).init_from_template(template)
    with torch.no_grad():
        m.means.copy_(pts)
    return GaussianAnimator(m, template)
