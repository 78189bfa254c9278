"""Data-parallel training (``threestudio/utils/distributed.py``): the batch split, the checksum, and two
real gloo processes whose averaged gradients and densify statistics equal one process's on the whole
batch. The end-to-end 2-process ``launch.py`` run is in ``test_launch.py``."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from threestudio.utils.distributed import check_split, checksum, rank_slice
from threestudio.utils.errors import UserError

BATCH = 4
STEP = 3


def test_rank_slices_cover_the_batch_once_and_an_uneven_split_is_refused():
    for n in (1, 2, 4):
        covered = [i for r in range(n) for i in range(BATCH)[rank_slice(BATCH, r, n)]]
        assert covered == list(range(BATCH))
    with pytest.raises(UserError, match="data.batch_size=4 views per step cannot be split evenly over 3"):
        check_split(4, 3, "data.batch_size")


def test_checksum_sees_a_changed_or_permuted_value():
    x = torch.randn(50, 3)
    assert torch.equal(checksum([x]), checksum([x.clone()]))
    y = x.clone()
    y[7, 1] += 1e-6
    assert not torch.equal(checksum([x]), checksum([y]))
    assert not torch.equal(checksum([x]), checksum([x.flip(0)]))  # same sum, other order


def _stage3(root, views=slice(None)):
    """A stage-3 system on the known-answer stage 2 under ``root`` and its first batch (``views`` of it)."""
    from threestudio.data.refined_views import RandomTargets, load_refined_views
    from threestudio.systems.reconstruct import ReconstructSystem

    sysm = ReconstructSystem(
        {
            "init_from": str(root / "stage2"),
            "renderer_type": "torch-splat-renderer",
            "lambda_lpips": 0.0,
            "loss_scale": 1.0,
            "densify": {"densify_steps": [], "prune_steps": []},
        },
        str(root / "s3"),
    )
    cams, imgs, boxes = load_refined_views(str(root / "stage2"))
    return sysm, next(iter(RandomTargets(cams, imgs, boxes, BATCH, 5, views)))


def _step(sysm, batch, ranks: bool):
    """Losses, backward and (``ranks``) the all-reduce of one step; returns (optimizer, gradients)."""
    opt = sysm.configure_optimizers()
    losses, out, _ = sysm.compute_losses(batch, STEP)
    sysm.weighted_loss(losses).backward()
    m2d, radii = out["means2d"].grad, out["radii"]
    if ranks:
        m2d, radii = sysm.average_over_ranks(STEP, opt, m2d, radii)
    sysm.strategy.accumulate(STEP, m2d, radii, batch.cams.width, batch.cams.height)
    params = {n: getattr(sysm.geometry, n) for n in sysm.geometry.param_names}
    return opt, {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in params.items()}


def _rank(rank: int, world: int, root, store: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        sysm, batch = _stage3(root, rank_slice(BATCH, rank, world))
        opt, grads = _step(sysm, batch, ranks=True)
        s = sysm.strategy
        res = {"grads": grads, "views": batch.index, "stats": (s.grad_accum, s.denom, s.max_radii)}
        opt.step()
        sysm.check_replicas(STEP, opt)  # same update everywhere: the replicas agree
        res["checks"] = list(sysm.replica_checks)
        if rank == 1:
            with torch.no_grad():
                sysm.geometry.f_dc[0, 0] += 1e-3
        try:
            sysm.check_replicas(STEP + 1, opt)
        except RuntimeError as e:
            res["diverged"] = str(e)
        torch.save(res, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_average_to_the_one_process_gradient_and_checksums_catch_a_divergence(template, tmp_path):
    from threestudio.data.synthetic import textured_model, write_known_answer_stages
    from threestudio.models.renderers.torch_splat import TorchSplatRenderer

    gt = textured_model(template, 1500)
    write_known_answer_stages(tmp_path, template, gt, TorchSplatRenderer({}), n_init=1500, n_views=8, resolution=40)
    ctx = mp.get_context("spawn")
    env_before = dict(os.environ)
    procs = [ctx.Process(target=_rank, args=(r, 2, tmp_path, str(tmp_path / "store"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert dict(os.environ) == env_before

    one, batch = _stage3(tmp_path)
    _, full = _step(one, batch, ranks=False)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert torch.equal(torch.cat([r0["views"], r1["views"]]), batch.index)  # the shares are the global batch
    for name, g in full.items():
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name  # every rank holds the same numbers
        assert torch.allclose(r0["grads"][name], g, rtol=1e-4, atol=1e-8), (name, (r0["grads"][name] - g).abs().max())
    s = one.strategy
    for got, want in zip(r0["stats"], (s.grad_accum, s.denom, s.max_radii), strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-10)
    assert r0["stats"][1].sum() > 0  # some Gaussians were seen
    (check,) = r0["checks"]
    assert check["step"] == STEP and len(check["checksums"]) == 2 and len(set(check["checksums"])) == 1
    for r in (r0, r1):
        assert "replicas diverged" in r["diverged"]
