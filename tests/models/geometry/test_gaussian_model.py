import numpy as np
import torch

from threestudio.models.geometry.gaussian_model import GaussianModel


def test_template_initialisation(template):
    m = GaussianModel({"num_points": 2000}).init_from_template(template)
    assert m.num_points == 2000
    np.testing.assert_allclose(m.opacities.detach(), 0.1, rtol=1e-5)
    np.testing.assert_allclose(m.colors.detach(), 0.5, atol=1e-6)
    s = m.scales.detach()
    assert torch.allclose(s[:, 0], s[:, 1]) and (s > 1e-4).all() and (s < 0.1).all()
    # points lie on the template surface: nearest template vertex is close
    d = torch.cdist(m.means.detach()[:200], template.vertices).min(1).values
    assert d.max() < 0.05
