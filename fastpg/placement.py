"""Where a run's epochs run: the device ``--device auto`` picks, and the CPU threads (``--threads``
left unset). Both rules are measured (``docs/placement.md``); an explicit setting is obeyed.

**Device.** A GPU pays where an epoch's work is large: the CUDA-graph epoch replays the generic
epoch's kernels, launch-bound at small N (0.19M steps/s on an H100 at the default N = 16, where
the fused CPU epoch on the same host solved CartPole 11.5x sooner), and 30M-180M steps/s from N T
= 2^19 entries up. So ``auto`` picks the CPU where the fused CPU epoch applies and the epoch's
work (N * T * weights multiply-adds, times the members of a population) is below
``GPU_WORK_PER_CORE`` per CPU core, else CUDA where there is one. Configurations the fused epoch
does not run (gymnasium backends, other policies) keep the old rule, CUDA where available: no
record compares them.

**Threads.** Torch starts with one intra-op thread per core. An epoch's work splits over those
threads (the fused update's chunks of entries and the collect's blocks of env copies at large N;
on the generic path, torch ops above torch's own grain of 32k elements), and a parallel region
costs its start, its barrier and threads spinning while the serial parts run: where an epoch's
work is small, more threads than it can use make the run slower, and dozens of them (a large
machine) far slower. The work that parallelizes is the update's multiply-adds, about one per
weight of the policy (and value network) per entry, so on the CPU

    threads = min(cap, max(1, N * T * weights // WORK_PER_THREAD))

with ``cap`` the threads torch would use (its default, ``OMP_NUM_THREADS`` or
``torch.set_num_threads``); on a GPU, torch's default. ``benchmarks/threads.py`` measures steps/s
against the thread count across N and policy sizes, on the fused and the generic path, and checks
the rule on them (``benchmarks/results/threads/``).

The thread count applies to the trainer's own calls only (``Trainer.threads``, set around each
collect, update and evaluation, then put back): importing or using fastpg changes no
process-wide setting. It never changes results (the fused kernels split their sums by chunks of
a fixed size, not by thread).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastpg.config import Config

__all__ = [
    "DeviceChoice",
    "ThreadChoice",
    "choose_device",
    "choose_threads",
    "collect_threads",
    "threads",
    "policy_weights",
    "placement_record",
    "GPU_WORK_PER_CORE",
    "WORK_PER_THREAD",
]

# Multiply-adds of the update (entries x weights) worth one more thread: below it two threads
# measured no faster than one, or slower (docs/threads.md).
WORK_PER_THREAD = 2_000_000

# Multiply-adds per epoch per CPU core below which the fused CPU epoch outran a GPU: the H100
# records (benchmarks/results/cuda_h100/) ran the CUDA-graph epoch at 29.7M steps/s at N = 4096,
# T = 128 (32-tanh policy, 192 weights) and 86.6M at N = 16384, where the fused epoch of a 2-core
# VM ran 38M and 31M (benchmarks/results/threads/): the crossover lies near N T = 10^6 entries,
# 2 x 10^8 multiply-adds on two cores.
GPU_WORK_PER_CORE = 100_000_000


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run trains on, and why (said at the start and in the metrics header)."""

    device: torch.device
    reason: str


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_device(cfg: Config, *, members: int = 1) -> DeviceChoice:
    """The device of ``cfg.device`` (module docstring): itself where given, else by the rule for
    ``members`` runs of ``cfg`` trained together."""
    if cfg.device != "auto":
        return DeviceChoice(torch.device(cfg.device), "--device")
    cpu = torch.device("cpu")
    if not torch.cuda.is_available():
        return DeviceChoice(cpu, "auto: no CUDA device")
    from fastpg.envs import make_env, resolve_backend
    from fastpg.fused import fused_problem
    from fastpg.policy import MLPPolicy

    cuda = torch.device("cuda")
    if resolve_backend(cfg.env, cfg.backend) != "torch":
        return DeviceChoice(cuda, "auto: CUDA is available (the fused CPU epoch needs a native env)")
    env = make_env(cfg.env, 1, device=cpu)
    try:
        policy = MLPPolicy.from_config(cfg, env.info)
        problem = fused_problem(cfg, env, policy, cpu)
    finally:
        env.close()
    if problem is not None:
        return DeviceChoice(cuda, f"auto: CUDA is available (the fused CPU epoch does not apply: {problem})")
    work, cores = members * cfg.num_envs * cfg.num_steps * policy_weights(policy), usable_cores()
    limit = GPU_WORK_PER_CORE * cores
    versus = f"{work / 1e6:.0f}M multiply-adds per epoch, {'below' if work < limit else 'above'} {limit / 1e6:.0f}M"
    if work < limit:
        return DeviceChoice(cpu, f"auto: the fused CPU epoch trains this faster than a GPU ({versus} on {cores} cores)")
    return DeviceChoice(cuda, f"auto: the GPU trains this faster than the fused CPU epoch ({versus} on {cores} cores)")


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a run's epochs use, and why (shown in the metrics header)."""

    count: int
    reason: str


def policy_weights(policy: nn.Module) -> int:
    """Multiply-adds per entry of a forward pass: the weights of the policy's (and value network's) layers."""
    return sum(p.numel() for name, p in policy.named_parameters() if name.endswith("weight"))


def choose_threads(
    cfg: Config, policy: nn.Module, *, fused: bool, device: torch.device, cap: int | None = None
) -> ThreadChoice:
    """The rule (module docstring): ``cfg.threads`` where given, else by the epoch's work."""
    cap = torch.get_num_threads() if cap is None else cap
    if cfg.threads is not None:
        return ThreadChoice(cfg.threads, "--threads")
    if device.type != "cpu":
        return ThreadChoice(cap, f"torch's default ({device.type} run)")
    work = cfg.num_envs * cfg.num_steps * policy_weights(policy)
    count = max(1, min(cap, work // WORK_PER_THREAD))
    path = "fused epoch" if fused else "generic path"
    per = WORK_PER_THREAD / 1e6
    why = f"{path}: {work / 1e6:.1f}M multiply-adds per update, a thread per {per:.0f}M (at most {cap})"
    return ThreadChoice(count, why)


def placement_record(device: DeviceChoice, threads: ThreadChoice) -> dict[str, Any]:
    """The metrics header's ``placement``: the device and the threads, each with why."""
    return {
        "device": str(device.device),
        "device_reason": device.reason,
        "threads": threads.count,
        "threads_reason": threads.reason,
    }


def collect_threads(count: int, env: Any) -> int:
    """The threads of a collect (or an evaluation) on ``env``: one where worker processes step the
    env beside the trainer (``--backend pool``): torch's threads would wait for work spinning on
    the cores the workers step on (measured: a 2-thread collect on a 2-worker pool ran at 0.77x
    of sync); else ``count``."""
    return 1 if getattr(env, "worker_processes", 0) > 0 else count


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block, then put back."""
    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
