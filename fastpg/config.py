"""The run configuration: one frozen dataclass, a pure value checked on construction.

The CLI is generated from this class by tyro; every field's docstring is its ``--help`` text, and
its name in kebab case is the flag (``num_envs`` -> ``--num-envs``). Building a ``Config`` checks
types and ranges only, so it works the same on any machine and never touches the file system:
``Config(device="cuda")`` builds on a CPU-only machine. What needs the machine (is the device
there, is the env id registered, can its backend step it, do the directories exist) is checked by
``fastpg.preflight.check_config``, which the CLI and the ``Trainer`` call.

Each set of choices is one ``Literal`` type below: tyro reads it for the CLI, validation reads it
through ``choices``, and the modules that act on a choice use the same names.

Values are normalized on construction: numpy scalars become Python numbers, lists become tuples and
strings become paths, so ``Config.from_dict(cfg.to_dict()) == cfg`` (checkpoints store the dict).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from fastpg.errors import ConfigError

__all__ = [
    "Config",
    "RESUME_AUTO",
    "ConfigError",
    "Backend",
    "EnvDtype",
    "EnvKernel",
    "Activation",
    "Baseline",
    "Unfinished",
    "Fused",
    "choices",
    "BACKENDS",
    "ACTIVATIONS",
    "BASELINES",
]

Backend = Literal["auto", "torch", "vector", "pool", "sync", "async"]
EnvDtype = Literal["float32", "float64"]
EnvKernel = Literal["torch", "cpp"]
Activation = Literal["tanh", "relu", "elu", "gelu", "silu"]
Baseline = Literal["none", "mean", "value"]
Unfinished = Literal["mask", "bootstrap"]
Fused = Literal["auto", "off"]
LrSchedule = Literal["constant", "linear"]
Init = Literal["default", "orthogonal"]
ActionBound = Literal["clip", "tanh"]
DistBackend = Literal["auto", "nccl", "gloo"]


def choices(literal_type: Any) -> tuple[str, ...]:
    """The allowed values of one of the ``Literal`` types above."""
    return get_args(literal_type)


BACKENDS = choices(Backend)
ACTIVATIONS = choices(Activation)
BASELINES = choices(Baseline)


@dataclass(frozen=True)
class Config:
    """Train a policy with vectorized REINFORCE."""

    env: str = "CartPole-v1"
    """Gymnasium environment id (any registered id with Discrete or Box actions)."""
    backend: Backend = "auto"
    """How to step the env: torch (native, on the training device), vector (gymnasium's own
    vectorized env), pool (W worker processes, each stepping a share of the copies, through
    shared memory: every core for MuJoCo, Box2D and other envs stepped in Python or C), sync
    (SyncVectorEnv, one process), async (AsyncVectorEnv, one process per copy), or auto (torch,
    then vector, then pool where the env's step is slow enough to gain from it, else sync;
    docs/backends.md)."""
    pool_workers: int | None = None
    """W: worker processes of --backend pool (default: the usable cores, shared among the
    processes of a torchrun launch on this machine, at most N)."""
    env_dtype: EnvDtype = "float32"
    """Float dtype of a native torch env's state and arithmetic (backend torch only; gymnasium
    backends compute in numpy and hand over float32 observations)."""
    env_kernel: EnvKernel = "torch"
    """Step implementation of a native env on CPU: torch (torch ops) or cpp (its env kernel's
    compiled step, one call per lockstep step, compiled on first use, about a minute, then
    cached; several times faster at small N; the fused epoch runs the same step)."""
    fused: Fused = "auto"
    """The fast epoch where it applies: on CPU the fused C++ epoch for every native env with an
    env kernel (CartPole, Acrobot, MountainCar, MountainCarContinuous, Pendulum, and users' own:
    fastpg.envs.EnvKernel) with the built-in MLP policy (relu or tanh; Discrete or Box actions;
    any baseline; unfinished masked or bootstrapped; compiled on first use, 1-2 minutes, then
    cached), on CUDA a captured CUDA graph of the epoch for native envs (Discrete actions,
    baseline none or mean). auto: use it there; off: always the generic torch path. Both compute
    the same thing; a notice at the start says which runs and why."""
    num_envs: int = 16
    """N: environment copies stepped in lockstep. The defaults N = 16, T = 512, lr = 1e-2 and an
    entropy bonus of 0.01 solve CartPole-v1 and Acrobot-v1 fastest, every seed of 10, of a sweep
    over both (benchmarks/sweep_defaults.py). Under torchrun, the count of the whole job: each of
    K processes steps N / K of them."""
    num_steps: int = 512
    """T: steps per environment per epoch (one update per epoch); longer than both tasks' 500-step
    episodes, so masking unfinished episodes keeps most of each epoch."""
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
    """Hidden layer widths of the MLP policy (and of the value network); 0 alone for a linear
    policy (no hidden layer)."""
    activation: Activation = "relu"
    """Hidden-layer activation."""
    normalize_returns: bool = True
    """Normalize the advantage (the return, minus the baseline if any) to zero mean and unit std
    over the entries in the loss."""
    baseline: Baseline = "none"
    """Baseline subtracted from the return: none, mean (batch mean), or value (a learned value
    network trained alongside)."""
    unfinished: Unfinished = "mask"
    """Episodes still running when an epoch ends: mask (leave their steps out of this update;
    unbiased returns) or bootstrap (complete them with the value network's V(s_T); needs
    --baseline value)."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (0 = off). The default keeps Acrobot-v1's policy from collapsing
    onto one action early (1 seed in 10 without it; benchmarks/sweep_defaults.py)."""
    value_coef: float = 0.5
    """Weight of the value loss (with --baseline value)."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this value (0 = no clipping; the norm is still reported)."""
    log_std_init: float | None = None
    """Box actions only: initial log standard deviation of the Gaussian policy (default 0.0)."""
    action_bound: ActionBound = "clip"
    """Box actions only: how the Gaussian sample reaches the env's bounds: clip (clipped to them)
    or tanh (squashed: low + (tanh(a) + 1) (high - low) / 2). Either way the stored action and
    its log-probability are the raw sample's (the bound is part of the env, as the policy sees it)."""
    obs_norm: bool = False
    """Normalize observations with the running mean and variance of every valid step collected so
    far (updated once per epoch, after the update; clipped to +-10), which MuJoCo tasks need. The
    statistics are part of the policy: saved in checkpoints, applied by evaluate, load_policy,
    fastpg eval and video."""
    lr_schedule: LrSchedule = "constant"
    """Learning rate over training: constant, or linear (from --lr down to 0 at the end of the
    budget: --max-env-steps, or --max-epochs where that ends first)."""
    init: Init = "default"
    """Initial weights: default (torch's Linear init) or orthogonal (gain sqrt(2) for hidden
    layers, 1 for the output layers; biases 0), as Tianshou's and CleanRL's MuJoCo settings use."""
    last_layer_scale: float = 1.0
    """Multiplies the policy network's output-layer weights at initialization (0.01: near-uniform
    logits, or Gaussian means near 0, at the start, as Tianshou's MuJoCo REINFORCE)."""
    seed: int = 0
    """Seed for the environments, the policy initialization and action sampling."""
    device: str = "auto"
    """Training device: auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    threads: int | None = None
    """CPU threads of the run's epochs (default: by a measured rule, at most torch's default: a
    thread per 2M multiply-adds of the update, so small runs use one). The choice and why are in
    the metrics header and the start notice (docs/threads.md)."""
    metrics_file: Path | None = None
    """Write one JSON object per epoch, then a summary object, to this file (JSON Lines; flushed
    every line). An existing file is refused unless --overwrite, and appended to with --resume."""
    tensorboard: Path | None = None
    """Directory for TensorBoard logs: every per-epoch metric against env steps, the config and
    the summary as text (needs the tensorboard package: the tensorboard extra)."""
    wandb: str | None = None
    """Weights & Biases project: every per-epoch metric (against env steps), the config, the machine
    and the summary, as one W&B run (one per member in a population); needs the wandb package (the
    wandb extra). Offline, with no network: WANDB_MODE=offline (wandb sync uploads it later)."""
    checkpoint_dir: Path | None = None
    """Write a checkpoint (policy, optimizer, counters, RNG and env state) to DIR/checkpoint.pt every
    --checkpoint-every epochs, at the end of training and on Ctrl-C / SIGTERM; atomically (a kill
    mid-write leaves the previous checkpoint). An existing checkpoint is refused unless --overwrite
    or --resume."""
    checkpoint_every: int = 10
    """Epochs between checkpoints (with --checkpoint-dir or --resume)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the directory (DIR/checkpoint-NNNNNN.pt, the newest also as
    DIR/checkpoint.pt); older ones are removed once a new one is on disk. A resume whose newest
    checkpoint is damaged falls back to the previous one."""
    resume: Path | None = None
    """Continue the run checkpointed in this directory, with its saved settings: budgets, target,
    learning rate, outputs, logging, evaluation, --max-bad-updates and --threads may change,
    nothing else. Checkpoints go on being written there (unless --checkpoint-dir names another
    directory). auto: continue from --checkpoint-dir's checkpoint where there is one, else start
    afresh: the same command serves a first start and every restart under a supervisor (torchrun
    restarts do this without asking; a directory named auto is ./auto)."""
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
    dist_timeout_s: float = 300.0
    """Data-parallel runs (torchrun): seconds a rank waits in a collective (all-reduce, gather) for
    the others before the job ends with an error naming it: bounds the time a hung rank holds the
    rest. It must exceed the longest pause of rank 0 between epochs (evaluation, checkpoint)."""
    dist_backend: DistBackend = "auto"
    """Data-parallel runs (torchrun): the torch.distributed backend; auto = nccl on CUDA (one GPU
    per process), gloo on CPU. gloo also carries CUDA tensors, so several processes can share one
    GPU (--device cuda:0 --dist-backend gloo), slower than NCCL."""

    def __post_init__(self) -> None:
        for name, value in _normalized(self).items():
            object.__setattr__(self, name, value)
        _validate(self)

    @property
    def batch_size(self) -> int:
        """Entries per epoch, T * N (valid or not)."""
        return self.num_steps * self.num_envs

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_env(cls, env: str, **changes: Any) -> Config:
        """The config of a run on ``env``: its tuned settings (``ENV_DEFAULTS``, where it has some),
        then ``changes`` (what ``fastpg train --env ENV`` does with the flags typed)."""
        return cls(env=env, **{**ENV_DEFAULTS.get(env, {}), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (tuples as lists, paths as strings): JSON- and checkpoint-safe."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """The inverse of ``to_dict`` (missing keys take their defaults; unknown keys are refused)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a Config field (unknown keys: {', '.join(unknown)})")
        return cls(**values)


# --resume auto: continue from --checkpoint-dir's checkpoint where there is one (fastpg.checkpoint.resolve_resume).
RESUME_AUTO = Path("auto")

# Fields that say where a run writes and how it reports, not what it learns.
OUTPUT_FIELDS = (
    "metrics_file",
    "tensorboard",
    "wandb",
    "checkpoint_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "overwrite",
    "progress_interval_s",
    "quiet",
    "dist_timeout_s",
    "dist_backend",
)

# Continuous control with REINFORCE (MuJoCo, BipedalWalker): Tianshou's REINFORCE settings
# (observation normalization, a tanh bound, orthogonal init with a 0.01-scaled output layer, lr 1e-3
# decaying linearly, 64x64 tanh, initial log-std -0.5), with a value baseline that completes the
# episodes still running at the end of a 250-step epoch: 4x the updates of whole-episode epochs
# (HalfCheetah, T = 1001 without a baseline: 346 at 3M steps; this: 997, seed 0;
# benchmarks/suite_sweep.py, results/suite_sweep/).
_CONTROL: dict[str, Any] = dict(
    num_envs=16,
    num_steps=250,
    baseline="value",
    unfinished="bootstrap",
    hidden_sizes=(64, 64),
    activation="tanh",
    lr=1e-3,
    lr_schedule="linear",
    obs_norm=True,
    action_bound="tanh",
    init="orthogonal",
    last_layer_scale=0.01,
    log_std_init=-0.5,
    entropy_coef=0.0,
    # evaluated with the Gaussian's mean, as rl-baselines3-zoo evaluates the PPO fastpg is compared
    # with (InvertedPendulum: 1000 on 3 seeds of 3 against 972-1000 sampled)
    eval_deterministic=True,
)
_BOX_ONLY = ("action_bound", "log_std_init")  # settings for Box actions (refused with Discrete ones)

# Settings per id where Config's own defaults (tuned on CartPole-v1 and Acrobot-v1) do not fit,
# chosen by measurement: benchmarks/env_defaults.py runs every native id with them,
# benchmarks/suite_sweep.py and suite_results.py the MuJoCo and Box2D ids, and the README's tables
# say what each reaches. fastpg train applies them to the flags not typed; Config.for_env does the
# same from Python; Config(env=...) alone does not.
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    # 6M steps: with the fused epoch they take about 2 s, and the policy swings up and holds
    # (8 seeds, evaluation IQM -167, every seed -138 to -246; 4M: -188, worst -404; the earlier
    # 800k: -861). lr 3e-3 (5e-3 learns faster but left 1 seed of 8 at -753).
    # benchmarks/results/pendulum_budget/
    "Pendulum-v1": dict(
        num_envs=32,
        num_steps=200,
        gamma=0.95,
        lr=3e-3,
        hidden_sizes=(64, 64),
        activation="tanh",
        baseline="value",
        max_env_steps=6_000_000,
    ),
    # MuJoCo (the mujoco extra): _CONTROL above, 3M steps (Tianshou's budget).
    "HalfCheetah-v5": dict(_CONTROL, max_env_steps=3_000_000),
    "Hopper-v5": dict(_CONTROL, max_env_steps=3_000_000),
    "Walker2d-v5": dict(_CONTROL, max_env_steps=3_000_000),
    # a perfect 1000 (the spec's threshold is 950) within 1M steps: lr 3e-3 (lr 1e-3: 919 at 1M,
    # seed 0), N = 32 (the steadiest of N 16/32/64, lr 1e-2, clipping, log-std 0), gamma 0.995
    # (median 975 of 3 seeds against 941 with 0.99)
    "InvertedPendulum-v5": dict(
        _CONTROL, num_envs=32, lr=3e-3, gamma=0.995, max_env_steps=1_000_000, target_return=1000.0
    ),
    # Box2D (the box2d extra)
    "BipedalWalker-v3": dict(_CONTROL, max_env_steps=5_000_000),
    # _CONTROL without its Box-only settings, N = 32, lr 3e-3, gamma 0.999, evaluated by sampling
    # (solved is judged on the policy as it trains). No entropy bonus matters: with Config's 0.01
    # the policy stayed near 140 for 3M steps, without it solved at 1.05M (seed 0); N = 32 (seed 1:
    # N = 16 167 at 3M, N = 32 solved at 725k); gamma 0.999 (seed 2: 126 at 3M with 0.99, solved
    # at 1.95M with 0.999; with it seeds 0-3 solve, seed 4 not: 123 at 3M)
    "LunarLander-v3": dict(
        {k: v for k, v in _CONTROL.items() if k not in _BOX_ONLY},
        num_envs=32,
        lr=3e-3,
        gamma=0.999,
        eval_deterministic=False,
        max_env_steps=3_000_000,
    ),
    # Episodes of 999 steps: T must exceed them, or masking leaves nothing to learn from. Wide
    # initial noise (log-std 1) finds the goal. lr 1e-2 commits to it (lr 1e-3: no seed of 16
    # solved in 20M steps, with gamma 0.99 or 0.999); gamma 0.999 a little sooner than 0.99 (median
    # 6.7M steps against 8.1M, 16 seeds each). lr 1e-2 with 0.999 solved 24 seeds of 24 in
    # 5.7-12.4M steps; lr 2e-2 in 3.0-5.0M, but left 1 seed of 24 pushing one way (-99.9) for
    # 10M steps. benchmarks/results/mountain_car_continuous/
    "MountainCarContinuous-v0": dict(
        num_envs=32,
        num_steps=1000,
        log_std_init=1.0,
        entropy_coef=0.0,
        lr=1e-2,
        gamma=0.999,
        hidden_sizes=(64,),
        activation="tanh",
        baseline="value",
        max_env_steps=20_000_000,
    ),
}


# -- normalization and validation -------------------------------------------------------------------

_INT_FIELDS = (
    "num_envs",
    "num_steps",
    "max_env_steps",
    "max_epochs",
    "pool_workers",
    "seed",
    "checkpoint_every",
    "max_bad_updates",
    "eval_episodes",
)
_FLOAT_FIELDS = (
    "target_return",
    "gamma",
    "lr",
    "entropy_coef",
    "value_coef",
    "max_grad_norm",
    "log_std_init",
    "last_layer_scale",
    "progress_interval_s",
)
_BOOL_FIELDS = ("normalize_returns", "obs_norm", "overwrite", "eval_deterministic", "quiet")
_PATH_FIELDS = ("metrics_file", "tensorboard", "checkpoint_dir", "resume")
_CHOICE_FIELDS = {
    "backend": Backend,
    "env_dtype": EnvDtype,
    "env_kernel": EnvKernel,
    "fused": Fused,
    "activation": Activation,
    "baseline": Baseline,
    "unfinished": Unfinished,
    "lr_schedule": LrSchedule,
    "init": Init,
    "action_bound": ActionBound,
    "dist_backend": DistBackend,
}


def _is_int(v: Any) -> bool:
    """Python or numpy integers; bools are not integers here."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    """Python or numpy real numbers; bools are not numbers here."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_bool(v: Any) -> bool:
    """Python or numpy bools (numpy's is neither ``bool`` nor a number)."""
    return isinstance(v, bool) or (type(v).__name__ == "bool" and type(v).__module__ == "numpy")


def _normalized(c: Config) -> dict[str, Any]:
    """Field values to replace: numpy scalars as Python numbers, lists as tuples, str as Path."""
    out: dict[str, Any] = {}
    for name in _INT_FIELDS:
        v = getattr(c, name)
        if _is_int(v) and type(v) is not int:
            out[name] = int(v)
    for name in _FLOAT_FIELDS:
        v = getattr(c, name)
        if _is_real(v) and type(v) is not float:
            out[name] = float(v)
    if isinstance(c.hidden_sizes, list):
        out["hidden_sizes"] = tuple(c.hidden_sizes)
    hidden = out.get("hidden_sizes", c.hidden_sizes)
    if isinstance(hidden, tuple) and all(_is_int(h) for h in hidden):
        out["hidden_sizes"] = tuple(int(h) for h in hidden)
    for name in _BOOL_FIELDS:
        v = getattr(c, name)
        if _is_bool(v) and type(v) is not bool:
            out[name] = bool(v)
    for name in _PATH_FIELDS:
        if isinstance(getattr(c, name), str):
            out[name] = Path(getattr(c, name))
    return out


def _fail(field: str, message: str) -> None:
    raise ConfigError(field, message)


def _check_int(
    c: Config, name: str, low: int, high: int | None = None, *, optional: bool = False, high_text: str | None = None
) -> None:
    v = getattr(c, name)
    if optional and v is None:
        return
    if not _is_int(v) or v < low or (high is not None and v >= high):
        allowed = f"in [{low}, {high_text or high})" if high is not None else f">= {low}"
        _fail(name, f"must be an integer {allowed}{' (or unset)' if optional else ''}, got {v!r}")


def _check_real(
    c: Config, name: str, low: float = -math.inf, high: float = math.inf, optional: bool = False, low_open: bool = False
) -> None:
    v = getattr(c, name)
    if optional and v is None:
        return
    if not _is_real(v) or not math.isfinite(v):
        _fail(name, f"must be a finite number, got {v!r}")
    if low_open and v <= low:
        _fail(name, f"must be > {low:g}, got {v!r}")
    if v < low or v > high:
        _fail(
            name,
            f"must be in [{low:g}, {high:g}], got {v!r}" if math.isfinite(high) else f"must be >= {low:g}, got {v!r}",
        )


def _validate(c: Config) -> None:
    if not isinstance(c.env, str) or not c.env:
        _fail("env", f"must be a gymnasium environment id, got {c.env!r}")
    for name, literal in _CHOICE_FIELDS.items():
        allowed = choices(literal)
        if getattr(c, name) not in allowed:
            _fail(name, f"must be one of {', '.join(allowed)}; got {getattr(c, name)!r}")
    for name in ("num_envs", "num_steps", "max_env_steps", "checkpoint_every", "keep_checkpoints", "max_bad_updates"):
        _check_int(c, name, 1)
    _check_int(c, "max_epochs", 1, optional=True)
    _check_int(c, "threads", 1, optional=True)
    _check_int(c, "pool_workers", 1, optional=True)
    if c.pool_workers is not None and c.pool_workers > c.num_envs:
        _fail("pool_workers", f"must be at most --num-envs ({c.num_envs}); got {c.pool_workers}")
    _check_int(c, "eval_episodes", 0)
    _check_int(c, "seed", 0, 2**32, high_text="2**32")
    _check_real(c, "target_return", optional=True)
    _check_real(c, "gamma", 0.0, 1.0)
    _check_real(c, "lr", 0.0, low_open=True)
    for name in ("entropy_coef", "value_coef", "max_grad_norm", "progress_interval_s"):
        _check_real(c, name, 0.0)
    _check_real(c, "dist_timeout_s", 0.0, low_open=True)
    _check_real(c, "log_std_init", optional=True)
    _check_real(c, "last_layer_scale", 0.0, low_open=True)
    if c.hidden_sizes == ():
        _fail("hidden_sizes", "no widths given; give at least one (e.g. 64 64), or 0 alone for a linear policy")
    linear = c.hidden_sizes == (0,)
    if not isinstance(c.hidden_sizes, tuple) or (not linear and any(not _is_int(h) or h < 1 for h in c.hidden_sizes)):
        _fail("hidden_sizes", f"must be a tuple of integers >= 1 (or (0,): a linear policy), got {c.hidden_sizes!r}")
    for name in _BOOL_FIELDS:
        if not isinstance(getattr(c, name), bool):
            _fail(name, f"must be True or False, got {getattr(c, name)!r}")
    for name in _PATH_FIELDS:
        v = getattr(c, name)
        if v is not None and not isinstance(v, Path):
            _fail(name, f"must be a path (str or pathlib.Path) or unset, got {v!r}")
    if c.wandb is not None and (not isinstance(c.wandb, str) or not c.wandb.strip()):
        _fail("wandb", f"must be a Weights & Biases project name, got {c.wandb!r}")
    if not isinstance(c.device, str):
        _fail("device", f"must be auto, cpu, cuda or cuda:N; got {c.device!r}")
    if c.resume == RESUME_AUTO and c.checkpoint_dir is None:
        _fail("resume", "auto continues the run whose checkpoints are in --checkpoint-dir; give --checkpoint-dir DIR")
    if c.unfinished == "bootstrap" and c.baseline != "value":
        _fail("unfinished", f"'bootstrap' needs a value network (--baseline value), got baseline={c.baseline!r}")
    if c.env_kernel == "cpp" and c.device.startswith("cuda"):
        _fail("env_kernel", f"'cpp' is a CPU kernel; use --device cpu (got device {c.device!r})")
