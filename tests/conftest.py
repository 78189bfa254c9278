import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
FACES = SHARED / "data" / "faces"


def face(name: str = "man.png") -> Path:
    p = FACES / name
    if not p.is_file():
        pytest.skip(f"test data {p} not available")
    return p


@pytest.fixture(scope="session")
def tiny_dir():
    """Tiny random models in the real formats (built once per machine, reused)."""
    from threestudio.tiny import ensure

    return ensure()


@pytest.fixture(scope="session")
def template():
    from threestudio.models.body.anny_body import AnnyBody

    return AnnyBody({}).template()


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for it in items:
            if "gpu" in it.keywords:
                it.add_marker(skip)


os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
