"""Appearance models beyond SH colour (view-dependent specular)."""

from threestudio.models.appearance import specular  # noqa: F401
