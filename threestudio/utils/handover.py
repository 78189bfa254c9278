"""Objects a launch leaves for the next launch of the same process (``launch.py ... --then ...``, as
run.sh chains its stages): stage 1 leaves its loaded diffusion networks, and stage 2 uses them instead
of loading the same files again. Nothing is written to disk and nothing crosses processes.

An object lives until the end of the launch after the one that left it: ``launch.py`` calls
:func:`expire` between launches, which drops what was left before the launch that just ended and was
not taken, and :func:`clear` when its launches are done, so a later, unrelated launch in the same
process (a test, a notebook) never finds anything.
"""

from __future__ import annotations

from typing import Any

_left: dict[str, tuple[Any, int]] = {}
_launch = 0
"""Count of :func:`expire` calls: the launch an object was left in."""


def leave(key: str, obj: Any) -> None:
    """Leave ``obj`` under ``key`` for the next launch (replacing what was there)."""
    _left[key] = (obj, _launch)


def take(key: str) -> Any | None:
    """The object left under ``key`` (removed from here), or None."""
    item = _left.pop(key, None)
    return None if item is None else item[0]


def expire() -> None:
    """Between two launches: drop what an earlier launch than the one that just ended left and no one took."""
    global _launch
    for key in [k for k, (_, n) in _left.items() if n < _launch]:
        del _left[key]
    _launch += 1


def clear() -> None:
    """Drop everything (the end of a ``launch.py`` call)."""
    _left.clear()


def keys() -> list[str]:
    """What is left now (for tests and diagnostics)."""
    return sorted(_left)
