"""GaussianIP framework: identity-preserving 3D Gaussian humans from a text prompt and a face photo.

This module holds only the plugin registry (threestudio style); nothing heavy is imported here.
Plugins register themselves with ``@threestudio.register("<what>-<kind>")`` when their package is
imported; :func:`find` imports every plugin package on first use.
"""

from __future__ import annotations

import difflib
import importlib

__version__ = "0.1.0"

__modules__: dict[str, type] = {}

_PLUGIN_PACKAGES = (  # lowest layer first: finding a model plugin never imports data or systems
    "threestudio.models.body",
    "threestudio.models.geometry",
    "threestudio.models.appearance",
    "threestudio.models.renderers",
    "threestudio.models.face",
    "threestudio.models.guidance",
    "threestudio.models.prompt_processors",
    "threestudio.data",
    "threestudio.systems",
)


def register(name: str):
    """Class decorator that registers a plugin under a kebab-case ``name``.

    Raises:
        ValueError: if ``name`` is already taken by another class.
    """

    def decorator(cls):
        if name in __modules__ and __modules__[name] is not cls:
            raise ValueError(f"plugin name {name!r} is already registered by {__modules__[name]!r}")
        __modules__[name] = cls
        cls.registered_name = name
        return cls

    return decorator


def import_plugins() -> None:
    """Import every plugin package so that all ``register`` calls have run (no try/except: a
    broken plugin fails loudly)."""
    for pkg in _PLUGIN_PACKAGES:
        importlib.import_module(pkg)


def find(name: str) -> type:
    """Return the class registered as ``name``.

    Raises:
        KeyError: with close-match suggestions when ``name`` is not registered.
    """
    for pkg in _PLUGIN_PACKAGES:  # import packages up to the one that registers ``name``
        if name in __modules__:
            break
        importlib.import_module(pkg)
    if name not in __modules__:
        close = difflib.get_close_matches(name, list(__modules__), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown plugin name {name!r}{hint} (known: {', '.join(sorted(__modules__))})")
    return __modules__[name]


def registered_names() -> list[str]:
    """All registered plugin names, sorted (imports the plugin packages first)."""
    import_plugins()
    return sorted(__modules__)
