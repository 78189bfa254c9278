"""Run ``launch.py`` (one launch or run.sh's chain) with a timeline of its phases and torch.profiler
windows over a few training steps of each Gaussian stage. A diagnostic: the profiler and the
synchronisations it adds slow the run, so its wall times are not the pipeline's.

    GIP_PROFILE_OUT=prof python bench/profile_launch.py launch.py <launch.py arguments>
    python bench/full_pipeline.py ... --profile prof          # run.sh under this wrapper

Writes to ``$GIP_PROFILE_OUT``:

* ``events.json``: seconds since the process started of the imports, each launch, the guidance's model
  loading, each compiled function's preparation (``threestudio.utils.aot``: loaded from disk or
  compiled), each CUDA-graph capture of the noise prediction (a row count met for the first time), the
  release between launches (garbage-collector and ``torch._dynamo.reset`` times, objects tracked and
  frozen) and each profiled window (its training steps, its wall time, and the time its trace took to
  write);
* ``<Stage>_steps<N>.trace.json.gz``: the Chrome trace (CPU with Python stacks, and CUDA) of the
  training steps N .. N+k-1 of each window, for ``bench/profile_summary.py``.

``$GIP_PROFILE_WINDOWS``: ``Stage:first:count`` comma list (default ``AHDSSystem:1600:4,
ReconstructSystem:600:4``); a window named ``VCRRefiner`` (no numbers) also profiles stage 2's whole
refinement (without stacks; its trace is about 10^6 events, and the profiler's Python objects make the
next release's garbage collection slower).
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import shutil
import sys
import time

T0 = time.perf_counter()
OUT = os.environ.get("GIP_PROFILE_OUT", "profile_out")
WINDOWS = os.environ.get("GIP_PROFILE_WINDOWS", "AHDSSystem:1600:4,ReconstructSystem:600:4")
EVENTS: list[dict] = []


def event(name: str, **fields) -> None:
    """Record ``name`` at the current time (seconds since this process started) in ``events.json``."""
    EVENTS.append({"ev": name, "t": round(time.perf_counter() - T0, 3), **fields})
    with open(os.path.join(OUT, "events.json"), "w") as f:
        json.dump(EVENTS, f, indent=0)


def parse_windows(spec: str) -> tuple[dict[str, tuple[int, int]], bool]:
    """``({stage class: (first step, steps)}, profile stage 2's refinement)`` of a ``GIP_PROFILE_WINDOWS`` spec.

    Raises:
        ValueError: an entry is not ``Stage:first:count`` (or ``VCRRefiner``), or its numbers are not
            a step >= 0 and a count >= 1.
    """
    steps, refine = {}, False
    for entry in filter(None, (w.strip() for w in spec.split(","))):
        if entry == "VCRRefiner":
            refine = True
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"GIP_PROFILE_WINDOWS entry {entry!r}: expected Stage:first:count, e.g. AHDSSystem:1600:4")
        steps[parts[0]] = (int(parts[1]), int(parts[2]))
    return steps, refine


def main() -> int:
    if len(sys.argv) < 2 or not sys.argv[1].endswith("launch.py"):
        sys.exit("usage: GIP_PROFILE_OUT=dir python bench/profile_launch.py launch.py <launch.py arguments>")
    try:
        step_windows, profile_refine = parse_windows(WINDOWS)
    except ValueError as e:
        sys.exit(f"error: {e}")
    os.makedirs(OUT, exist_ok=True)
    import torch

    event("torch_imported")
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
    import launch
    import threestudio

    threestudio.import_plugins()
    event("plugins_imported")
    from torch.profiler import ProfilerActivity, profile

    import threestudio.systems.base as base
    from threestudio.models.guidance import faceid_controlnet, vcr
    from threestudio.utils import aot

    def sync():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def timed(owner, attr: str, label: str) -> None:
        orig = getattr(owner, attr)

        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                sync()
                event(label, s=round(time.perf_counter() - t, 3))

        setattr(owner, attr, wrapped)

    def release_gpu_memory():  # launch.release_gpu_memory, its parts timed
        t, n = time.perf_counter(), len(gc.get_objects())
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
        t1 = time.perf_counter()
        gc.collect()
        t2 = time.perf_counter()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        event(
            "release_gpu_memory",
            objects=n,
            frozen=gc.get_freeze_count(),
            dynamo_reset_s=round(t1 - t, 3),
            gc_s=round(t2 - t1, 3),
            empty_cache_s=round(time.perf_counter() - t2, 3),
        )

    def write_trace(prof, name: str, wall: float, steps: int = 1) -> None:
        t = time.perf_counter()
        path = os.path.join(OUT, f"{name}.trace.json")
        prof.export_chrome_trace(path)
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb", compresslevel=6) as g:
            shutil.copyfileobj(f, g)
        os.remove(path)
        event("profile", window=name, steps=steps, wall_s=round(wall, 3), write_s=round(time.perf_counter() - t, 3))

    launch.release_gpu_memory = release_gpu_memory
    timed(launch, "_main_one", "launch")
    timed(faceid_controlnet.FaceIDControlNetGuidance, "load", "guidance_load")

    on_train_start, on_start, on_end = (
        base.GaussianSystem.on_train_start,
        base.GaussianSystem.on_train_batch_start,
        base.GaussianSystem.on_train_batch_end,
    )

    def train_start(self):
        event("on_train_start", stage=type(self).__name__)
        return on_train_start(self)

    def batch_start(self, batch, idx):
        w = step_windows.get(type(self).__name__)
        if w and self.step == w[0]:
            sync()
            self._profile = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True)
            self._profile.__enter__()
            self._profile_t = time.perf_counter()
        if self.step == 1:
            event("first_step_done", stage=type(self).__name__)
        return on_start(self, batch, idx)

    def batch_end(self, outputs, batch, idx):
        out = on_end(self, outputs, batch, idx)
        w = step_windows.get(type(self).__name__)
        prof = getattr(self, "_profile", None)
        if w and prof is not None and self.step == w[0] + w[1]:  # global_step has advanced past the window
            sync()
            wall = time.perf_counter() - self._profile_t
            prof.__exit__(None, None, None)
            self._profile = None
            write_trace(prof, f"{type(self).__name__}_steps{w[0]}", wall, steps=w[1])
        return out

    base.GaussianSystem.on_train_start = train_start
    base.GaussianSystem.on_train_batch_start = batch_start
    base.GaussianSystem.on_train_batch_end = batch_end

    if profile_refine:
        refine = vcr.VCRRefiner.refine

        def profiled_refine(self, *a, **k):
            sync()
            t = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                out = refine(self, *a, **k)
                sync()
            write_trace(prof, "VCRRefiner_refine", time.perf_counter() - t)
            return out

        vcr.VCRRefiner.refine = profiled_refine

    prepare = aot.DiskCompiled._prepare

    def timed_prepare(self, args):
        t = time.perf_counter()
        out = prepare(self, args)
        event("aot_prepare", fn=self.name, source=self.last_source, s=round(time.perf_counter() - t, 3))
        return out

    aot.DiskCompiled._prepare = timed_prepare
    noise = faceid_controlnet.FaceIDControlNetGuidance._noise

    def timed_noise(self, latents_t, *a, **k):
        rows = tuple(latents_t.shape)
        new = self.cfg.cuda_graph and latents_t.is_cuda and not any(key[0] == rows for key in self._graphs)
        t = time.perf_counter()
        out = noise(self, latents_t, *a, **k)
        if new:
            event("graph_capture", rows=rows[0], s=round(time.perf_counter() - t, 3))
        return out

    faceid_controlnet.FaceIDControlNetGuidance._noise = timed_noise
    rc = launch.main(sys.argv[2:])
    event("exit", rc=rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
