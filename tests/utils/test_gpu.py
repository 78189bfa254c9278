import pytest
import torch

from threestudio.utils.gpu import BatchSizer, MemoryBudget, is_out_of_memory, oom_message, resolve_dtype, same_device

GIB = 2**30


class Budget(MemoryBudget):
    """A limited budget of ``total`` bytes with ``used`` bytes allocated (the CUDA calls replaced)."""

    def __init__(self, total, used):
        super().__init__("cpu")
        self.limited, self.bytes, self.used = True, int(total), int(used)

    def allocated(self):
        return self.used


@pytest.mark.parametrize("bf16_ok,want", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_follows_the_card(monkeypatch, bf16_ok, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)  # a card without bf16 (V100, T4)
    assert resolve_dtype(torch.device("cuda", 0), "auto") == want
    assert resolve_dtype("cpu", "auto") == torch.float32
    assert resolve_dtype("cuda", "fp32") == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("cpu", "half")


def test_fit_counts_items_into_headroom():
    b = Budget(24 * GIB, 10 * GIB)
    # 90% of the 14 GiB headroom, minus 2 GiB reserved for later, in 1.5 GiB items
    assert b.fit(int(1.5 * GIB), most=100, reserve=2 * GIB) == int((0.9 * 14 - 2) / 1.5)
    assert b.fit(int(1.5 * GIB), most=3) == 3  # never more than asked
    assert Budget(24 * GIB, 23.9 * GIB).fit(GIB, most=8) == 1  # always at least one
    assert MemoryBudget("cpu").fit(GIB, most=24) == 24  # CPU: no budget
    assert MemoryBudget("cpu").allocator_counts() == {}  # and no allocator counters


def test_allocator_settings_are_recorded_as_given(monkeypatch):
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert MemoryBudget.allocator_settings() == {}  # the defaults
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert MemoryBudget.allocator_settings() == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:512")
    assert MemoryBudget.allocator_settings() == {
        "PYTORCH_ALLOC_CONF": "max_split_size_mb:512",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }


def test_batch_sizer_measures_first_then_fills():
    b = Budget(24 * GIB, 8 * GIB)
    s = BatchSizer(b)
    assert s.size(24) == 1  # unmeasured: one item first
    s.per_item = 2 * GIB  # what tracking the first batch would have measured
    assert s.size(24) == int(0.9 * 16 / 2)
    assert s.size(24, reserve=7 * GIB) == int((0.9 * 16 - 7) / 2)
    assert BatchSizer(b, fixed=3).size(24) == 3 and BatchSizer(b, fixed=3).size(2) == 2
    assert BatchSizer(None).size(24) == 24 and BatchSizer(MemoryBudget("cpu")).size(7) == 7
    s.most = 3  # after a batch ran out of memory (attempt): never more than that
    assert s.size(24) == 3 and s.size(2) == 2


def test_an_unmeasured_batch_is_never_retried():
    """``attempt`` hands back the result, and re-raises what it may not retry: without a limited budget
    (CPU) an out-of-memory error is the caller's, as is any other error."""
    assert BatchSizer(None).attempt(4, lambda: "done") == (True, "done")

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(torch.OutOfMemoryError):
        BatchSizer(MemoryBudget("cpu")).attempt(4, oom)
    with pytest.raises(ValueError):
        BatchSizer(None).attempt(4, lambda: int("x"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_batch_that_runs_out_of_memory_is_retried_smaller():
    """Under a real cap, a batch too big for it comes back ``(False, None)`` with later sizes capped at
    half of it, and the smaller batch then runs."""
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.empty_cache()
    b = MemoryBudget(dev, (torch.cuda.memory_reserved(dev) + GIB) / GIB)
    b.apply()
    try:
        s = BatchSizer(b)
        chunk = 400 * 2**20

        def batch(n):
            return lambda: torch.empty(n * chunk, dtype=torch.uint8, device=dev)

        before = b.allocator_counts()
        assert s.attempt(3, batch(3)) == (False, None) and s.most == 1
        after = b.allocator_counts()  # the refused allocation is counted (it may have been retried first)
        assert after["ooms"] == before["ooms"] + 1 and after["alloc_retries"] >= before["alloc_retries"]
        done, x = s.attempt(1, batch(1))
        assert done and x.numel() == chunk and s.per_item >= chunk
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)


def test_oom_detection_and_message(tmp_path):
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(ValueError("bad"))
    msg = oom_message("stage 2 (view-consistent refinement)", "lower X", tmp_path, 22.0)
    assert "stage 2" in msg and "22.0 GiB" in msg and "lower X" in msg and "no checkpoint" in msg


def test_same_device_reads_a_bare_name_as_the_one_device_it_stands_for():
    """``torch.device``'s ``==`` compares the index as written; ``same_device`` compares devices (the bare
    ``cuda`` against ``cuda:N`` is the GPU test of the stage-1 -> stage-2 hand-over)."""
    assert same_device("cpu", torch.device("cpu", 0)) and torch.device("cpu") != torch.device("cpu", 0)
    assert same_device("cuda", "cuda") and same_device("cuda:1", torch.device("cuda", 1))
    assert not same_device("cuda:0", "cuda:1")
    assert not same_device("cpu", "cuda") and not same_device("cuda:0", "cpu")
