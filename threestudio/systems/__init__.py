"""One Lightning system per pipeline stage."""
from threestudio.systems import ahds  # noqa: F401
