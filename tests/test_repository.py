"""The repository stands alone: every file the README and the gallery lists name ships in it, and the
shipped demo motion is what its generator writes."""

import re

import numpy as np

from tests.conftest import DEMO_MOTION, REPO

PATH = re.compile(r"(?<![\w./-])((?:\.\./|[\w-]+/)[\w./-]*\.(?:png|npz|yaml|py|sh|txt|md|json|toml))\b")


def test_gallery_lists_match_and_every_portrait_ships():
    texts = (REPO / "gallery_text_prompts.txt").read_text().strip().splitlines()
    images = (REPO / "gallery_image_prompts.txt").read_text().strip().splitlines()
    assert len(texts) == len(images) > 0 and all(s.strip() for s in texts)
    missing = [p for p in images if not (REPO / p.strip()).is_file()]
    assert not missing, missing


def test_every_file_the_readme_names_exists_in_the_repository():
    text = (REPO / "README.md").read_text()
    named = set(PATH.findall(text))
    assert "threestudio/assets/faces/man.png" in named  # the pattern finds the main job's portrait
    outside = sorted(p for p in named if p.startswith("../"))
    assert not outside, f"the README points outside the repository: {outside}"
    placeholders = ("<", "outputs/", "stage", "save/", "frames/", "videos/", "~", "smplx/", "models/buffalo")
    missing = sorted(p for p in named if not (REPO / p).exists() and not any(t in p for t in placeholders))
    assert not missing, missing


def test_shipped_demo_motion_is_what_the_generator_writes():
    from threestudio.animation.demo_motion import demo_motion

    want = demo_motion()
    with np.load(DEMO_MOTION, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(want)
        for k, v in want.items():
            np.testing.assert_array_equal(z[k], v, err_msg=k)
