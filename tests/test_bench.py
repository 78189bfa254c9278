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
    from threestudio.models.guidance.faceid_controlnet import FaceIDControlNetGuidance

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import refine_views as bench

    g = FaceIDControlNetGuidance(tiny_guidance_cfg(tiny_dir))
    g.load("cpu")
    r, inputs = stage2_ring(g)
    timings, outputs = bench.time_variants(r, *inputs, list(bench.VARIANTS), repeats=1)
    assert list(timings) == ["ours_default", "ours_channels_last", "ours_cudnn_benchmark"]
    assert all(len(t["seconds"]) == 1 and t["finite"] and t["speedup_vs_default_best"] > 0 for t in timings.values())
    assert timings["ours_default"]["speedup_vs_default_best"] == 1.0
    for name in ("ours_channels_last", "ours_cudnn_benchmark"):
        torch.testing.assert_close(outputs[name], outputs["ours_default"], rtol=0, atol=1e-5)
    # undone: contiguous weights again, cuDNN's search off
    assert g.unet.conv_in.weight.is_contiguous() and not torch.backends.cudnn.benchmark
