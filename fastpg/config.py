"""The run configuration: one frozen dataclass, validated on construction.

The CLI is generated from this class by tyro; every field's docstring is its ``--help`` text, and
its name in kebab case is the flag (``num_envs`` -> ``--num-envs``). An invalid ``Config`` cannot be
built, from the command line or from Python: ``__post_init__`` raises ``ConfigError`` naming the
field, the value and what is allowed. Checks that need the environment's spaces (an option that only
applies to continuous actions, say) run when the environment is built and raise the same error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Config", "ConfigError", "BACKENDS", "ACTIVATIONS"]

BACKENDS = ("auto", "torch", "vector", "sync", "async")
ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "silu")
Backend = Literal["auto", "torch", "vector", "sync", "async"]
Activation = Literal["tanh", "relu", "elu", "gelu", "silu"]


class ConfigError(ValueError):
    """A configuration value is not allowed: ``str(e)`` is ``"field: detail"``."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


@dataclass(frozen=True)
class Config:
    """Train a policy with vectorized REINFORCE."""

    env: str = "CartPole-v1"
    """Gymnasium environment id (any registered id with Discrete or Box actions)."""
    backend: Backend = "auto"
    """How to step the env: torch (native, on the training device), vector (gymnasium's own
    vectorized env), sync (SyncVectorEnv), async (AsyncVectorEnv, one process per env), or auto
    (the fastest available, in that order)."""
    env_dtype: Literal["float32", "float64"] = "float32"
    """Float dtype of a native torch env's state and arithmetic (backend torch only; gymnasium
    backends compute in numpy and hand over float32 observations)."""
    env_kernel: Literal["torch", "cpp"] = "torch"
    """Step implementation of native CartPole on CPU: torch (torch ops) or cpp (one fused C++
    loop, compiled on first use, about a minute, then cached; several times faster at small N)."""
    num_envs: int = 16
    """N: environment copies stepped in lockstep."""
    num_steps: int = 512
    """T: steps per environment per epoch (one update per epoch)."""
    max_env_steps: int = 5_000_000
    """Training budget in valid environment steps (reset steps not counted)."""
    max_epochs: int | None = None
    """Optional training budget in epochs (stops at whichever budget comes first)."""
    target_return: float | None = None
    """Stop when the mean return of the latest 100 finished episodes reaches this and an
    evaluation of --eval-episodes fresh episodes confirms it (default: the env spec's
    reward_threshold; no early stop if it has none)."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    lr: float = 1e-2
    """Adam learning rate."""
    hidden_sizes: tuple[int, ...] = (128,)
    """Hidden layer widths of the MLP policy (and of the value network)."""
    activation: Activation = "relu"
    """Hidden-layer activation."""
    normalize_returns: bool = True
    """Normalize the advantage (the return, minus the baseline if any) to zero mean and unit std
    over the entries in the loss."""
    baseline: Literal["none", "mean", "value"] = "none"
    """Baseline subtracted from the return: none, mean (batch mean), or value (a learned value
    network trained alongside)."""
    unfinished: Literal["mask", "bootstrap"] = "mask"
    """Episodes still running when an epoch ends: mask (leave their steps out of this update;
    unbiased returns) or bootstrap (complete them with the value network's V(s_T); needs
    --baseline value)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0 = off)."""
    value_coef: float = 0.5
    """Weight of the value loss (with --baseline value)."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this value (0 = no clipping; the norm is still reported)."""
    log_std_init: float | None = None
    """Box actions only: initial log standard deviation of the Gaussian policy (default 0.0)."""
    seed: int = 0
    """Seed for the environments, the policy initialization and action sampling."""
    device: str = "auto"
    """Training device: auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    metrics_file: Path | None = None
    """Write one JSON object per epoch, then a summary object, to this file (JSON Lines; flushed
    every line). An existing file is refused unless --overwrite, and appended to with --resume."""
    checkpoint_dir: Path | None = None
    """Write a checkpoint (policy, optimizer, counters, RNG and env state) to DIR/checkpoint.pt every
    --checkpoint-every epochs, at the end of training and on Ctrl-C / SIGTERM; atomically (a kill
    mid-write leaves the previous checkpoint). An existing checkpoint is refused unless --overwrite
    or --resume."""
    checkpoint_every: int = 10
    """Epochs between checkpoints (with --checkpoint-dir or --resume)."""
    resume: Path | None = None
    """Continue the run checkpointed in this directory. Env, backend, N, T, env dtype and the
    policy's shape must match the checkpoint; budgets, learning rate and logging may change.
    Checkpoints go on being written there (unless --checkpoint-dir names another directory)."""
    overwrite: bool = False
    """Allow replacing an existing metrics file or checkpoint."""
    max_bad_updates: int = 5
    """Updates with a non-finite loss, gradient or parameter are skipped and counted; this many in a
    row stop training with an error."""
    eval_episodes: int = 100
    """Episodes of the final evaluation (0 = skip it)."""
    eval_deterministic: bool = False
    """Evaluate with the most likely action (argmax / Gaussian mean) instead of sampling from the
    policy (default: sample, the policy that training optimized and the stop criterion measured)."""
    progress_interval_s: float = 1.0
    """Seconds between console progress lines (0 = every epoch)."""
    quiet: bool = False
    """No console progress lines (the summary is still printed)."""

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived values -----------------------------------------------------------------------
    @property
    def torch_env_dtype(self):
        """``env_dtype`` as a torch dtype."""
        import torch

        return getattr(torch, self.env_dtype)

    @property
    def batch_size(self) -> int:
        """Entries per epoch, T * N (valid or not)."""
        return self.num_steps * self.num_envs

    def replace(self, **changes) -> "Config":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _fail(field: str, message: str) -> None:
    raise ConfigError(field, message)


def _finite(field: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(field, f"must be a finite number, got {value!r}")


def _validate(c: Config) -> None:
    for name in ("num_envs", "num_steps", "max_env_steps"):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            _fail(name, f"must be an integer >= 1, got {v!r}")
    if c.max_epochs is not None and (not isinstance(c.max_epochs, int) or c.max_epochs < 1):
        _fail("max_epochs", f"must be an integer >= 1 (or unset), got {c.max_epochs!r}")
    if c.target_return is not None:
        _finite("target_return", c.target_return)
    _finite("gamma", c.gamma)
    if not 0.0 <= c.gamma <= 1.0:
        _fail("gamma", f"must be in [0, 1], got {c.gamma!r}")
    _finite("lr", c.lr)
    if c.lr <= 0:
        _fail("lr", f"must be > 0, got {c.lr!r}")
    if not isinstance(c.hidden_sizes, tuple) or any(
        not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in c.hidden_sizes
    ):
        _fail("hidden_sizes", f"must be a tuple of integers >= 1, got {c.hidden_sizes!r}")
    if c.activation not in ACTIVATIONS:
        _fail("activation", f"must be one of {', '.join(ACTIVATIONS)}; got {c.activation!r}")
    if c.baseline not in ("none", "mean", "value"):
        _fail("baseline", f"must be one of none, mean, value; got {c.baseline!r}")
    if c.unfinished not in ("mask", "bootstrap"):
        _fail("unfinished", f"must be mask or bootstrap; got {c.unfinished!r}")
    if c.unfinished == "bootstrap" and c.baseline != "value":
        _fail(
            "unfinished",
            f"'bootstrap' needs a value network (--baseline value), got baseline={c.baseline!r}",
        )
    for name in ("entropy_coef", "value_coef", "max_grad_norm", "progress_interval_s"):
        v = getattr(c, name)
        _finite(name, v)
        if v < 0:
            _fail(name, f"must be >= 0, got {v!r}")
    if c.log_std_init is not None:
        _finite("log_std_init", c.log_std_init)
    if not isinstance(c.seed, int) or isinstance(c.seed, bool) or not 0 <= c.seed < 2**32:
        _fail("seed", f"must be an integer in [0, 2**32), got {c.seed!r}")
    if not isinstance(c.eval_episodes, int) or c.eval_episodes < 0:
        _fail("eval_episodes", f"must be an integer >= 0, got {c.eval_episodes!r}")
    if c.backend not in BACKENDS:
        _fail("backend", f"must be one of {', '.join(BACKENDS)}; got {c.backend!r}")
    if c.metrics_file is not None and not Path(c.metrics_file).parent.is_dir():
        _fail("metrics_file", f"directory {Path(c.metrics_file).parent} does not exist")
    for name in ("checkpoint_every", "max_bad_updates"):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            _fail(name, f"must be an integer >= 1, got {v!r}")
    if c.resume is not None and not Path(c.resume).is_dir():
        _fail("resume", f"directory {c.resume} does not exist")
    if c.checkpoint_dir is not None and Path(c.checkpoint_dir).exists() and not Path(c.checkpoint_dir).is_dir():
        _fail("checkpoint_dir", f"{c.checkpoint_dir} exists and is not a directory")
    if c.env_dtype not in ("float32", "float64"):
        _fail("env_dtype", f"must be float32 or float64; got {c.env_dtype!r}")
    _validate_device(c.device)
    _validate_env(c.env, c.backend)
    if c.env_kernel not in ("torch", "cpp"):
        _fail("env_kernel", f"must be torch or cpp; got {c.env_kernel!r}")
    if c.env_kernel == "torch" and c.env_dtype == "float32":
        return
    from fastpg.envs import FUSED_ENV_IDS, resolve_backend

    backend = resolve_backend(c.env, c.backend)  # resolved once, only for the native-only options
    if c.env_kernel == "cpp":
        if c.env not in FUSED_ENV_IDS or backend != "torch":
            _fail("env_kernel", f"'cpp' exists for the native (backend torch) {', '.join(FUSED_ENV_IDS)} only; got {c.env} with backend {c.backend}")
        if c.device != "cpu" and not (c.device == "auto" and not _cuda_available()):
            _fail("env_kernel", f"'cpp' is a CPU kernel; use --device cpu (got device {c.device!r})")
    if c.env_dtype != "float32" and backend != "torch":
        _fail("env_dtype", f"{c.env_dtype} applies to native torch envs only; backend {backend!r} for {c.env} computes in numpy")

def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _validate_device(device: str) -> None:
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        _fail("device", f"must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type not in ("cpu", "cuda"):
        _fail("device", f"must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            _fail("device", f"{device!r} was asked for but CUDA is not available here (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            _fail("device", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _validate_env(env_id: str, backend: str) -> None:
    import gymnasium as gym

    from fastpg.envs import backend_problem

    if not isinstance(env_id, str) or not env_id:
        _fail("env", f"must be a gymnasium environment id, got {env_id!r}")
    try:
        gym.spec(env_id)
    except Exception:  # gymnasium raises several error types for unknown / unimportable ids
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see gymnasium.pprint_registry())"
        _fail("env", f"unknown gymnasium environment id {env_id!r}{hint}")
    problem = backend_problem(env_id, backend)
    if problem:
        _fail("backend", problem)
