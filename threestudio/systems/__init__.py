"""One Lightning system per pipeline stage."""

from threestudio.systems import ahds, reconstruct, refine  # noqa: F401
