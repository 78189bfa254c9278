"""Face detection + identity embedding (insightface) and aligned crops."""

from threestudio.models.face import identity  # noqa: F401
