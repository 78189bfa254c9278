"""GPU memory budget and precision rules shared by every stage (DESIGN.md §8).

* :func:`resolve_dtype`: bf16 where ``torch.cuda.is_bf16_supported()``, else fp16 (V100, T4,
  RTX 20xx), fp32 on the CPU.
* :class:`MemoryBudget`: how many bytes a stage may use on its device (``system.max_gpu_memory_gb``,
  default: what the device has free when the stage starts), enforced through
  ``torch.cuda.set_per_process_memory_fraction`` and used to size batches (stage 2's VCR groups).
* :func:`is_out_of_memory` / :func:`oom_message`: one clear message when a stage still runs out.
* :class:`PhaseClock`: wall seconds per phase of a stage that trains nothing (stage 2's ``timings_s``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

GIB = 2**30

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def to_device_async(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t.to(device)`` that does not make the host wait for the GPU: a CPU tensor bound for a CUDA
    device is copied from pinned (page-locked) memory without blocking. A plain ``.to('cuda')`` of
    pageable memory synchronises the host with the device's stream, which empties the queue of work
    the host had launched ahead. The copy is stream-ordered, so kernels launched after it see the data.
    Other moves are plain ``.to``."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether ``a`` and ``b`` name the same device. A bare ``cuda`` is the current CUDA device
    (``torch.cuda.current_device()``), so ``cuda`` and ``cuda:0`` are the same device when device 0 is
    current (PyTorch's ``==`` compares the index as written: ``torch.device("cuda") != torch.device("cuda:0")``);
    ``cpu`` and ``cpu:0`` are the one CPU device. Raises ``RuntimeError`` (from PyTorch) only when a bare
    ``cuda`` is compared with an indexed one on a machine without CUDA."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index or a.type == "cpu":
        return True
    if a.type == "cuda" and None in (a.index, b.index):
        here = torch.cuda.current_device()
        return (here if a.index is None else a.index) == (here if b.index is None else b.index)
    return False


def resolve_dtype(device: torch.device | str, requested: str = "auto") -> torch.dtype:
    """Compute dtype of the frozen diffusion networks on ``device``.

    Args:
        device: where the networks run.
        requested: ``auto`` (bf16 on CUDA cards that support it, fp16 on other CUDA cards, fp32 on
            CPU) or one of ``bf16`` / ``fp16`` / ``fp32``.

    Raises:
        ValueError: ``requested`` is not one of those names.
    """
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {requested!r}")
        return DTYPES[requested]
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


ALLOCATOR_COUNTERS = {
    "alloc_retries": "num_alloc_retries",
    "ooms": "num_ooms",
    "device_allocs": "num_device_alloc",
    "device_frees": "num_device_free",
    "sync_all_streams": "num_sync_all_streams",
}
"""Manifest name -> ``torch.cuda.memory_stats`` key of each counter :meth:`MemoryBudget.allocator_counts`
records."""


class MemoryBudget:
    """Bytes a stage may hold on its device.

    On CUDA the budget is ``max_gb`` GiB (capped at the card's size) or, with ``max_gb <= 0``, what
    the device has free plus what this process already holds. :meth:`apply` makes the caching
    allocator refuse allocations beyond it (a clean ``OutOfMemoryError`` instead of a slow
    thrash). On the CPU there is no budget: :attr:`limited` is False and :meth:`fit` returns
    ``most``.
    """

    def __init__(self, device: torch.device | str, max_gb: float = 0.0):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_gb = float(max_gb)
        self.limited = self.device.type == "cuda"
        self._peak = 0
        if not self.limited:
            self.total_bytes = 0
            self.bytes = 0
            return
        free, total = torch.cuda.mem_get_info(self.device)
        self.total_bytes = int(total)
        own = int(torch.cuda.memory_reserved(self.device))
        self.bytes = min(int(max_gb * GIB), total) if max_gb > 0 else min(free + own, total)

    @property
    def gib(self) -> float:
        return self.bytes / GIB

    def apply(self) -> None:
        """Cap this process's CUDA caching allocator at the budget (no-op on the CPU)."""
        if self.limited and self.total_bytes:
            torch.cuda.set_per_process_memory_fraction(min(self.bytes / self.total_bytes, 1.0), self.device)

    def note_peak(self) -> None:
        """Remember the allocator's peak so far (before something resets the peak statistics)."""
        if self.limited:
            self._peak = max(self._peak, int(torch.cuda.max_memory_reserved(self.device)))

    def peak_reserved_gib(self) -> float:
        """Peak memory reserved by this process's CUDA allocator (GiB), also across peak resets."""
        self.note_peak()
        return self._peak / GIB

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.device)) if self.limited else 0

    def allocator_counts(self) -> dict[str, int]:
        """The caching allocator's event counters on this device since the process started (they add up
        over the stages of one ``run.sh`` process; empty on the CPU): ``alloc_retries`` (allocations that
        found neither a fitting cached block nor room for a new one under the cap or on the card, so that
        the allocator synchronised, gave its cached blocks back and tried again), ``ooms`` (those that
        failed even then), ``device_allocs`` / ``device_frees`` (``cudaMalloc`` / ``cudaFree`` calls) and
        ``sync_all_streams`` (device-wide synchronisations the allocator made); :data:`ALLOCATOR_COUNTERS`
        names them in ``torch.cuda.memory_stats``. Counters an older torch lacks are left out."""
        if not self.limited:
            return {}
        stats = torch.cuda.memory_stats(self.device)
        return {k: int(stats[v]) for k, v in ALLOCATOR_COUNTERS.items() if v in stats}

    @staticmethod
    def allocator_settings() -> dict[str, str]:
        """The caching allocator's settings as this process was given them: each of ``PYTORCH_ALLOC_CONF``
        and its older name ``PYTORCH_CUDA_ALLOC_CONF`` that is set, with its value (empty: the defaults).
        Both are recorded as given, since torch versions read them differently (torch 2.9.1 ignored
        ``expandable_segments`` under the new name on CUDA; the older name works, with a warning)."""
        return {k: os.environ[k] for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF") if k in os.environ}

    def headroom(self) -> int:
        """Bytes still allowed beyond what is allocated now (allocator fragmentation not counted)."""
        return self.bytes - self.allocated() if self.limited else 0

    def fit(self, per_item: int, most: int, reserve: int = 0, margin: float = 0.9) -> int:
        """How many items of ``per_item`` bytes fit in the headroom after ``reserve`` bytes, keeping
        ``1 - margin`` of it free for fragmentation; at least 1, at most ``most``."""
        if not self.limited or per_item <= 0:
            return most
        return max(1, min(most, int((margin * self.headroom() - reserve) // per_item)))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (``torch.OutOfMemoryError`` or older RuntimeError text)."""
    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def oom_message(stage: str, advice: str, trial_dir: str | Path, budget_gb: float | None) -> str:
    """The one message a stage that ran out of GPU memory prints: which stage, the budget, what to
    lower, and the last checkpoint (nothing already written is removed)."""
    ckpt = Path(trial_dir) / "ckpts" / "last.ckpt"
    where = (
        f"the last checkpoint is {ckpt} (continue with: python launch.py --train --resume {trial_dir})"
        if ckpt.is_file()
        else f"no checkpoint was written yet; what the stage wrote is kept in {trial_dir}"
    )
    budget = f" within its budget of {budget_gb:.1f} GiB" if budget_gb else ""
    return f"{stage} ran out of GPU memory{budget}: {advice}; {where}"


class BatchSizer:
    """Sizes batches to a :class:`MemoryBudget` by measuring: the first batch is one item, its peak
    allocation above what was allocated before it is the cost of one item, and later batches take
    as many items as the headroom allows. ``fixed > 0`` forces that batch size; without a limited
    budget (CPU) every batch takes all remaining items."""

    def __init__(self, budget: MemoryBudget | None, fixed: int = 0):
        self.budget, self.fixed = budget, int(fixed)
        self.per_item = 0
        """Measured peak bytes of one item (0 = not measured yet)."""
        self.most = 0
        """Upper bound on later batches once one ran out of memory (:meth:`attempt`; 0 = none)."""

    @property
    def measuring(self) -> bool:
        return self.budget is not None and self.budget.limited and not self.fixed

    def size(self, remaining: int, reserve: int = 0) -> int:
        """Items for the next batch (1..remaining), keeping ``reserve`` bytes for later allocations."""
        if self.fixed:
            return max(1, min(self.fixed, remaining))
        if not self.measuring:
            return remaining
        if self.per_item == 0:
            return 1
        size = self.budget.fit(self.per_item, remaining, reserve)
        return min(size, self.most) if self.most else size

    def attempt(self, n_items: int, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """``fn()`` for a batch of ``n_items`` inside :meth:`track`: ``(True, result)``. When a measured
        batch of more than one item runs out of CUDA memory (the one-item measurement underestimated a
        larger batch, e.g. through allocator fragmentation), later batches are capped at half of it and
        ``(False, None)`` comes back: the caller runs the same items again with :meth:`size` (the retry's
        :meth:`track` gives the failed batch's cached blocks back). ``fn`` must be safe to run again.
        Re-raises for one item, a fixed size or no budget."""
        try:
            with self.track(n_items):
                return True, fn()
        except Exception as e:
            if not (self.measuring and n_items > 1 and is_out_of_memory(e)):
                raise
        self.most = max(1, n_items // 2)
        log.warning("a batch of %d items ran out of GPU memory; retrying with at most %d", n_items, self.most)
        return False, None

    @contextlib.contextmanager
    def track(self, n_items: int):
        """Context manager around one batch of ``n_items`` that updates :attr:`per_item`."""
        if not self.measuring:
            yield
            return
        dev = self.budget.device
        self.budget.note_peak()  # keep the process peak before the statistics are reset
        # the cap is on reserved memory, the sizes on allocated: give cached blocks back so that this
        # batch's large tensors get fresh segments instead of failing on fragmented cached ones
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        yield
        peak = torch.cuda.max_memory_allocated(dev) - before
        self.per_item = max(self.per_item, -(-peak // max(n_items, 1)))
        self.budget.note_peak()


class PhaseClock:
    """Wall seconds of the consecutive phases of a stage (the manifest's ``timings_s``).

    :meth:`lap` synchronises ``device`` (CUDA) so that a phase's queued GPU work is counted in it,
    not in the next phase; call it only between phases, never inside a loop of GPU steps.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, phase: str) -> float:
        """End ``phase`` (seconds since the previous lap, rounded to 10 ms, added to ``laps[phase]``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        self.laps[phase] = round(self.laps.get(phase, 0.0) + dt, 2)
        return dt
