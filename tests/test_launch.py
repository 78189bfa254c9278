"""``launch.py`` in-process (``launch.main``): a tiny stage-1 run with resume and export, bad input
(one clear error, exit 2, nothing written), unknown keys in every plugin sub-config, ``--show-config``.
The subprocess end-to-end runs of the CLIs are in ``test_run_sh.py``."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import launch
import threestudio
from tests.conftest import PROMPT, REPO, face, tiny_stage1_args, trials
from threestudio.utils.config import field_docs


def main(argv, capsys) -> tuple[int, str, str]:
    """``launch.main(argv)`` -> (exit status, stdout, stderr)."""
    rc = launch.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_stage1_smoke_resume_and_export_with_specular(tiny_dir, tmp_path, capsys, monkeypatch):
    from threestudio.models.geometry.gaussian_model import GaussianModel

    written, save_ply = [], GaussianModel.save_ply
    monkeypatch.setattr(
        GaussianModel, "save_ply", lambda self, path, *a, **k: (written.append(path), save_ply(self, path, *a, **k))
    )
    args = tiny_stage1_args(
        tmp_path, steps=4, **{"system.densify.densify_steps": "[2]", "system.densify.prune_steps": "[3]"}
    )
    args += ["--config", str(REPO / "configs/specular.yaml")]
    rc, out, err = main(args, capsys)
    assert rc == 0, err[-3000:]
    assert len(written) == 1  # the end of training writes the avatar; the test turntable does not again
    (trial,) = trials(tmp_path)
    man = json.loads((trial / "manifest.json").read_text())
    assert man["step"] == 4 and man["prompt"] == PROMPT and man["specular"] is True
    from threestudio.utils.ply import read_gaussian_ply

    params, extra = read_gaussian_ply(trial / "save/avatar.ply")
    assert params["means"].shape[0] == man["num_gaussians"] and "spec_31" in extra
    assert (trial / "save/avatar.specular.safetensors").is_file()
    assert (trial / "configs/parsed.yaml").is_file() and (trial / "ckpts/last.ckpt").is_file()
    # last.ckpt links to the newest step checkpoint (relative: the trial folder can move) instead of a copy
    assert (trial / "ckpts/last.ckpt").readlink() == Path("step4.ckpt")
    import imageio.v3 as iio

    frames = iio.imread(trial / "save/turntable.mp4")
    assert frames.shape[0] == 4 and frames.max() > 30
    assert "densify/prune" in out
    # resume: continues the same trial from step 4 to 6 with the saved Gaussians and optimiser
    ck = torch.load(trial / "ckpts/last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4 and ck["state_dict"]["geometry.means"].shape[0] == man["num_gaussians"]
    assert len(ck["optimizer_states"][0]["state"]) >= 5  # Adam moments of every non-empty attribute
    rc, _, err = main(
        ["--train", "--resume", trial, "trainer.max_steps=6", "trainer.enable_progress_bar=false"], capsys
    )
    assert rc == 0, err[-3000:]
    assert trials(tmp_path) == [trial]
    assert json.loads((trial / "manifest.json").read_text())["step"] == 6
    (trial / "save/avatar.ply").unlink()
    rc, _, err = main(["--export", "--resume", trial], capsys)
    assert rc == 0 and (trial / "save/avatar.ply").is_file(), err[-2000:]
    rc, out, err = main(["--export", "--format", "spz,glb,rig", "--resume", trial], capsys)
    assert rc == 0, err[-2000:]
    assert all((trial / "save" / f"avatar{s}").is_file() for s in (".spz", ".glb", ".rig.npz")) and "glb" in out


STAGE1 = ["--config", REPO / "configs/ahds.yaml", "--config", REPO / "configs/tiny/ahds.yaml", "--train"]
STAGE2 = ["--config", REPO / "configs/refine.yaml", "--config", REPO / "configs/tiny/refine.yaml", "--train"]
STAGE3 = ["--config", REPO / "configs/reconstruct.yaml", "--config", REPO / "configs/tiny/reconstruct.yaml", "--train"]


@pytest.mark.parametrize("case,stage,extra,pattern", [
    ("empty prompt", STAGE1, ["system.prompt_processor.prompt= "], "prompt is empty"),
    ("missing image", STAGE1, ["system.face_image=/nonexistent/face.png"], "not found"),
    ("unreadable image", STAGE1, ["system.face_image={bad}"], "cannot read"),
    ("no face", STAGE1, ["system.face_image={blank}"], "no face found in"),
    ("unknown plugin", STAGE1, ["system.renderer_type=gsplat-rendrer"], "did you mean"),
    ("geometry key", STAGE1, ["system.geometry.num_pointz=3"], "system.geometry"),
    ("renderer key", STAGE1, ["system.renderer.tile_sise=8"], "system.renderer"),
    ("densify key", STAGE1, ["system.densify.max_pointz=8"], "system.densify"),
    ("densify value", STAGE1, ["system.densify.select=everything"], "select"),
    ("face key", STAGE1, ["system.guidance.face.detektor=haar"], "system.guidance.face"),
    ("guidance key", STAGE1, ["system.guidance.guidanse_scale=3"], "system.guidance"),
    ("appearance key", STAGE1, ["system.appearance_type=asg-specular-appearance", "system.appearance.lobes=3"],
     "system.appearance"),
    ("data key", STAGE1, ["data.batch_sise=3"], "batch_sise"),
    ("uneven split", STAGE1, ["trainer.devices=3"], "data.batch_size=2 views per step cannot be split evenly over 3"),
    ("no devices", STAGE1, ["trainer.devices=0"], "must be 1 or more"),
    ("strategy", STAGE1, ["trainer.strategy=fsdp"], "choose auto or ddp"),
    ("stage 2 guidance key", STAGE2, ["system.guidance.face.rooot=x"], "system.guidance.face"),
    ("stage 2 init_from", STAGE2, [], "stage directory not found"),
    ("stage 3 lpips key", STAGE3, ["system.lpips.vgg_pth=x"], "system.lpips"),
    ("stage 3 densify key", STAGE3, ["system.densify.prune_stepz=[1]"], "system.densify"),
    ("stage 3 renderer key", STAGE3, ["system.renderer.backgrond=[1,1,1]"], "system.renderer"),
    ("stage 3 geometry key", STAGE3, ["system.geometry.lr_meanz=1"], "system.geometry"),
    ("stage 3 loss scale", STAGE3, ["system.loss_scale=0"], "loss_scale must be > 0"),
    ("stage 3 init_from", STAGE3, [], "stage directory not found"),
    ("stage 3 box multiple", [*STAGE3[:-1], "--check"], ["data.box_multiple=0"], "box_multiple must be 1 or more"),
])  # fmt: skip
def test_bad_input_is_one_clear_error_and_nothing_is_written(tiny_dir, tmp_path, capsys, case, stage, extra, pattern):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(blank)
    (tmp_path / "bad.png").write_text("garbage")
    required = (
        [f"system.prompt_processor.prompt={PROMPT}", f"system.face_image={face()}"]
        if stage is STAGE1
        else [f"system.init_from={tmp_path / 'nope'}"]
    )
    extra = [e.format(blank=blank, bad=tmp_path / "bad.png") for e in extra]
    rc, _, err = main([*stage, *required, *extra, f"exp_root_dir={tmp_path / 'out'}", "trainer.max_steps=2"], capsys)
    assert rc == 2, (case, err[-2000:])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and pattern in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing may be written on bad input"


def test_two_process_data_parallel_run_writes_one_avatar_with_agreeing_replicas_and_resumes(tiny_dir, tmp_path):
    """``trainer.devices=2`` on the CPU: Lightning starts a second ``launch.py`` (gloo); each takes one of
    the 2 views per step. One trial directory, files written once, the replicas' checksums equal at every
    densify event; a resume from a mid-run checkpoint runs on 2 processes again."""
    import os
    import subprocess
    import sys

    events = {"system.densify.densify_steps": "[3,6]", "system.densify.prune_steps": "[7]"}
    args = tiny_stage1_args(tmp_path, steps=8, **events, **{"trainer.devices": 2, "checkpoint.every_n_train_steps": 4})
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = [sys.executable, str(REPO / "launch.py")]
    r = subprocess.run(run + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Starting with 2 processes" in r.stdout + r.stderr and r.stdout.count("results in") == 1
    (trial,) = trials(tmp_path)
    man = json.loads((trial / "manifest.json").read_text())
    assert man["replicas"]["processes"] == 2 and man["step"] == 8
    checks = man["replicas"]["checks"]
    assert [c["step"] for c in checks] == [3, 6, 7]
    assert all(len(c["checksums"]) == 2 and len(set(c["checksums"])) == 1 for c in checks), checks
    from threestudio.utils.ply import read_gaussian_ply

    params, _ = read_gaussian_ply(trial / "save/avatar.ply")
    assert params["means"].shape[0] == man["num_gaussians"] == checks[-1]["points"]
    assert sorted(p.name for p in (trial / "ckpts").iterdir()) == ["last.ckpt", "step4.ckpt", "step8.ckpt"]
    assert len(list((trial / "save").glob("*.mp4"))) == 1 and not list(trial.glob("**/*.tmp*"))

    r = subprocess.run(
        run + ["--train", "--resume", str(trial / "ckpts/step4.ckpt"), "trainer.max_steps=8"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert trials(tmp_path) == [trial] and "Starting with 2 processes" in r.stdout + r.stderr
    man = json.loads((trial / "manifest.json").read_text())
    assert [c["step"] for c in man["replicas"]["checks"]] == [6, 7] and man["step"] == 8


def test_incomplete_earlier_stage_is_named(tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    base = ["--config", REPO / "configs/refine.yaml", "--train", f"exp_root_dir={tmp_path / 'out'}"]
    rc, _, err = main([*base, f"system.init_from={half}"], capsys)
    assert rc == 2 and "manifest.json is missing" in err
    (half / "manifest.json").write_text(json.dumps({"stage": "ahds", "avatar": "save/avatar.ply"}))
    rc, _, err = main([*base, f"system.init_from={half}"], capsys)
    assert rc == 2 and "save/avatar.ply is missing" in err
    # a manifest from someone else or cut short by a crash: one line, no traceback
    for text, says in (('{"stage": "ahds", "avatar"', "not a readable manifest"), ("[1, 2]", "not a manifest")):
        (half / "manifest.json").write_text(text)
        rc, _, err = main([*base, f"system.init_from={half}"], capsys)
        assert rc == 2 and says in err and "Traceback" not in err
    (half / "manifest.json").write_text(json.dumps({"stage": "ahds", "avatar": ["save/avatar.ply"]}))
    rc, _, err = main([*base, f"system.init_from={half}"], capsys)
    assert rc == 2 and "not a path" in err
    (half / "manifest.json").write_text(json.dumps({"stage": "ahds", "avatar": "save/avatar.ply"}))
    base[1] = REPO / "configs/reconstruct.yaml"
    rc, _, err = main([*base, f"system.init_from={half}"], capsys)
    assert rc == 2 and "expected 'refine'" in err
    assert not (tmp_path / "out").exists()


def test_full_model_without_weights_lists_every_missing_model(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    args = [
        "--config",
        REPO / "configs/ahds.yaml",
        "--train",
        f"system.prompt_processor.prompt={PROMPT}",
        f"system.face_image={face()}",
        f"exp_root_dir={tmp_path / 'out'}",
    ]
    rc, _, err = main(args, capsys)
    assert rc == 2, err[-2000:]
    models = ["SG161222/Realistic_Vision_V4.0_noVAE", "stabilityai/sd-vae-ft-mse", "h94/IP-Adapter-FaceID"]
    models += ["lllyasviel/control_v11p_sd15_openpose", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "buffalo_l"]
    for what in models + ["hf download"]:
        assert what in err, what
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_lpips_weights_stop_stage_3_before_anything_is_written(tmp_path, capsys):
    base = [
        "--config",
        REPO / "configs/reconstruct.yaml",
        "--check",
        "system.init_from=later",
        f"exp_root_dir={tmp_path / 'out'}",
    ]
    rc, _, err = main(base + [f"system.lpips.vgg_path={tmp_path / 'none' / 'vgg.pth'}"], capsys)
    assert rc == 2
    assert "LPIPS backbone" in err and "curl -L -o" in err and "system.lambda_lpips=0" in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert main(base + ["system.lambda_lpips=0"], capsys)[0] == 0
    assert not (tmp_path / "out").exists()


def test_chained_launches_run_in_order_and_stop_at_the_first_failure(tiny_dir, tmp_path, capsys, monkeypatch):
    releases = []

    def release():  # what the first stage's manifest says of its turntable when the next launch starts
        (trial,) = trials(tmp_path / "a")
        releases.append(json.loads((trial / "manifest.json").read_text()).get("turntable", "not yet"))

    monkeypatch.setattr(launch, "release_gpu_memory", release)
    check = ["--config", REPO / "configs/reconstruct.yaml", "--check", "system.init_from=later"]
    stage1 = ["--banner", "== first", *tiny_stage1_args(tmp_path / "a", steps=2)]
    # a failing check first: the chain stops with its status; the stage-1 launch after it never starts
    bad = [*check, f"system.lpips.vgg_path={tmp_path / 'none.pth'}"]
    rc, out, err = main([*bad, "--then", *stage1], capsys)
    assert rc == 2 and "LPIPS backbone" in err and "== first" not in out
    assert not (tmp_path / "a").exists()
    # check, then two stage-1 launches in this one process: each its own trial, banners in order
    stage1b = ["--banner", "== second", *tiny_stage1_args(tmp_path / "b", steps=3)]
    rc, out, err = main([*check, "system.lambda_lpips=0", "--then", *stage1, "--then", *stage1b], capsys)
    assert rc == 0, err[-3000:]
    assert out.index("config and model files OK") < out.index("== first") < out.index("== second")
    # memory released between the two stage launches, not after the check; the first stage's turntable
    # video was still left to the end of the launches then (encoded while the second stage ran)
    assert releases == ["not yet"]
    for root, steps in ((tmp_path / "a", 2), (tmp_path / "b", 3)):
        (trial,) = trials(root)
        man = json.loads((trial / "manifest.json").read_text())
        assert man["step"] == steps and man["step_ms"]["steps"] == steps and man["step_ms"]["median"] > 0
        assert man["turntable"] == "save/turntable.mp4" and (trial / "save" / "turntable.mp4").stat().st_size > 0
        assert man["turntable_encode_s"] > 0  # the encoding's own seconds, on the writer thread
    # a data-parallel launch needs its own process (Lightning starts its ranks from it): refused, nothing
    # written; the stage before it in the chain still gets its turntable video
    ddp = tiny_stage1_args(tmp_path / "c", steps=2) + ["trainer.devices=2", "data.batch_size=2"]
    stage1d = tiny_stage1_args(tmp_path / "d", steps=2)
    rc, _, err = main([*stage1d, "--then", *ddp], capsys)
    assert rc == 2 and "a launch.py call of its own" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
    (trial,) = trials(tmp_path / "d")
    assert json.loads((trial / "manifest.json").read_text())["turntable"] == "save/turntable.mp4"
    assert (trial / "save" / "turntable.mp4").stat().st_size > 0


def _config_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("name", threestudio.registered_names())
def test_show_config_lists_every_option_with_its_docstring(name, capsys):
    rc, out, _ = main(["--show-config", name], capsys)
    assert rc == 0
    cfg_cls = threestudio.find(name).Config
    docs = field_docs(cfg_cls)
    for field in _config_fields(cfg_cls):
        assert docs.get(field), f"{name}: option {field} has no docstring"
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {field}:"))  # top level, not a nested block
        assert docs[field][:40] in line


@pytest.mark.parametrize("stage", ["ahds", "refine", "reconstruct"])
def test_show_config_of_a_stage_file_shows_its_values_and_the_plugins_options(stage, capsys):
    rc, out, _ = main(
        [
            "--show-config",
            REPO / f"configs/{stage}.yaml",
            "--config",
            REPO / f"configs/tiny/{stage}.yaml",
            "system.max_gpu_memory_gb=7",
        ],
        capsys,
    )
    assert rc == 0
    assert "max_gpu_memory_gb: 7" in out and out.startswith("system (gaussianip-")
    if stage != "refine":
        assert "renderer_type: 'torch-splat-renderer'" in out and "    tile_size: 16" in out  # the chosen plugin
        assert "    max_points: 8000" in out  # typed densify block with the tiny preset's value
    assert main(["--show-config", "no-such-plugin"], capsys)[0] == 2


def test_a_finished_launch_leaves_no_stage_objects_alive(tiny_dir, tmp_path, capsys, monkeypatch):
    """What a chain releases between launches (``release_gpu_memory``): the finished stage's system, its
    guidance (the diffusion networks, CUDA graphs, compiled functions) and its Lightning trainer are
    garbage afterwards, so none of their GPU memory reaches the next stage. The launch froze the
    imported libraries' objects (``freeze_imported_objects``), not the stage's."""
    import gc

    import pytorch_lightning as pl

    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance
    from threestudio.systems.ahds import AHDSSystem

    gc.unfreeze()
    monkeypatch.setattr(launch, "_IMPORTS_FROZEN", False)  # as in a fresh process
    rc, _, err = main(tiny_stage1_args(tmp_path, steps=2), capsys)
    assert rc == 0, err[-3000:]
    assert gc.get_freeze_count() > 100_000  # torch, Lightning, diffusers, transformers, the plugins
    launch.release_gpu_memory()
    kinds = (AHDSSystem, FaceIDControlNetGuidance, pl.Trainer)  # by type(): weak proxies are not the objects
    alive = [type(o).__name__ for o in gc.get_objects() if issubclass(type(o), kinds)]
    assert alive == []
