"""Gaussian rasterizers with one interface (see ``base.Renderer``)."""

from threestudio.models.renderers import gsplat_renderer, torch_splat  # noqa: F401
