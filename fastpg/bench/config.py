"""``BenchConfig``: what ``fastpg bench`` measures (a pure value), and its checks against the machine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastpg.config import Activation, Config, EnvKernel, Fused, choices
from fastpg.errors import ConfigError
from fastpg.preflight import check_config, check_writable_file

__all__ = ["BenchConfig", "Phase", "PHASES", "check_bench_config"]

Phase = Literal["env", "collect", "update", "train", "returns"]
PHASES = choices(Phase)
BenchBackend = Literal["torch", "vector", "sync", "async"]


@dataclass(frozen=True)
class BenchConfig:
    """Measure fastpg's throughput per phase, backend and number of envs."""

    env: str = "CartPole-v1"
    """Gymnasium environment id."""
    backends: tuple[BenchBackend, ...] = ("torch", "vector")
    """Backends to compare (sync is skipped above N = 4096, async above 64)."""
    num_envs: tuple[int, ...] = (16, 256, 4096)
    """Values of N. The defaults take a few minutes on 2 CPU cores; larger N suits a GPU (on CPU
    one update of 128 x 65536 samples takes ~30 s)."""
    num_steps: int = 128
    """T: steps per epoch (collect, update, train) and rows of the returns kernel."""
    phases: tuple[Phase, ...] = PHASES
    """Phases to measure: env, collect, update, train, returns."""
    repeats: int = 5
    """Timed repetitions per measurement (the median is reported, with min and max)."""
    warmup: int = 1
    """Untimed repetitions before timing."""
    hidden_sizes: tuple[int, ...] = (128,)
    """Policy MLP widths (the default policy of fastpg train)."""
    activation: Activation = "relu"
    """Policy hidden-layer activation."""
    env_kernel: EnvKernel = "torch"
    """Native env step on CPU: torch ops or the env kernel's compiled step."""
    fused: Fused = "auto"
    """The fast epoch where it applies (fused C++ on CPU, a CUDA graph on a GPU; see fastpg train
    --help); off measures the generic torch path."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    seed: int = 0
    """Seed of envs, policy and random actions."""
    json: Path | None = None
    """Write every figure, with the machine description, to this JSON file."""
    plot: Path | None = None
    """Write a PNG of rate against N (log axes, one line per backend, a panel per phase); needs
    matplotlib (pip install matplotlib)."""
    quiet: bool = False
    """No progress lines."""

    def __post_init__(self) -> None:
        _validate(self)

    def train_config(self, backend: str, num_envs: int) -> Config:
        """The training ``Config`` one (backend, N) cell is measured with."""
        return Config(
            env=self.env,
            backend=backend,
            num_envs=num_envs,
            num_steps=self.num_steps,
            hidden_sizes=self.hidden_sizes,
            activation=self.activation,
            env_kernel=self.env_kernel if backend == "torch" else "torch",
            fused=self.fused,
            device=self.device,
            seed=self.seed,
            eval_episodes=0,
            quiet=True,
        )

    def to_dict(self) -> dict:
        """Plain values (tuples as lists, paths as strings), for the JSON report."""
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }


def _validate(b: BenchConfig) -> None:
    def fail(field: str, detail: str) -> None:
        raise ConfigError(field, detail)

    if not b.backends or any(be not in choices(BenchBackend) for be in b.backends):
        fail(
            "backends",
            f"must be some of {', '.join(choices(BenchBackend))}; got {', '.join(map(str, b.backends)) or 'none'}",
        )
    if not b.num_envs or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in b.num_envs):
        fail("num_envs", f"must be integers >= 1, got {b.num_envs!r}")
    bad = [p for p in b.phases if p not in PHASES]
    if not b.phases or bad:
        fail("phases", f"must be some of {', '.join(PHASES)}; got {', '.join(map(str, b.phases)) or 'none'}")
    for name, low in (("num_steps", 1), ("repeats", 1), ("warmup", 0)):
        v = getattr(b, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            fail(name, f"must be an integer >= {low}, got {v!r}")
    for backend in b.backends:  # every cell's training config must be a valid value
        b.train_config(backend, b.num_envs[0])


def check_bench_config(b: BenchConfig) -> None:
    """Raise ``ConfigError`` if ``b`` cannot run here: output directories, matplotlib for the plot,
    and every cell's training config (``fastpg.preflight.check_config``)."""
    for field in ("json", "plot"):
        if getattr(b, field) is not None:
            check_writable_file(field, Path(getattr(b, field)))
    if b.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("plot", "needs matplotlib, which is not installed (pip install matplotlib)") from None
    for backend in b.backends:
        try:
            check_config(b.train_config(backend, b.num_envs[0]))
        except ConfigError as e:
            raise ConfigError("backends" if e.field == "backend" else e.field, e.detail) from None
