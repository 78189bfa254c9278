import numpy as np
import torch

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
    batch = next(iter(RandomTargets(cams, imgs, boxes, 4, 1)))
    assert batch.images.dtype == torch.uint8
    plain, _, _ = sysm.compute_losses(batch, 0)
    sysm._frozen["targets"] = imgs  # as on_fit_start keeps them on a GPU: batches then carry no images
    lean = sysm.prepare_train_batch(batch)
    assert lean.images is None and torch.equal(lean.index, batch.index)
    resident, _, _ = sysm.compute_losses(lean, 0)
    assert resident.keys() == plain.keys() and all(torch.equal(resident[k], plain[k]) for k in plain)
    del sysm._frozen["targets"]
    from threestudio.data.refined_views import RefinedViewsDataModule

    dm = RefinedViewsDataModule({"init_from": str(s2), "batch_views": 4, "box_multiple": 8})
    assert next(iter(dm.train_dataloader())).images.shape == (4, 48, 48, 3)
    assert torch.equal(dm.target_images(held=True), imgs)  # a system holds them: batches then carry none
    held = next(iter(dm.train_dataloader()))
    assert held.images is None and held.index.shape == (4,)
    assert {int(b[2] - b[0]) % 8 for b in held.bbox} | {int(b[3] - b[1]) % 8 for b in held.bbox} <= {0}
    opt = sysm.configure_optimizers()
    it = iter(RandomTargets(cams, imgs, boxes, 4, 0))
    losses, psnrs = [], []
    for step in range(60):
        res = sysm.optimization_step(next(it), step, opt)
        opt.step()
        losses.append(float(res["loss"]))
        psnrs.append(float(res["logs"]["psnr"]))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert np.mean(psnrs[-5:]) > np.mean(psnrs[:5]) + 3.0
