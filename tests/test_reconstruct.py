import json
import subprocess
import sys

import numpy as np
import torch

from tests.conftest import REPO
from threestudio.data.synthetic import textured_model, write_known_answer_stages
from threestudio.models.renderers.torch_splat import TorchSplatRenderer


def test_reconstruction_lowers_loss_and_raises_psnr(template, tmp_path):
    from threestudio.data.refined_views import RandomTargets, load_refined_views
    from threestudio.systems.reconstruct import ReconstructSystem

    ren = TorchSplatRenderer({})
    gt = textured_model(template, 3000)
    s2 = write_known_answer_stages(tmp_path, template, gt, ren, n_init=3000, n_views=8, resolution=48)
    sysm = ReconstructSystem(
        {
            "init_from": str(s2),
            "renderer_type": "torch-splat-renderer",
            "lambda_lpips": 0.0,
            "loss_scale": 1.0,
            "densify": {"densify_steps": [], "prune_steps": []},
        },
        str(tmp_path / "s3"),
    )
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
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "launch.py"),
                "--config",
                str(REPO / "configs" / cfg),
                "--train",
                f"exp_root_dir={tmp_path / 'out'}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

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


def test_loss_window_keeps_the_aspect_ratio():
    """A tall, narrow body box (a side view) is cropped, not resized to a square: the figure inside keeps
    its width/height ratio; boxes of one batch grow to a common size about their own centres."""
    from threestudio.ops.losses import alpha_bbox, common_size_boxes, crop_boxes

    img = torch.zeros(2, 64, 96, 3)
    img[0, 10:40, 20:30] = 1.0  # 10 wide x 30 tall
    img[1, 20:34, 50:90] = 1.0  # 40 wide x 14 tall
    boxes = [alpha_bbox(img[i, ..., :1], margin=0.0) for i in range(2)]
    assert boxes == [[20, 10, 30, 40], [50, 20, 90, 34]]
    assert common_size_boxes(boxes, 96, 64) == [[5, 10, 45, 40], [50, 12, 90, 42]]
    crops = crop_boxes(img, boxes)
    assert crops.shape == (2, 3, 30, 40)
    for i, (w, h) in enumerate(((10, 30), (40, 14))):
        ys, xs = torch.nonzero(crops[i, 0] > 0.5, as_tuple=True)
        assert (int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1) == (w, h)  # exact pixels, no stretch
    half = crop_boxes(img, boxes, 0.5)
    assert half.shape == (2, 3, 15, 20)
    ys, xs = torch.nonzero(half[0, 0] > 0.25, as_tuple=True)
    ratio = (int(ys.max() - ys.min()) + 1) / (int(xs.max() - xs.min()) + 1)
    assert 2.0 <= ratio <= 4.0  # ~3, as in the render (a square resize made it ~1)


def test_missing_lpips_weights_stop_stage_3_before_anything_is_written(tmp_path, capsys):
    import launch

    base = [
        "--config",
        str(REPO / "configs" / "reconstruct.yaml"),
        "--check",
        "system.init_from=later",
        f"exp_root_dir={tmp_path / 'out'}",
    ]
    assert launch.main(base + [f"system.lpips.vgg_path={tmp_path / 'none' / 'vgg.pth'}"]) == 2
    err = capsys.readouterr().err
    assert "LPIPS backbone" in err and "curl -L -o" in err and "system.lambda_lpips=0" in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert launch.main(base + ["system.lambda_lpips=0"]) == 0
    assert not (tmp_path / "out").exists()
