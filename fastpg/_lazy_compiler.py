"""torch's compiler (``torch._dynamo``), imported only when something compiles.

Importing ``torch._dynamo`` takes about a second on a 2-core machine, more than half of ``import
torch`` itself, and fastpg never compiles a graph with ``torch.compile``. Two things import it
anyway in every run, only to record something about a function for the day a graph is compiled:

- tensordict (0.6 to 0.15 at least), when it is imported: ``torch.compiler.allow_in_graph`` (puts
  a function's id in dynamo's set of functions kept whole in a graph; returns the function) and
  ``torch.compiler.assume_constant_result`` (sets an attribute; returns the function), at module
  level;
- ``torch.optim.Optimizer``'s first ``add_param_group`` (from its constructor), ``zero_grad``,
  ``state_dict`` and ``load_state_dict``: ``torch._disable_dynamo`` wrappers, which import dynamo
  on their first call to build ``torch._dynamo.disable(fn)``, and keep it in ``fn.__dynamo_disable``.
  Outside a compiled graph that wrapper only calls ``fn``.

Here both wait until dynamo exists, with the same result once it does:

- tensordict is imported while those two names of ``torch.compiler`` stand for recorders that
  return each function unchanged and keep it (the originals are put back right after);
- the four optimizer methods' ``fn.__dynamo_disable`` is set to ``fn`` itself (what the wrapper
  does outside a graph, without the import);
- an import hook (it removes itself) waits for the first import of ``torch._dynamo``, by anyone,
  and then makes the kept marks with dynamo's own functions and removes the optimizer entries, so
  that their next call builds the real ``torch._dynamo.disable(fn)``: all before any graph can be
  compiled. A program that compiles tensordict or optimizer code afterwards sees what a plain
  import gives it.

Where dynamo is already imported, or torch's wrappers are not of the shape described (another
torch version), nothing is deferred: a plain import, one second slower. Every fastpg module takes
``TensorDict`` from here; ``benchmarks/startup.py`` measures the gain and ``tests/test_startup.py``
holds the marks to a plain import's.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.compiler

__all__ = ["TensorDict", "tensordict", "pending", "OPTIMIZER_METHODS"]

_MARKS = ("allow_in_graph", "assume_constant_result")
OPTIMIZER_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_CACHE = "__dynamo_disable"  # where torch._disable_dynamo's wrapper keeps dynamo.disable(fn)
_lock = threading.RLock()
_marks: list[tuple[str, Callable[..., Any]]] = []  # (which, function) for dynamo, in order
_disables: list[Callable[..., Any]] = []  # optimizer functions whose cache holds themselves
_dynamo_ready = "torch._dynamo" in sys.modules


def pending() -> dict[str, list[Callable[..., Any]]]:
    """What waits for dynamo: the tensordict functions to mark, by mark, and the optimizer
    functions whose ``torch._dynamo.disable`` wrapper is not built yet."""
    with _lock:
        out: dict[str, list[Callable[..., Any]]] = {which: [] for which in _MARKS}
        for which, fn in _marks:
            out[which].append(fn)
        out["disable"] = list(_disables)
        return out


def _recorder(which: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def mark(fn: Any) -> Any:
        with _lock:
            if not _dynamo_ready:
                _marks.append((which, fn))
                return fn
        return original(fn)

    mark.__name__ = mark.__qualname__ = which
    mark.__doc__ = f"torch.compiler.{which}, made when torch._dynamo is first imported (fastpg._lazy_compiler)."
    return mark


def _on_dynamo(dynamo: Any) -> None:
    """Dynamo has just been imported: make the kept marks, drop the optimizer entries."""
    global _dynamo_ready
    with _lock:
        for which, fn in _marks:
            getattr(dynamo, which)(fn)
        for fn in _disables:
            if fn.__dict__.get(_CACHE) is fn:
                del fn.__dict__[_CACHE]
        _marks.clear()
        _disables.clear()
        _dynamo_ready = True


class _WhenDynamoLoads(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``torch._dynamo`` as the path finder does, and calls ``_on_dynamo`` once it has run."""

    def __init__(self) -> None:
        self._loader: Any = None

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "torch._dynamo" or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)  # one import only
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        module.__spec__.loader = module.__loader__ = self._loader
        _on_dynamo(module)


def _import_tensordict() -> Any:
    if _dynamo_ready or "tensordict" in sys.modules:
        import tensordict

        return tensordict
    originals = {which: getattr(torch.compiler, which) for which in _MARKS}
    try:
        for which, original in originals.items():
            setattr(torch.compiler, which, _recorder(which, original))
        import tensordict
    finally:
        for which, original in originals.items():
            setattr(torch.compiler, which, original)
    return tensordict


def _defer_optimizer_disables() -> None:
    probe = torch._disable_dynamo(lambda: None)
    if _dynamo_ready or _CACHE not in probe.__code__.co_names:  # another torch: leave it as it is
        return
    for name in OPTIMIZER_METHODS:
        wrapper = torch.optim.Optimizer.__dict__.get(name)
        fn = getattr(wrapper, "__wrapped__", None)
        if getattr(wrapper, "__code__", None) is probe.__code__ and fn is not None and _CACHE not in fn.__dict__:
            fn.__dict__[_CACHE] = fn
            _disables.append(fn)


with _lock:
    tensordict = _import_tensordict()
    _defer_optimizer_disables()
    if "torch._dynamo" in sys.modules and not _dynamo_ready:  # loaded after all, meanwhile
        _on_dynamo(sys.modules["torch._dynamo"])
    elif (_marks or _disables) and not any(isinstance(f, _WhenDynamoLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenDynamoLoads())
TensorDict = tensordict.TensorDict
