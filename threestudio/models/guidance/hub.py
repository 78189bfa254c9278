"""Where pretrained models come from, and a fast local-availability check (no network)."""

from __future__ import annotations

import os
from pathlib import Path


def is_available(name_or_path: str, marker: str) -> bool:
    """True if ``marker`` (a file inside the model) exists in the local folder ``name_or_path`` or in
    the Hugging Face cache for the hub id ``name_or_path``. Never touches the network."""
    return _local_file(name_or_path, marker) is not None


def download_hint(name_or_path: str, include: str = "") -> str:
    """Command that fetches ``name_or_path`` into the HF cache on a machine with network access."""
    p = Path(os.path.expanduser(name_or_path))
    if name_or_path.startswith((".", "/", "~")) or p.exists():
        return f"put the model files in {name_or_path}"
    inc = f" {include}" if include else ""
    return f"hf download {name_or_path}{inc}   (then copy ~/.cache/huggingface to this machine if it is offline)"


_SAFETENSORS_FLOATS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _local_file(name_or_path: str, relpath: str) -> Path | None:
    """``relpath`` inside the local folder ``name_or_path`` or in the Hugging Face cache of that hub id
    (None if it is in neither; never touches the network)."""
    p = Path(os.path.expanduser(name_or_path))
    if p.exists():
        f = p / relpath
        return f if f.is_file() else None
    if name_or_path.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    res = try_to_load_from_cache(repo_id=name_or_path, filename=relpath)
    return Path(res) if isinstance(res, str) and os.path.isfile(res) else None


def _header_dtypes(path: Path) -> set[str] | None:
    """The dtype names in a safetensors file's JSON header (8-byte little-endian length, then JSON); no
    tensor data is read. None if the file does not look like safetensors."""
    import json

    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 * 2**20:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    return {v["dtype"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "dtype" in v}


def stored_float_dtype(name_or_path: str, weights_name: str, subfolder: str = ""):
    """The one floating dtype (``torch.float16`` / ``bfloat16`` / ``float32`` / ``float64``) that a
    model's safetensors weights are stored in, read from the file headers (a single file or the shards
    of its ``.index.json``), or None when that cannot be told (no such file, mixed floating dtypes).

    Args:
        name_or_path: local model folder or hub id (only the local Hugging Face cache is looked at).
        weights_name: e.g. ``diffusion_pytorch_model.safetensors`` (diffusers), ``model.safetensors``.
        subfolder: the model's subfolder (e.g. ``unet``).
    """
    import json

    import torch

    rel = f"{subfolder}/{weights_name}" if subfolder else weights_name
    files = []
    single = _local_file(name_or_path, rel)
    if single is not None:
        files = [single]
    else:
        index = _local_file(name_or_path, rel + ".index.json")
        if index is None:
            return None
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        files = [_local_file(name_or_path, f"{subfolder}/{s}" if subfolder else s) for s in shards]
        if not files or any(f is None for f in files):
            return None
    floats = set()
    for f in files:
        dtypes = _header_dtypes(f)
        if dtypes is None:
            return None
        floats |= {d for d in dtypes if d in _SAFETENSORS_FLOATS or d.startswith("F")}
    if len(floats) != 1 or next(iter(floats)) not in _SAFETENSORS_FLOATS:
        return None
    return getattr(torch, _SAFETENSORS_FLOATS[floats.pop()])
