"""The system base: one weighted sum of the ``loss_<x>`` terms (threestudio's pattern)."""

import pytest
import torch

from threestudio.systems.reconstruct import ReconstructSystem
from threestudio.utils.errors import ConfigError


def test_weighted_loss_sums_lambda_times_loss_and_skips_zero_weights(tmp_path):
    sysm = object.__new__(ReconstructSystem)  # only the config is needed
    sysm.cfg = ReconstructSystem.preflight({"init_from": "x", "lambda_l1": 2.0, "lambda_ssim": 0.0}, "export")
    losses = {"loss_l1": torch.tensor(3.0), "loss_ssim": torch.tensor(float("nan")), "loss_lpips": torch.tensor(0.5)}
    assert float(sysm.weighted_loss(losses)) == pytest.approx(2.0 * 3.0 + 15.0 * 0.5)  # λ_ssim = 0: not added
    with pytest.raises(ConfigError, match="loss_foo has no weight lambda_foo"):
        sysm.weighted_loss({"loss_foo": torch.tensor(1.0)})
