"""The stage-1 step benchmark's tools on the CPU with the tiny models (the GPU figures in
bench/results/ come from the same code)."""

import pytest

from tests.conftest import REPO


def test_stage1_step_breakdown_times_every_part_of_the_step(tiny_dir, tmp_path, monkeypatch):
    """``bench/stage1_step.py --breakdown``: each part of a real step gets its own (non-zero) time and the
    system's methods are restored afterwards (so the timed blocks of ``run`` measure the plain step)."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import stage1_step as bench

    monkeypatch.setattr(bench, "DEVICE", "cpu")
    system, cfg = bench.build_system(str(tiny_dir), "", None, 1000, 32, 32, [], str(tmp_path / "trial"))
    render, noise = system.render, system.guidance._noise
    parts = bench.breakdown(system, cfg, steps=1)
    assert list(parts) == [*bench.SEGMENTS, "sum"]
    assert all(parts[k] > 0 for k in bench.SEGMENTS), parts
    assert parts["sum"] == round(sum(parts[k] for k in bench.SEGMENTS), 2)
    assert system.render == render and system.guidance._noise == noise


def test_stage1_step_run_warms_up_on_the_steps_just_before_the_timed_ones(tiny_dir, tmp_path, monkeypatch):
    """``run(..., warmup=N)``: N untimed steps at the AHDS steps right before the timed ones (which start
    at ``start_step + 2`` whatever N is), one time per warm-up step, one per timed block."""
    monkeypatch.setenv("GIP_CACHE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import stage1_step as bench

    monkeypatch.setattr(bench, "DEVICE", "cpu")
    system, cfg = bench.build_system(str(tiny_dir), "", None, 1000, 32, 32, [], str(tmp_path / "trial"))
    seen, plain = [], system.optimization_step

    def recording(batch, step, opt):
        seen.append(step)
        return plain(batch, step, opt)

    monkeypatch.setattr(system, "optimization_step", recording)
    r = bench.run(system, cfg, steps=2, start_step=10, block=1, warmup=4)
    assert seen == [8, 9, 10, 11, 12, 13]
    assert len(r["warmup_steps_s"]) == 4 and len(r["step_s_blocks"]) == 2
    seen.clear()
    bench.run(system, cfg, steps=1, start_step=10, block=1)  # the default: 2 warm-up steps, as before
    assert seen == [10, 11, 12]
    with pytest.raises(ValueError, match="at least 2"):
        bench.run(system, cfg, steps=1, start_step=10, warmup=1)


def test_refine_views_variants_are_undone_and_refine_as_the_default(tiny_dir, monkeypatch):
    """``bench/refine_views.py --variants``: each speed-only setting (channels-last layout, cuDNN's
    algorithm search) is applied for its own timed refinements only, and refines the views as the
    default does (the same math: equal up to float rounding on the tiny models)."""
    import torch

    from tests.conftest import stage2_ring, tiny_guidance_cfg
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance, noise_prediction

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import refine_views as bench

    g = FaceIDControlNetGuidance({**tiny_guidance_cfg(tiny_dir), "controlnet_stream": False})  # as stage 2 runs
    g.load("cpu")
    r, inputs = stage2_ring(g)
    names = [*bench.VARIANTS, *bench.REFINER_VARIANTS]
    timings, outputs = bench.time_variants(r, *inputs, names, repeats=1, chunk=3)
    assert list(timings) == [
        "ours_default",
        "ours_channels_last",
        "ours_cudnn_benchmark",
        "ours_two_streams",
        "ours_decode_apart",
    ]
    assert all(len(t["seconds"]) == 1 and t["finite"] and t["speedup_vs_default_best"] > 0 for t in timings.values())
    assert timings["ours_default"]["speedup_vs_default_best"] == 1.0
    for name in ("ours_channels_last", "ours_cudnn_benchmark", "ours_two_streams"):
        torch.testing.assert_close(outputs[name], outputs["ours_default"], rtol=0, atol=1e-5)
    # decoding each batch whole or in its own batches: the same decode of the same latents, view by view
    torch.testing.assert_close(outputs["ours_decode_apart"], outputs["ours_default"], rtol=0, atol=0)
    # undone: contiguous weights again, cuDNN's search off, the one-piece noise prediction back, own decodes
    assert g.unet.conv_in.weight.is_contiguous() and not torch.backends.cudnn.benchmark
    assert g._denoise is noise_prediction and not r.decode_apart


def _trace(path, events):
    import gzip
    import json

    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


def test_profile_summary_gives_kernel_time_to_operators_and_idle_gaps_to_the_late_host_frames(tmp_path, monkeypatch):
    """``bench/profile_summary.py`` on a hand-made trace of one step: two kernels launched inside a Python
    frame of the step, then an idle GPU while the host prepared the next batch, then a third kernel
    launched from there (times in µs, as torch.profiler writes them)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from profile_summary import load_events, summarize

    def x(cat, name, ts, dur, tid=1, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}

    step, batch = "threestudio/systems/base.py(273): training_step", "threestudio/utils/gpu.py(25): to_device_async"
    events = [
        x("python_function", step, 0, 100),
        x("cpu_op", "aten::conv", 10, 10),
        x("cuda_runtime", "cudaLaunchKernel", 12, 2, correlation=1),
        x("cuda_runtime", "cudaLaunchKernel", 30, 2, correlation=2),  # no operator around it
        x("python_function", batch, 200, 100),
        x("cuda_runtime", "cudaMemcpyAsync", 290, 2, correlation=3),
        x("kernel", "conv_kernel", 20, 40, tid=7, correlation=1),
        x("kernel", "add_kernel", 50, 30, tid=7, correlation=2),  # overlaps the first: busy 20..80
        x("gpu_memcpy", "Memcpy HtoD", 300, 20, tid=7, correlation=3),  # after 220 µs of idle GPU
        {"ph": "i", "name": "marker", "ts": 5},  # not a complete event: ignored
    ]
    s = summarize(load_events(_trace(tmp_path / "t.json.gz", events)), steps=1, frames=1)
    assert (s["gpu_span_ms"], s["gpu_busy_ms"], s["gpu_idle_ms"]) == (0.3, 0.08, 0.22)
    assert s["device_ms_by_op"] == [
        ["aten::conv", 0.04],
        [f"(no operator) {step}", 0.03],
        [f"(no operator) {batch}", 0.02],
    ]
    assert s["idle_ms_by_host_frames"] == [[batch, 0.22]] and s["idle_gaps_at_least_min"] == 1
    assert [k[:2] for k in s["kernels_ms"]] == [["conv_kernel", 0.04], ["add_kernel", 0.03], ["Memcpy HtoD", 0.02]]
    s2 = summarize(load_events(_trace(tmp_path / "t2.json.gz", events)), steps=2)
    assert s2["gpu_busy_ms"] == 0.04  # per step
    with pytest.raises(ValueError, match="no GPU kernels"):
        summarize([e for e in events if e.get("cat") != "kernel" and e.get("cat") != "gpu_memcpy"])


def test_profile_launch_records_the_timeline_and_a_window_trace_of_a_real_launch(tiny_dir, tmp_path):
    """``bench/profile_launch.py`` around a tiny stage-1 launch: the run succeeds, its timeline names the
    launch, the model loading and the profiled window, and the window's trace is a readable Chrome
    trace of that step (CPU operators; a CPU machine records no kernels). A bad window spec is refused."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import tiny_stage1_args

    env = dict(os.environ, GIP_PROFILE_OUT=str(tmp_path / "prof"), GIP_PROFILE_WINDOWS="AHDSSystem:1:1")
    args = [sys.executable, str(REPO / "bench" / "profile_launch.py"), str(REPO / "launch.py")]
    out = subprocess.run([*args, *tiny_stage1_args(tmp_path / "run", steps=3)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    events = json.loads((tmp_path / "prof" / "events.json").read_text())
    names = [e["ev"] for e in events]
    for name in ("torch_imported", "guidance_load", "on_train_start", "first_step_done", "profile", "launch", "exit"):
        assert name in names, names
    assert names.index("first_step_done") < names.index("profile") < names.index("exit")
    (window,) = [e for e in events if e["ev"] == "profile"]
    assert (window["window"], window["steps"]) == ("AHDSSystem_steps1", 1)
    sys.path.insert(0, str(REPO / "bench"))
    from profile_summary import load_events

    trace = load_events(tmp_path / "prof" / "AHDSSystem_steps1.trace.json.gz")
    ops = {e["name"] for e in trace if e.get("cat") == "cpu_op"}
    assert "aten::mul" in ops and any("optimization_step" in e["name"] for e in trace)
    bad = subprocess.run(args, env=dict(env, GIP_PROFILE_WINDOWS="AHDSSystem:x"), capture_output=True, text=True)
    assert bad.returncode != 0 and "expected Stage:first:count" in bad.stderr
