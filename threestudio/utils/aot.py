"""Compiled functions kept on disk between runs (``torch.compile``'s ahead-of-time path).

``torch.compile`` keeps the kernels it generates in Inductor's on-disk cache, but every new process
still traces the Python code again with Dynamo before it can look them up. For the stage-1 UNet +
ControlNet that is about 17 s of a 22 s first step on an H200. :class:`DiskCompiled` compiles a
function once per input signature with ``torch.compile(fn, fullgraph=True).aot_compile(...)`` and
saves the whole result: Dynamo's bytecode, the compiled graph (forward and, when an input needs a
gradient, backward) and its kernels. It goes to ``$GIP_CACHE_DIR/aot``. A later process loads the
file instead of tracing: on an H200 the stage-1 first step then takes 5-8 s instead of 17-25 s. The
numbers are those of ``torch.compile``: only when the compilation happens changes.

A saved function checks only its tensors at call time (shape, stride, dtype, device, ``requires_grad``
of the arguments and of the modules' parameters, buffers and tensor attributes). Everything else
Dynamo read while tracing is baked in, so it all goes into the file's key instead:

* the arguments' signature: tensor layouts, the values of ``bool``/``int``/``float``/``str``/``None``
  arguments, and for each ``nn.Module`` argument the classes, the simple attributes
  (``bool``/``int``/``float``/``str``, lists of them, e.g. attention heads or IP-Adapter scales), the
  config dicts, the forward hooks and the tensor layouts of every submodule and attention processor;
* the source files of the function and of every class in those modules, and the versions of torch,
  Python and the packages those classes come from;
* the GPU model, the compile options and :func:`global_state` (grad mode, SDPA backends, TF32).

Arguments named in ``dynamic_batch`` are compiled with a symbolic dim 0: one file serves every
batch size (the stage-1 noise prediction runs 8 to 12 rows, :mod:`~threestudio.models.guidance.faceid_controlnet`).

A module whose simple attributes change after the first call (e.g. a new IP-Adapter scale) needs
:meth:`DiskCompiled.clear`; the next call then finds or compiles the right file. State that is neither an
argument nor an attribute of a module argument (a global, or an attribute of another object read by
a hook) must not change what the function computes for the same key.

The files are Python pickles written by this process: load them only from a cache directory you
own, as for Inductor's own cache (``$TORCHINDUCTOR_CACHE_DIR``). They are never shared files.

When this torch has no ``aot_compile``, or tracing with ``fullgraph=True`` fails, the function is
compiled with plain ``torch.compile`` instead (the same numbers, traced again in every process) and
one warning says why.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from threestudio.utils.io import atomic_path, atomic_write_text, cache_root

log = logging.getLogger(__name__)

FORMAT = "gip-aot-1"
"""Changes whenever what the key covers or the guard policy changes (old files are then ignored)."""
_SIMPLE = (bool, int, float, str, type(None))


def keep_tensor_guards(entries) -> list[bool]:
    """Dynamo guard filter: keep the guards on tensors (layout, dtype, device, grad), drop the rest.
    Those others (module identities, Python constants, globals) cannot be saved; the file's key covers
    what they checked (module docstring)."""
    return [e.guard_type == "TENSOR_MATCH" for e in entries]


@functools.cache
def _file_hash(path: str | None) -> str:
    if not path:
        return "?"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "?"


def _package_version(module_name: str) -> str:
    top = module_name.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@functools.cache
def _class_id(cls: type) -> tuple[str, str, str]:
    try:
        src = inspect.getsourcefile(cls)
    except TypeError:  # built-in class
        src = None
    return f"{cls.__module__}.{cls.__qualname__}", _package_version(cls.__module__), _file_hash(src)


def tensor_spec(t: torch.Tensor) -> list:
    """[shape, stride, dtype, device type, requires_grad] of a tensor (JSON-serialisable)."""
    return [list(t.shape), list(t.stride()), str(t.dtype), t.device.type, bool(t.requires_grad)]


def _spec(t: torch.Tensor, dynamic: bool) -> list:
    """:func:`tensor_spec`, with the size of dim 0 left out (``None``) when it is a dynamic batch size."""
    spec = tensor_spec(t)
    if dynamic:
        spec[0] = [None, *spec[0][1:]]
    return spec


def _simple(v: Any):
    """v if it is a simple constant (or a list/tuple of them), a tensor's spec, else None."""
    if isinstance(v, _SIMPLE):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, _SIMPLE) for x in v):
        return list(v)
    if isinstance(v, torch.Tensor):
        return ["tensor", *tensor_spec(v)]
    return None


def _object_state(obj: Any) -> dict:
    """Simple attributes, config and forward hooks of one module or attention processor."""
    state = {}
    for k, v in sorted(vars(obj).items()):
        s = _simple(v)
        if s is not None:
            state[k] = s
    config = getattr(obj, "config", None)
    if isinstance(config, dict):  # diffusers' FrozenDict; private keys hold paths and versions
        state["config"] = json.dumps(
            {k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=str
        )
    for kind in ("_forward_hooks", "_forward_pre_hooks"):
        hooks = getattr(obj, kind, None)
        if hooks:
            state[kind] = [getattr(h, "__qualname__", type(h).__qualname__) for h in hooks.values()]
    return state


def module_fingerprint(module: torch.nn.Module) -> dict:
    """What a compiled call of ``module`` depends on besides the parameter values (module docstring)."""
    classes: dict[str, tuple[str, str, str]] = {}
    parts = []
    for name, sub in module.named_modules(remove_duplicate=False):
        objs = [sub]
        proc = getattr(sub, "processor", None)  # diffusers attention processors (not always modules)
        if proc is not None and not isinstance(proc, torch.nn.Module):
            objs.append(proc)
        for o in objs:
            cid = _class_id(type(o))
            classes[cid[0]] = cid
            parts.append([name, cid[0], _object_state(o)])
    tensors = [[n, *tensor_spec(t)] for n, t in (*module.named_parameters(), *module.named_buffers())]
    return {"classes": sorted(map(list, classes.values())), "modules": parts, "tensors": tensors}


def global_state() -> tuple:
    """Process state a trace depends on besides the arguments: grad mode, the enabled SDPA backends
    (``torch.nn.attention.sdpa_kernel`` sets them), TF32 and determinism settings."""
    b = torch.backends
    return (
        torch.is_grad_enabled(),
        b.cuda.flash_sdp_enabled(),
        b.cuda.mem_efficient_sdp_enabled(),
        b.cuda.math_sdp_enabled(),
        b.cuda.cudnn_sdp_enabled(),
        torch.get_float32_matmul_precision(),
        b.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
    )


def _memory_key(a: Any, dynamic: bool = False):
    if isinstance(a, torch.Tensor):
        return ("t", *map(str, _spec(a, dynamic)))
    if isinstance(a, torch.nn.Module):
        return ("m", id(a))
    if isinstance(a, _SIMPLE):
        return ("v", type(a).__name__, a)
    raise TypeError(
        f"DiskCompiled arguments must be tensors, nn.Modules or bool/int/float/str/None, got {type(a).__name__}"
    )


class DiskCompiled:
    """``fn(*args)`` compiled once per input signature and kept on disk (module docstring).

    Args:
        fn: a module-level function of positional arguments (tensors, ``nn.Module``s and simple
            constants) that Dynamo can trace without graph breaks and that changes no Python state. It
            is saved by reference: decorate it, and every function of this package it calls, with
            ``typing.no_type_check``, so that the tests' jaxtyping import hook does not wrap them (the
            wrapper's memo stack is Python state a saved function cannot replay).
        name: file-name prefix in the cache directory.
        options: Inductor options, as for ``torch.compile(options=...)``.
        cache_dir: where the files go (default ``$GIP_CACHE_DIR/aot``).
        backend: the ``torch.compile`` backend (``inductor``; tests use ``aot_eager``).
        dynamic_batch: positions of the tensor arguments whose dim 0 (a batch of rows) may change from
            call to call: they are compiled with a symbolic dim 0 (``torch._dynamo.mark_dynamic``), so
            one compiled function (and one file) serves every batch size >= 2 (Dynamo specialises sizes 0
            and 1, so compile with a batch of 2 or more). The key leaves their dim-0 size out; their
            strides must not depend on it (true of dim 0 of a contiguous tensor). Every row-wise
            relation between them must hold in the traced code (e.g. they are concatenated).

    Attributes:
        last_source: where the most recently prepared signature came from: ``"disk"`` (loaded),
            ``"compiled"`` (compiled and saved now) or ``"fallback"`` (plain ``torch.compile``).
        events: one dict per prepared signature, in order: ``name``, ``source`` (as ``last_source``),
            ``prepare_s`` (host seconds to load or compile it) and ``first_call_s`` (host seconds of its
            first call: lazy kernel loading and launches; the GPU work is not waited for).
    """

    def __init__(
        self,
        fn: Callable,
        name: str,
        options: dict | None = None,
        cache_dir: str | Path | None = None,
        backend: str = "inductor",
        dynamic_batch: tuple[int, ...] = (),
    ):
        self.fn, self.name, self.backend = fn, name, backend
        self.dynamic_batch = frozenset(dynamic_batch)
        self.options = dict(options or {})
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "aot"
        self.last_source: str | None = None
        self._fns: dict[tuple, Callable] = {}
        self._fallback: Callable | None = None
        self.events: list[dict] = []

    def clear(self) -> None:
        """Forget the prepared signatures (call after changing a module argument's attributes)."""
        self._fns.clear()

    def __call__(self, *args):
        key = (global_state(), *(_memory_key(a, i in self.dynamic_batch) for i, a in enumerate(args)))
        f = self._fns.get(key)
        if f is not None:
            return f(*args)
        t0 = time.perf_counter()
        f = self._fns[key] = self._prepare(args)
        t1 = time.perf_counter()
        out = f(*args)
        self.events.append(
            {
                "name": self.name,
                "source": self.last_source,
                "prepare_s": round(t1 - t0, 3),
                "first_call_s": round(time.perf_counter() - t1, 3),
            }
        )
        return out

    def cache_key(self, args: tuple) -> dict:
        """What a compiled ``fn(*args)`` depends on besides the tensor values (module docstring); JSON."""
        spec = []
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                spec.append(["tensor", *_spec(a, i in self.dynamic_batch)])
            elif isinstance(a, torch.nn.Module):
                spec.append(["module", module_fingerprint(a)])
            else:
                spec.append(["value", type(a).__name__, a])
        devices = sorted({str(a.device) for a in args if isinstance(a, torch.Tensor) and a.is_cuda})
        gpus = [[torch.cuda.get_device_name(d), list(torch.cuda.get_device_capability(d))] for d in devices]
        key = {
            "format": FORMAT,
            "fn": [self.fn.__module__, self.fn.__qualname__, _file_hash(inspect.getsourcefile(self.fn))],
            "backend": self.backend,
            "options": sorted((k, repr(v)) for k, v in self.options.items()),
            "dynamic_batch": sorted(self.dynamic_batch),
            "torch": torch.__version__,
            "python": list(sys.version_info[:3]),
            "gpus": gpus,
            "state": list(global_state()),
            "args": spec,
        }
        return json.loads(json.dumps(key, sort_keys=True, default=str))

    def cache_path(self, key: dict) -> Path:
        """The file that holds ``fn`` compiled for the signature ``key`` (:meth:`cache_key`; it may not
        exist yet). Beside it, ``<same name>.json`` holds the key itself, to compare when a run misses."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.cache_dir / f"{self.name}-{digest}.bin"

    def _prepare(self, args: tuple) -> Callable:
        if self._fallback is not None:
            self.last_source = "fallback"
            return self._fallback
        key = self.cache_key(args)
        path = self.cache_path(key)
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    loaded = torch.compiler.load_compiled_function(f)
                self.last_source = "disk"
                return loaded
            except Exception as e:  # noqa: BLE001 - an unreadable or stale file: compile it again
                log.warning("compiled %s in %s could not be loaded (%s); compiling it again", self.name, path, e)
        options = {**self.options, "guard_filter_fn": keep_tensor_guards}
        example = list(args)
        for i in self.dynamic_batch:  # marked on views: the caller's tensors stay unmarked
            example[i] = args[i].view(args[i].shape)
            torch._dynamo.mark_dynamic(example[i], 0)
        try:
            # torch 2.11 only adds ``aot_compile`` with enable_aot_compile; float arguments are constants of the key
            with torch._dynamo.config.patch(enable_aot_compile=True, specialize_float=True):
                compiled = torch.compile(self.fn, fullgraph=True, backend=self.backend, options=options)
                aot = compiled.aot_compile((tuple(example), {}))
        except Exception as e:  # noqa: BLE001 - no aot_compile in this torch, or a graph break
            log.warning(
                "%s: torch.compile's ahead-of-time path failed (%s: %s); using plain torch.compile, "
                "which traces again in every process",
                self.name,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
            dynamic = True if self.dynamic_batch else None
            self._fallback = torch.compile(self.fn, backend=self.backend, options=self.options or None, dynamic=dynamic)
            self.last_source = "fallback"
            return self._fallback
        try:
            with atomic_path(path) as tmp:
                aot.save_compiled_function(tmp)
            atomic_write_text(path.with_suffix(".json"), json.dumps(key, sort_keys=True, indent=1))
        except Exception as e:  # noqa: BLE001 - the compiled function still works; only the next run recompiles
            log.warning("compiled %s could not be saved to %s (%s)", self.name, path, e)
        self.last_source = "compiled"
        return aot


class DiskCompiledModule(torch.nn.Module):
    """An ``nn.Module`` whose forward is ``module``'s, through :class:`DiskCompiled` (a stand-in for
    ``torch.compile(module)`` inside a parent module, e.g. a VAE's encoder)."""

    def __init__(self, module: torch.nn.Module, name: str, options: dict | None = None, **kw):
        super().__init__()
        self.module = module
        self.compiled = DiskCompiled(_call_module, name, options, **kw)

    def forward(self, *args):
        return self.compiled(self.module, *args)


@typing.no_type_check  # saved by reference: must stay this module-level object (no test-time type-check wrapper)
def _call_module(module: torch.nn.Module, *args):
    return module(*args)
