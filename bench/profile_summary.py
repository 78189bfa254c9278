"""Summarise a torch.profiler Chrome trace (``export_chrome_trace``, plain or ``.gz``) of training steps:
how long the GPU was busy, which kernels and which operators took its time, and what the host was
doing while the GPU waited.

    python bench/profile_summary.py AHDSSystem_steps1600.trace.json.gz --steps 4 --out s1.json

* busy: the union of the kernel, memcpy and memset intervals on the GPU; idle = span - busy.
* ``device_ms_by_op``: each kernel's time given to the innermost operator (``aten::...``, an autograd
  node, a compiled graph) whose CPU interval holds the kernel's launch (matched by correlation id).
* ``idle_ms_by_host_frames``: each idle gap of at least ``--min-gap-us`` given to the innermost
  ``--frames`` Python frames of this repository (and gsplat) around the launch of the kernel that ended
  it: where the host was late (traces recorded with ``with_stack=True``; without stacks the operator).

Numbers are per step when ``--steps`` is given. Profiling with Python stacks slows the host, so its
idle figures are upper bounds; the kernel times are those of the profiled run.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
from pathlib import Path

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATS = ("cpu_op", "python_function", "user_annotation")
OWN_FRAMES = ("threestudio/", "launch.py", "gsplat/")
NAME_CHARS = 120
"""Kernel names are cut to this many characters (C++ template signatures run to thousands)."""


def load_events(path: str | Path) -> list[dict]:
    """The complete ("X") events of a Chrome trace file (JSON, or gzip-compressed JSON)."""
    p = Path(path)
    with gzip.open(p, "rt") if p.suffix == ".gz" else open(p) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _enclosing(host: list[dict], queries: list[tuple[float, object, object]]) -> dict:
    """For each query (tid, time, key), the host events of that thread whose interval holds the time,
    outermost first: one sweep per thread over the events in start order (they nest on a thread)."""
    by_tid = collections.defaultdict(list)
    for e in host:
        by_tid[e["tid"]].append(e)
    wanted = collections.defaultdict(list)
    for tid, ts, key in queries:
        wanted[tid].append((ts, key))
    out = {}
    for tid, qs in wanted.items():
        evs = sorted(by_tid.get(tid, []), key=lambda e: (e["ts"], -e["dur"]))
        qs.sort(key=lambda q: q[0])
        stack: list[dict] = []
        i = 0
        for ts, key in qs:
            while i < len(evs) and evs[i]["ts"] <= ts:
                e = evs[i]
                while stack and stack[-1]["ts"] + stack[-1]["dur"] < e["ts"]:
                    stack.pop()
                stack.append(e)
                i += 1
            out[key] = [e for e in stack if e["ts"] + e["dur"] >= ts]
    return out


def summarize(events: list[dict], steps: int = 1, top: int = 25, min_gap_us: float = 20.0, frames: int = 3) -> dict:
    """The summary of the module docstring for the complete events of one trace; milliseconds per step.

    Raises:
        ValueError: the trace holds no GPU activity (profiled without ``ProfilerActivity.CUDA``).
    """
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    if not gpu:
        raise ValueError("the trace has no GPU kernels: profile with activities=[CPU, CUDA] on a CUDA device")
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    host = [e for e in events if e.get("cat") in HOST_CATS]
    busy, gaps = 0.0, []
    start, end = gpu[0]["ts"], gpu[0]["ts"] + gpu[0]["dur"]
    for i, e in enumerate(gpu[1:], start=1):
        s, f = e["ts"], e["ts"] + e["dur"]
        if s > end:
            busy += end - start
            gaps.append((s - end, i))  # the idle time before kernel i
            start, end = s, f
        else:
            end = max(end, f)
    busy += end - start
    span = max(e["ts"] + e["dur"] for e in gpu) - gpu[0]["ts"]
    queries = []
    for i, e in enumerate(gpu):
        r = launches.get(e.get("args", {}).get("correlation"))
        if r is not None:
            queries.append((r["tid"], r["ts"], i))
    stacks = _enclosing(host, queries)
    per = 1e-3 / max(steps, 1)
    kernels, by_op = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    for i, e in enumerate(gpu):
        name = e["name"][:NAME_CHARS]
        kernels[name] += e["dur"]
        counts[name] += 1
        st = stacks.get(i, [])
        ops = [h["name"] for h in st if h.get("cat") != "python_function"]
        own = [h["name"] for h in st if h.get("cat") == "python_function" and any(k in h["name"] for k in OWN_FRAMES)]
        # kernels replayed from a CUDA graph have no operator around their launch: name the frame
        py = own or [h["name"] for h in st if h.get("cat") == "python_function"]
        by_op[ops[-1] if ops else f"(no operator) {py[-1]}" if py else "(no operator)"] += e["dur"]
    idle_by = collections.Counter()
    for gap, i in gaps:
        if gap < min_gap_us:
            continue
        st = stacks.get(i, [])
        own = [h["name"] for h in st if h.get("cat") == "python_function" and any(k in h["name"] for k in OWN_FRAMES)]
        if own:
            key = " > ".join(own[-frames:])
        else:
            key = st[-1]["name"] if st else "(launch not recorded)"
        idle_by[key] += gap

    def table(c: collections.Counter, with_count: bool = False) -> list:
        return [
            [name, round(v * per, 3), counts[name] / max(steps, 1)] if with_count else [name, round(v * per, 3)]
            for name, v in c.most_common(top)
        ]

    return {
        "steps": steps,
        "gpu_span_ms": round(span * per, 3),
        "gpu_busy_ms": round(busy * per, 3),
        "gpu_idle_ms": round((span - busy) * per, 3),
        "idle_gaps_at_least_min": sum(1 for g, _ in gaps if g >= min_gap_us),
        "min_gap_us": min_gap_us,
        "kernels_ms": table(kernels, with_count=True),
        "device_ms_by_op": table(by_op),
        "idle_ms_by_host_frames": table(idle_by),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="Chrome trace of torch.profiler (.json or .json.gz)")
    ap.add_argument("--steps", type=int, default=1, help="training steps the trace covers (figures per step)")
    ap.add_argument("--top", type=int, default=25, help="rows of each table")
    ap.add_argument("--min-gap-us", type=float, default=20.0, help="idle gaps shorter than this are not attributed")
    ap.add_argument("--frames", type=int, default=3, help="innermost frames of this repository naming a gap")
    ap.add_argument("--out", default=None, help="write the summary JSON here (else print it)")
    a = ap.parse_args()
    if a.steps < 1:
        ap.error(f"--steps must be at least 1, got {a.steps}")
    text = json.dumps(summarize(load_events(a.trace), a.steps, a.top, a.min_gap_us, a.frames), indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
