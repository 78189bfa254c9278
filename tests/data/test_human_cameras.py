import math

import torch


def test_random_cameras_modes_and_windows():
    from threestudio.data.human_cameras import HumanCameraConfig, RandomHumanCameras
    from threestudio.utils.config import parse_structured

    cfg = parse_structured(
        HumanCameraConfig, {"head_steps": [100, 200], "back_steps": [100, 200], "height": 8, "width": 8}
    )
    ds = RandomHumanCameras(cfg)
    assert {ds.sample(step=5).mode for _ in range(50)} == {"body"}
    modes = [ds.sample(step=150) for _ in range(400)]
    kinds = {m.mode for m in modes}
    assert kinds == {"body", "head", "back"}
    for m in modes:
        if m.mode == "head":
            assert (m.azimuth_deg >= 0).all() and (m.azimuth_deg <= 180).all() and (m.center[:, 2] == 0.65).all()
        if m.mode == "body":
            assert (m.distance >= 1.3).all() and (m.distance <= 1.7).all()
            a = torch.sort(m.azimuth_deg).values
            assert (a[1:] - a[:-1] > 0).all() and len(m) == 4  # stratified
    assert abs(math.degrees(float(modes[0].fovy_rad[0]))) <= 70.0


def test_data_parallel_ranks_share_out_the_one_process_batches():
    """Every rank draws the same global batch and keeps its own views: together, the one-process stream."""
    from threestudio.data.human_cameras import HumanCameraConfig, RandomHumanCameras
    from threestudio.ops.camera import Cameras
    from threestudio.utils.config import parse_structured
    from threestudio.utils.distributed import rank_slice

    cfg = parse_structured(HumanCameraConfig, {"head_steps": [0, 99], "back_steps": [0, 99], "height": 8, "width": 8})
    one = iter(RandomHumanCameras(cfg))
    ranks = []
    for r in range(2):
        ds = RandomHumanCameras(cfg)
        ds.views = rank_slice(4, r, 2)
        ranks.append(iter(ds))
    for _ in range(12):
        whole = next(one)
        parts = [next(it) for it in ranks]
        assert [len(p) for p in parts] == [2, 2] and {p.mode for p in parts} == {whole.mode}
        joined = Cameras.cat(parts)
        assert torch.equal(joined.c2w, whole.c2w) and torch.equal(joined.fovy_rad, whole.fovy_rad)


def test_fixed_cameras_come_in_batches_of_consecutive_views_in_order():
    import pytest

    from threestudio.data.human_cameras import FixedCameras
    from threestudio.ops.camera import ring_cameras

    cams = ring_cameras(10, 17.0, 1.5, 70.0, 32)
    ds = FixedCameras(cams, views_per_batch=4)
    batches = [ds[i] for i in range(len(ds))]
    assert len(ds) == 3 and [len(b) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([b.azimuth_deg for b in batches]), cams.azimuth_deg)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="views_per_batch"):
        FixedCameras(cams, views_per_batch=0)
