import json
import subprocess
import sys

import numpy as np
import torch

from threestudio.data.synthetic import textured_model, write_known_answer_stages
from threestudio.models.renderers.torch_splat import TorchSplatRenderer
from tests.conftest import REPO


def test_reconstruction_lowers_loss_and_raises_psnr(template, tmp_path):
    from threestudio.data.refined_views import RandomTargets, load_refined_views
    from threestudio.systems.reconstruct import ReconstructSystem

    ren = TorchSplatRenderer({})
    gt = textured_model(template, 3000)
    s2 = write_known_answer_stages(tmp_path, template, gt, ren, n_init=3000, n_views=8, resolution=48)
    sysm = ReconstructSystem({"init_from": str(s2), "renderer_type": "torch-splat-renderer", "lambda_lpips": 0.0,
                              "densify": {"densify_steps": [], "prune_steps": []}}, str(tmp_path / "s3"))
    cams, imgs, boxes = load_refined_views(str(s2))
    assert imgs.shape == (8, 48, 48, 3) and (boxes[:, 2] > boxes[:, 0]).all()
    opt = sysm.configure_optimizers()
    it = iter(RandomTargets(cams, imgs, boxes, 4, 0))
    losses, psnrs = [], []
    for step in range(60):
        loss, L, p = sysm.train_step(next(it), step, opt)
        opt.step()
        losses.append(float(loss))
        psnrs.append(float(p))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert np.mean(psnrs[-5:]) > np.mean(psnrs[:5]) + 3.0


def test_init_from_errors(tmp_path):
    def launch(cfg, *args):
        return subprocess.run([sys.executable, str(REPO / "launch.py"), "--config", str(REPO / "configs" / cfg), "--train",
                               f"exp_root_dir={tmp_path / 'out'}", *args], capture_output=True, text=True, timeout=300)

    r = launch("refine.yaml", f"system.init_from={tmp_path / 'nope'}")
    assert r.returncode == 2 and "stage directory not found" in r.stderr and "nope" in r.stderr
    (tmp_path / "half").mkdir()
    r = launch("refine.yaml", f"system.init_from={tmp_path / 'half'}")
    assert r.returncode == 2 and "manifest.json is missing" in r.stderr
    (tmp_path / "half" / "manifest.json").write_text(json.dumps({"stage": "ahds", "avatar": "save/avatar.ply"}))
    r = launch("refine.yaml", f"system.init_from={tmp_path / 'half'}")
    assert r.returncode == 2 and "save/avatar.ply is missing" in r.stderr
    r = launch("reconstruct.yaml", f"system.init_from={tmp_path / 'half'}")
    assert r.returncode == 2 and "expected 'refine'" in r.stderr
    assert not (tmp_path / "out").exists()
