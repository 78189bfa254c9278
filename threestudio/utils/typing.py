"""One shape vocabulary for the whole code base (jaxtyping).

B views, H W pixels, N Gaussians, V vertices, F faces, J joints, K keypoints, T frames,
h w latent grid, C channels. Images are channels-last float in [0, 1] unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Callable  # noqa: F401
from dataclasses import dataclass, field  # noqa: F401  (re-exported for plugin configs)

from jaxtyping import Bool, Float, Int, Shaped, UInt8  # noqa: F401
from omegaconf import DictConfig  # noqa: F401
from torch import Tensor  # noqa: F401
