"""Camera data (random human cameras, refined-view targets), the stage hand-off files, synthetic avatars."""

from threestudio.data import human_cameras, refined_views  # noqa: F401
