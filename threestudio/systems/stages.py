"""Hand-off between stages: reading a previous stage's trial directory with clear errors."""
from __future__ import annotations

import json
from pathlib import Path

from threestudio.utils.errors import UserError


def read_stage(trial_dir: str | Path, stage: str, required: tuple[str, ...] = ()) -> dict:
    """Manifest of a finished ``stage`` in ``trial_dir``, with ``trial_dir`` added and every manifest
    entry in ``required`` checked to exist as a file (paths are relative to ``trial_dir``).

    Raises:
        UserError: the directory, its manifest, the stage or a required file is missing.
    """
    d = Path(str(trial_dir))
    if not str(trial_dir) or not d.is_dir():
        raise UserError(f"init_from: stage directory not found: {trial_dir!r} (give the trial directory of the {stage} stage)")
    man = d / "manifest.json"
    if not man.is_file():
        raise UserError(f"init_from: {d} is incomplete: manifest.json is missing (did the {stage} stage finish?)")
    data = json.loads(man.read_text())
    if data.get("stage") != stage:
        raise UserError(f"init_from: {d} holds a {data.get('stage')!r} stage, expected {stage!r}")
    for key in required:
        if key not in data:
            raise UserError(f"init_from: {d} is incomplete: the {stage} stage did not record {key!r}")
        if not (d / data[key]).exists():
            raise UserError(f"init_from: {d} is incomplete: {data[key]} is missing")
    data["trial_dir"] = str(d.resolve())
    return data
