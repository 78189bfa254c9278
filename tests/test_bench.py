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
