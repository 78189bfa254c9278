"""Where pretrained models come from, and a fast local-availability check (no network)."""

from __future__ import annotations

import os
from pathlib import Path


def is_available(name_or_path: str, marker: str) -> bool:
    """True if ``marker`` (a file inside the model) exists in the local folder ``name_or_path`` or in
    the Hugging Face cache for the hub id ``name_or_path``. Never touches the network."""
    p = Path(os.path.expanduser(name_or_path))
    if p.exists():
        return (p / marker).is_file()
    if name_or_path.startswith((".", "/", "~")):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    res = try_to_load_from_cache(repo_id=name_or_path, filename=marker)
    return isinstance(res, str) and os.path.isfile(res)


def download_hint(name_or_path: str, include: str = "") -> str:
    """Command that fetches ``name_or_path`` into the HF cache on a machine with network access."""
    p = Path(os.path.expanduser(name_or_path))
    if name_or_path.startswith((".", "/", "~")) or p.exists():
        return f"put the model files in {name_or_path}"
    inc = f" {include}" if include else ""
    return f"hf download {name_or_path}{inc}   (then copy ~/.cache/huggingface to this machine if it is offline)"
