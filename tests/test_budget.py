"""GPU memory budget (DESIGN.md §8): batch sizing arithmetic, and the one message a stage prints when it
still runs out of memory (nothing written is lost)."""

import torch

from tests.test_launch import tiny_args, trials
from threestudio.utils.gpu import BatchSizer, MemoryBudget, is_out_of_memory, oom_message

GIB = 2**30


class Budget(MemoryBudget):
    """A limited budget of ``total`` bytes with ``used`` bytes allocated (the CUDA calls replaced)."""

    def __init__(self, total, used):
        super().__init__("cpu")
        self.limited, self.bytes, self.used = True, total, used

    def allocated(self):
        return self.used


def test_fit_counts_items_into_headroom():
    b = Budget(24 * GIB, 10 * GIB)
    # 90% of the 14 GiB headroom, minus 2 GiB reserved for later, in 1.5 GiB items
    assert b.fit(int(1.5 * GIB), most=100, reserve=2 * GIB) == int((0.9 * 14 - 2) / 1.5)
    assert b.fit(int(1.5 * GIB), most=3) == 3  # never more than asked
    assert Budget(24 * GIB, 23.9 * GIB).fit(GIB, most=8) == 1  # always at least one
    assert MemoryBudget("cpu").fit(GIB, most=24) == 24  # CPU: no budget


def test_batch_sizer_measures_first_then_fills():
    b = Budget(24 * GIB, 8 * GIB)
    s = BatchSizer(b)
    assert s.size(24) == 1  # unmeasured: one item first
    s.per_item = 2 * GIB  # what tracking the first batch would have measured
    assert s.size(24) == int(0.9 * 16 / 2)
    assert s.size(24, reserve=7 * GIB) == int((0.9 * 16 - 7) / 2)
    assert BatchSizer(b, fixed=3).size(24) == 3 and BatchSizer(b, fixed=3).size(2) == 2
    assert BatchSizer(None).size(24) == 24 and BatchSizer(MemoryBudget("cpu")).size(7) == 7


def test_oom_detection_and_message(tmp_path):
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(ValueError("bad"))
    msg = oom_message("stage 2 (view-consistent refinement)", "lower X", tmp_path, 22.0)
    assert "stage 2" in msg and "22.0 GiB" in msg and "lower X" in msg and "no checkpoint" in msg


def test_stage_out_of_memory_is_one_message_and_keeps_outputs(tiny_dir, tmp_path, monkeypatch, capsys):
    import launch
    from threestudio.systems.ahds import AHDSSystem

    orig = AHDSSystem.train_step

    def boom(self, cams, step, optimizer):
        if step >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return orig(self, cams, step, optimizer)

    monkeypatch.setattr(AHDSSystem, "train_step", boom)
    rc = launch.main([str(a) for a in tiny_args(tmp_path, steps=6)])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "stage 1 (AHDS) ran out of GPU memory" in line and "system.densify.max_points" in line
    (trial,) = trials(tmp_path)
    assert str(trial / "ckpts" / "last.ckpt") in line and "--resume" in line
    assert (trial / "ckpts" / "last.ckpt").is_file() and (trial / "configs" / "parsed.yaml").is_file()
