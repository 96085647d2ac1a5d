"""fastpg's compiled CPU kernels (``fastpg/csrc/kernels.cpp``), built on first use.

Why compiled: at small N every torch op costs a few microseconds of dispatch whatever its
arithmetic, and one epoch of the default run is some 20,000 of them; one loop in C++ does a whole
epoch's collect (env step, MLP forward, sampling, storage writes) or the update's math in one call.
``fastpg.fused`` uses them for the fused epoch, native CartPole's ``kernel="cpp"`` for its step.

The module is compiled with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja are
needed; one to two minutes on 2 cores) for this machine's CPU (``-march=native``; the name carries a
digest of the CPU's flags and of the sources and their directory, so a shared cache never hands
one CPU's build to another, a changed source is a new build, and two checkouts do not rebuild
each other's) and cached by
torch under ``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR``). Later processes import the
built module directly (a few milliseconds): the name's digest covers everything it is built from
(the sources, the flags, the CPU, torch's version), so a module built under that name is current,
and torch's build step (importing ``torch.utils.cpp_extension`` and running ninja, ~30 ms) is
skipped. A message on stderr says when a build starts. While building, the Python
environment's ``bin`` directory is put on ``PATH`` so that the ``ninja`` installed with fastpg is
found; ``PATH`` is restored afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

from fastpg.errors import KernelBuildError

__all__ = ["kernels", "env_module", "KernelBuildError", "SOURCE_DIR"]

SOURCE_DIR = Path(__file__).parent / "csrc"
# -fopenmp: at::parallel_for is an inline template that runs serially unless the extension itself
# is compiled with OpenMP; the runtime is then torch's own libgomp (already loaded by torch, same soname).
_CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi", "-fopenmp")
_LDFLAGS = ("-fopenmp",)  # tuples: torch's load appends its libraries to the list it is given
_lock = threading.Lock()
_module: ModuleType | None = None
_failure: KernelBuildError | None = None


def kernels() -> ModuleType:
    """The compiled module; built (or loaded from the cache) on the first call in a process.

    Raises ``KernelBuildError`` (every later call too) if it cannot be built here."""
    global _module, _failure
    with _lock:
        if _failure is not None:
            raise _failure
        if _module is None:
            try:
                _module = _build()
            except KernelBuildError as e:
                _failure = e
                raise
    return _module


def _digest() -> str:
    """Of this CPU's flags, the compiler flags, torch's version, the sources and where they are: a
    new name (and build directory) for each. (torch rebuilds a module whose build directory was
    last built from other paths, so two checkouts sharing one cache would rebuild at every
    alternation.)"""
    import torch

    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    built_from = platform.machine() + flags + " ".join(_CFLAGS + _LDFLAGS) + torch.__version__ + str(SOURCE_DIR)
    h = hashlib.sha1(built_from.encode())
    for path in sorted(SOURCE_DIR.iterdir()):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _build() -> ModuleType:
    name = f"fastpg_kernels_{_digest()}"
    return _built_module(name) or _load(name, [SOURCE_DIR / "kernels.cpp"], [SOURCE_DIR], "fastpg's C++ kernels")


def _extensions_root() -> Path:
    """Where torch keeps its extension builds, as ``torch.utils.cpp_extension._get_build_directory``
    computes it (without importing that module; ``tests/test_fused.py`` compares the two)."""
    import torch

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is not None:
        return Path(root)
    from torch._appdirs import user_cache_dir

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(os.path.realpath(user_cache_dir(appname="torch_extensions"))) / f"{python}_{accelerator}"


def _built_module(name: str) -> ModuleType | None:
    """fastpg's module ``name`` imported from an earlier build, or None where there is none, one is
    being built (torch's lock file is there) or it does not import (then ``_load`` builds it).
    Only for fastpg's own kernels, whose name digests every file they are built from; a user's env
    header may include files of its own, which only the build's dependency tracking sees."""
    directory = _extensions_root() / name
    library = directory / f"{name}.so"
    if not library.is_file() or (directory / "lock").exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None
    return module


def _load(name: str, sources: list[Path], includes: list[Path], what: str) -> ModuleType:
    """Build (or load from torch's cache) the extension ``name`` from ``sources``."""
    from torch.utils.cpp_extension import _get_build_directory, load

    built = (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    if not built:
        compiler = os.environ.get("CXX", "c++")  # what torch's build runs
        if shutil.which(compiler) is None:
            named = f"{compiler!r} is not found" + (" (CXX)" if "CXX" in os.environ else "")
            raise KernelBuildError(
                f"could not build {what}: no C++ compiler ({named}); install one (g++ or clang++, e.g. apt "
                "install g++), or run the generic torch path (--fused off, --env-kernel torch)"
            )
        print(f"fastpg: compiling {what} for this machine (first use only; 1-2 minutes)...",
              file=sys.stderr, flush=True)  # fmt: skip
    old_path = os.environ.get("PATH", "")
    bin_dir = os.path.dirname(sys.executable)
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    try:
        if shutil.which("ninja") is None and os.path.exists(os.path.join(bin_dir, "ninja")):
            os.environ["PATH"] = bin_dir + os.pathsep + old_path
        torch_log.setLevel(logging.ERROR)  # its compiler-compatibility box: fastpg says what failed, in one line
        return load(
            name=name,
            sources=[str(s) for s in sources],
            extra_include_paths=[str(i) for i in includes],
            extra_cflags=list(_CFLAGS),
            extra_ldflags=list(_LDFLAGS),
            verbose=False,
        )
    except Exception as e:  # compiler, ninja or headers missing: say what to do
        raise KernelBuildError(
            f"could not build {what} ({type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}); "
            "they need a C++ compiler and ninja (pip install ninja). Without them fastpg runs its generic "
            "torch path (--fused off, --env-kernel torch)."
        ) from e
    finally:
        os.environ["PATH"] = old_path
        torch_log.setLevel(level)


_env_modules: dict[tuple[str, str, str], ModuleType] = {}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRUCT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*")


def env_module(header: Path, struct: str, name: str) -> ModuleType:
    """The compiled module of a user's env kernel: ``struct`` (a class template of the interface in
    ``fastpg/csrc/env_kernel.h``, namespace included) declared in ``header``, registered as
    ``name``; it defines ``collect``, ``collect_many``, ``env_step``, ``env_reset`` and
    ``env_kernels`` as fastpg's own module does for the built-in env kernels. Built on first use
    and cached as fastpg's own kernels are (the name carries a digest of the header too).

    Raises ``KernelBuildError`` if it cannot be built (the header does not compile, no compiler)."""
    header = Path(header).resolve()
    if not _NAME.fullmatch(name) or not _STRUCT.fullmatch(struct):
        raise ValueError(f"env kernel name {name!r} and struct {struct!r} must be C++ identifiers")
    if not header.is_file():
        raise ValueError(f"env kernel header {header} does not exist")
    key = (str(header), struct, name)
    with _lock:
        if key not in _env_modules:
            digest = hashlib.sha1((_digest() + struct + name).encode() + header.read_bytes()).hexdigest()[:12]
            module = f"fastpg_env_{name}_{digest}"
            source = Path(_build_root()) / f"{module}.cpp"
            source.parent.mkdir(parents=True, exist_ok=True)
            text = f'#include "env_kernel.h"\n#include "{header}"\n\nFASTPG_ENV_MODULE({struct}, "{name}")\n'
            if not source.exists() or source.read_text() != text:
                source.write_text(text)
            what = f"the env kernel {name} ({header.name})"
            _env_modules[key] = _load(module, [source], [SOURCE_DIR, header.parent], what)
    return _env_modules[key]


def _build_root() -> str:
    """Where generated sources of env modules go: beside torch's extension builds."""
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory("fastpg_env_sources", verbose=False)
