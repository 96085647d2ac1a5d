"""``EnvKernel``: where a native env's compiled step lives, so that it can run the fused epoch.

A ``NativeEnv`` subclass that declares ``env_kernel`` (a class attribute) joins the fused epoch
(``fastpg.fused``): the collect, the evaluation and the update then run as compiled loops against
its C++ step, whose interface ``fastpg/csrc/env_kernel.h`` documents (docs/env_kernels.md). The
built-in native envs name theirs in fastpg's own module; a user's env names a header of its own::

    class Spring(NativeEnv):
        env_kernel = EnvKernel("spring", header=Path(__file__).with_name("spring.h"), struct="examples::Spring")

and fastpg compiles that header with the fused collect on first use (cached like fastpg's own
kernels: ``fastpg._kernels.env_module``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["EnvKernel"]


@dataclass(frozen=True)
class EnvKernel:
    """An env kernel: its ``name`` (a C++ identifier), and for a user's env the ``header`` that
    declares it and the ``struct`` (the class template, with its namespace); built-in kernels have
    neither (they are in fastpg's own module)."""

    name: str
    header: Path | None = None
    struct: str | None = None

    def __post_init__(self) -> None:
        if (self.header is None) != (self.struct is None):
            raise ValueError(f"env kernel {self.name!r}: a header needs its struct and a struct its header")

    @property
    def builtin(self) -> bool:
        return self.header is None

    def module(self) -> ModuleType:
        """The compiled module that runs this kernel (built on first use; ``KernelBuildError``)."""
        from fastpg._kernels import env_module, kernels

        return kernels() if self.header is None else env_module(Path(self.header), self.struct, self.name)

    def describe(self) -> str:
        return self.name if self.header is None else f"{self.name} ({Path(self.header).name})"
