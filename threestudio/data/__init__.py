"""Camera data: the ``Cameras`` batch type and the human camera samplers."""
from threestudio.data import human_cameras  # noqa: F401
from threestudio.data.cameras import Cameras  # noqa: F401
