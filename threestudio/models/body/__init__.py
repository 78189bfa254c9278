"""Rigged body templates (plugins) and the template file they export."""

from threestudio.models.body import anny_body, smplx_body  # noqa: F401
from threestudio.models.body.template import BodyTemplate  # noqa: F401
