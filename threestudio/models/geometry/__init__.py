"""Gaussian geometry and its densify/prune strategy."""

from threestudio.models.geometry import gaussian_model, strategy  # noqa: F401
