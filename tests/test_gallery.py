"""``python -m threestudio.gallery``: the pair lists, and a tiny gallery of 3 pairs on 2 Dask CPU workers
(a subprocess, as a user runs it): two avatars, a faceless portrait that fails alone, a rerun that
skips the finished avatars, the summary table and the contact sheet."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, face
from threestudio.gallery import read_pairs
from threestudio.utils.errors import UserError

FAST = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "data.n_test_views=4",
    "trainer.enable_progress_bar=false",
]
"""run.sh overrides for every avatar: a few steps instead of the tiny preset's 30 (CI time)."""


def lists(tmp_path, prompts, images):
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    (tmp_path / "i.txt").write_text("\n".join(images) + "\n")
    return tmp_path / "p.txt", tmp_path / "i.txt"


def test_pair_lists_are_checked_line_by_line(tmp_path):
    p, i = lists(tmp_path, ["# a comment", "A man", "", "A woman"], [str(face()), "", "faces/missing.png"])
    with pytest.raises(UserError, match=r"1 portrait\(s\) not found: line 2: .*faces/missing.png"):
        read_pairs(p, i, [])
    p, i = lists(tmp_path, ["A man", "A woman"], [str(face())])
    with pytest.raises(UserError, match="has 2 prompts but .* has 1 portraits"):
        read_pairs(p, i, [])
    (tmp_path / "faces").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "faces" / "x.png")
    p, i = lists(tmp_path, ["A man", "A man"], [str(face()), "faces/x.png"])  # relative to the list's folder
    a, b = read_pairs(p, i, [])
    assert b.portrait == str(tmp_path / "faces" / "x.png") and a.key != b.key
    assert read_pairs(p, i, ["--tiny"])[0].key != a.key  # other run options: another avatar
    assert read_pairs(REPO / "gallery_text_prompts.txt", REPO / "gallery_image_prompts.txt", [])  # the shipped lists


def read_summary(out):
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_gallery_of_three_pairs_on_two_cpu_workers_skips_finished_avatars_and_fails_a_faceless_pair_alone(
    tiny_dir, tmp_path
):
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(tmp_path / "blank.png")
    p, i = lists(
        tmp_path,
        ["A man in a suit", "A statue", "A woman in a red dress"],
        [str(face()), "blank.png", str(face("woman.png"))],
    )
    out = tmp_path / "gallery"
    env = dict(os.environ, PYTHON=sys.executable, GIP_TINY_DIR=str(tiny_dir))
    cmd = [sys.executable, "-m", "threestudio.gallery", "--prompts", p, "--images", i, "--tiny", "--workers", "2"]
    cmd = [str(c) for c in cmd + ["--out", out, *FAST]]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]  # 1: some pair failed
    assert "2 CPU workers" in r.stdout and len([ln for ln in r.stdout.splitlines() if ln.startswith("[")]) == 3
    rows = read_summary(out)
    assert [row["status"] for row in rows] == ["done", "failed", "done"], rows
    assert "no face found" in rows[1]["error"] and "A statue" in r.stdout
    for row in (rows[0], rows[2]):
        assert os.path.isfile(row["avatar"]) and os.path.isfile(row["turntable"]) and float(row["minutes"]) > 0
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (2 * 256, 2 * (256 + 34))
    tiles = np.asarray(sheet).astype(float)  # row by row: man, statue / woman
    assert tiles[:256, :256].std() > 5 and tiles[290:546, :256].std() > 5  # rendered front views
    assert tiles[:256, 256:].std() == 0  # the failed pair's grey "no avatar" tile
    made = {row["avatar"]: os.stat(row["avatar"]).st_mtime_ns for row in (rows[0], rows[2])}

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 finished earlier (skipped), 1 to make" in r.stdout
    assert [row["status"] for row in read_summary(out)] == ["skipped", "failed", "skipped"]
    assert {a: os.stat(a).st_mtime_ns for a in made} == made  # the finished avatars were not made again
