"""Camera data: the ``Cameras`` batch type, human camera samplers, refined-view targets."""
from threestudio.data import human_cameras, refined_views  # noqa: F401
from threestudio.data.cameras import Cameras  # noqa: F401
