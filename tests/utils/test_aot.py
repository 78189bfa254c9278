"""Compiled functions kept on disk (threestudio.utils.aot): compiled once per signature, loaded by later
processes, recompiled when what was baked in changes, and never a wrong or missing result."""

import json
import logging

import pytest
import torch

from threestudio.utils.aot import DiskCompiled, DiskCompiledModule


class Block(torch.nn.Module):
    """Conv + GroupNorm + SiLU with a Python float read while tracing (like an IP-Adapter scale)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.scale = 1.0

    def forward(self, x):
        return torch.nn.functional.silu(self.norm(self.conv(x))) * self.scale


def block_fn(block, x, shift):
    return block(x) + shift


def breaking_fn(block, x, shift):
    if float(x.sum()) > -1e9:  # data-dependent branch: a graph break, not traceable with fullgraph
        return block(x) + shift
    return x


def _identity(x):
    return x * 1


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """A backend whose compiled functions this torch can save: ``aot_eager`` (fast; torch >= 2.13), else
    ``inductor`` (torch 2.11 saves only Inductor's output)."""
    for name in ("aot_eager", "inductor"):
        f = DiskCompiled(_identity, "probe", cache_dir=tmp_path_factory.mktemp(name), backend=name)
        f(torch.ones(2))
        if f.last_source == "compiled":
            return name
    pytest.skip("this torch cannot save compiled functions (torch.compile's aot_compile)")


def _compiled(tmp_path, backend, fn=block_fn):
    torch._dynamo.reset()  # as a new process: nothing traced in memory
    return DiskCompiled(fn, "block", cache_dir=tmp_path, backend=backend)


def _files(tmp_path):
    return sorted(p.name for p in tmp_path.glob("block-*.bin"))


@pytest.fixture
def block():
    torch.manual_seed(0)
    return Block().eval().requires_grad_(False)


def test_compiled_once_then_loaded_by_a_new_process(tmp_path, backend, block):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    up = torch.randn(2, 8, 8, 8)
    ref = block_fn(block, x, 0.5)
    (ref * up).sum().backward()
    ref_grad, x.grad = x.grad.clone(), None

    first = _compiled(tmp_path, backend)
    out = first(block, x, 0.5)
    assert first.last_source == "compiled" and len(_files(tmp_path)) == 1
    key = first.cache_key((block, x, 0.5))  # written beside the file, to compare when a run misses
    assert json.loads(first.cache_path(key).with_suffix(".json").read_text()) == key
    assert key["args"][2] == ["value", "float", 0.5] and key["args"][1][1] == [2, 3, 8, 8]
    torch.testing.assert_close(out, ref)
    (out * up).sum().backward()  # the saved function carries its backward
    torch.testing.assert_close(x.grad, ref_grad)

    assert [(e["name"], e["source"]) for e in first.events] == [(first.name, "compiled")]  # one signature
    assert first.events[0]["prepare_s"] > 0 and first.events[0]["first_call_s"] >= 0
    x.grad = None
    again = _compiled(tmp_path, backend)
    out = again(block, x, 0.5)
    assert again.last_source == "disk" and len(_files(tmp_path)) == 1
    again(block, x, 0.5)  # the same signature again: nothing prepared, no new event
    assert [e["source"] for e in again.events] == ["disk"]
    torch.testing.assert_close(out, ref)
    (out * up).sum().backward()
    torch.testing.assert_close(x.grad, ref_grad)


def test_what_was_baked_in_is_part_of_the_key(tmp_path, backend, block):
    x = torch.randn(2, 3, 8, 8)
    f = _compiled(tmp_path, backend)
    with torch.no_grad():
        base = f(block, x, 0.5)
        f(block, torch.randn(1, 3, 8, 8), 0.5)  # another shape
        assert f.last_source == "compiled" and len(_files(tmp_path)) == 2
        shifted = f(block, x, 0.25)  # another constant argument
        assert f.last_source == "compiled" and len(_files(tmp_path)) == 3
        torch.testing.assert_close(shifted, base - 0.25)
        block.scale = 2.0  # a module attribute read while tracing
        f.clear()
        out = f(block, x, 0.5)
        assert f.last_source == "compiled" and len(_files(tmp_path)) == 4
        torch.testing.assert_close(out, block_fn(block, x, 0.5))
        assert (out - base).abs().max() > 0.1
        block.scale = 1.0
        g = _compiled(tmp_path, backend)  # the first signature again: found on disk
        torch.testing.assert_close(g(block, x, 0.5), base)
        assert g.last_source == "disk"
    g(block, x, 0.5)  # grad mode is part of the key too
    assert g.last_source == "compiled" and len(_files(tmp_path)) == 5


def test_a_dynamic_batch_is_one_compiled_function_for_every_batch_size(tmp_path, backend, block):
    """``dynamic_batch``: one file serves every batch size (compiled, then loaded by a new process),
    with the numbers of the eager function; other dims are still part of the key."""
    xs = [torch.randn(n, 3, 8, 8) for n in (3, 2, 5)]
    with torch.no_grad():
        torch._dynamo.reset()
        f = DiskCompiled(block_fn, "block", cache_dir=tmp_path, backend=backend, dynamic_batch=(1,))
        for x in xs:
            torch.testing.assert_close(f(block, x, 0.5), block_fn(block, x, 0.5))
            assert f.last_source == "compiled" and len(_files(tmp_path)) == 1
        assert f.cache_key((block, xs[0], 0.5))["args"][1][1] == [None, 3, 8, 8]
        torch._dynamo.reset()
        g = DiskCompiled(block_fn, "block", cache_dir=tmp_path, backend=backend, dynamic_batch=(1,))
        torch.testing.assert_close(g(block, xs[2], 0.5), block_fn(block, xs[2], 0.5))
        assert g.last_source == "disk"
        g(block, torch.randn(2, 3, 4, 4), 0.5)  # another image size: another file
        assert g.last_source == "compiled" and len(_files(tmp_path)) == 2


def test_an_unreadable_file_is_compiled_again(tmp_path, backend, block, caplog):
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _compiled(tmp_path, backend)(block, x, 0.5)
        (path,) = tmp_path.glob("block-*.bin")
        path.write_bytes(b"not a compiled function")
        f = _compiled(tmp_path, backend)
        with caplog.at_level(logging.WARNING, logger="threestudio.utils.aot"):
            out = f(block, x, 0.5)
    assert f.last_source == "compiled" and "could not be loaded" in caplog.text
    torch.testing.assert_close(out, block_fn(block, x, 0.5))
    assert path.read_bytes() != b"not a compiled function"


def test_a_function_with_a_graph_break_falls_back_to_plain_compile(tmp_path, backend, block, caplog):
    x = torch.randn(2, 3, 8, 8)
    f = _compiled(tmp_path, backend, breaking_fn)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="threestudio.utils.aot"):
        out = f(block, x, 0.5)
    assert f.last_source == "fallback" and "plain torch.compile" in caplog.text
    torch.testing.assert_close(out, block_fn(block, x, 0.5))
    assert _files(tmp_path) == []


def test_arguments_must_be_tensors_modules_or_constants(tmp_path, backend, block):
    with pytest.raises(TypeError, match="got dict"):
        _compiled(tmp_path, backend)(block, {"x": torch.zeros(1)}, 0.5)


def test_module_wrapper_is_the_module(tmp_path, backend, block):
    x = torch.randn(2, 3, 8, 8)
    torch._dynamo.reset()
    wrapped = DiskCompiledModule(block, "block", cache_dir=tmp_path, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), block(x))
    assert wrapped.compiled.last_source == "compiled" and len(_files(tmp_path)) == 1
