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
