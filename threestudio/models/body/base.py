"""Base class of body-template plugins: build once, cache as a compact template file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from threestudio.models.body.template import BodyTemplate
from threestudio.utils.base import BaseObject
from threestudio.utils.io import cache_root


class BodyModel(BaseObject):
    """A rigged body model that exports a :class:`BodyTemplate` in the training A-pose.

    Subclasses implement :meth:`build` and :meth:`cache_key`; :meth:`template` returns the cached
    template file when present (a few ms) and builds and caches it otherwise.
    """

    @dataclass
    class Config:
        template_path: str = ""
        """Explicit template ``.npz`` (from ``python -m threestudio.models.body.export``); empty ->
        use the cache folder."""
        use_cache: bool = True
        """Cache the built template under ``$GIP_CACHE_DIR`` (``~/.cache/gaussianip``) and reuse it."""

    def cache_key(self) -> dict:
        raise NotImplementedError

    def build(self) -> BodyTemplate:
        raise NotImplementedError

    def cache_file(self) -> Path:
        key = json.dumps(self.cache_key(), sort_keys=True)
        h = hashlib.md5(key.encode()).hexdigest()[:12]
        return cache_root() / "body" / f"{self.registered_name}-{h}.npz"

    def template(self) -> BodyTemplate:
        if self.cfg.template_path:
            return BodyTemplate.load(self.cfg.template_path)
        path = self.cache_file()
        if self.cfg.use_cache and path.is_file():
            return BodyTemplate.load(path)
        tpl = self.build()
        if self.cfg.use_cache:
            tpl.save(path)
        return tpl
