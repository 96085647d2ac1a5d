"""The measuring engine behind ``fastpg bench`` and the pytest-benchmark suites in ``benchmarks/``.

A *runner* does one repetition of a phase and says how many items it processed; ``time_runner``
times repetitions of it (median, min, max; warm-up apart; CUDA synchronized before every clock
read). The suites in ``benchmarks/`` time the same runners with pytest-benchmark, so each phase is
defined once. Phases:

- ``env``: env-only steps/s with random actions (drawn before timing), through fastpg's
  ``BatchedEnv`` interface (tensors in and out, as the trainer sees it);
- ``collect``: env + policy sampling + storage writes, one epoch of T steps (``Trainer.collect``);
- ``update``: samples/s of the update over the ``[T, N]`` epoch (``Trainer.update``), counted as the
  epoch's T x N stored entries; as in training, entries outside the loss skip the forward and
  backward passes, and their share is reported (``mask_frac``);
- ``train``: end-to-end training steps/s (``Trainer.epoch``: collect + update + metrics);
- ``returns``: elements/s of ``reward_to_go`` on ``[T, N]`` float32 (random rewards, done with
  probability 0.02), written into a preallocated output as the trainer does.

A step is a valid transition: gymnasium's NEXT_STEP reset steps are not counted in the rates and
are reported on their own (``reset_steps``). Setup (building envs and policy; compiling a kernel on
first use) is timed separately as ``setup_s``, the untimed warm-up as ``warmup_s``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fastpg.config import Config
from fastpg.envs import env_from_config
from fastpg.metrics import synchronize
from fastpg.returns import reward_to_go
from fastpg.trainer import Trainer

__all__ = ["Sample", "Runner", "env_runner", "trainer_runner", "returns_runner", "time_runner"]

# Target length of one timed repetition of the env phase (it adapts its step count to it).
ENV_REPEAT_TARGET_S = 0.25


@dataclass
class Sample:
    """What one repetition processed: items counted in the rate, reset steps left out, extras."""

    items: float
    reset_steps: float = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Runner:
    """One phase ready to repeat: ``run()`` does a repetition; ``close()`` frees what it holds."""

    run: Callable[[], Sample]
    close: Callable[[], None]
    setup_s: float
    info: dict[str, Any] = field(default_factory=dict)


def _random_actions(info, n: int, device: torch.device, g: torch.Generator, count: int = 16) -> list[torch.Tensor]:
    if info.discrete:
        return [torch.randint(0, info.num_actions, (n,), generator=g, device=device) for _ in range(count)]
    low, high = info.action_low.to(device), info.action_high.to(device)
    return [torch.rand((n, *info.action_shape), generator=g, device=device) * (high - low) + low for _ in range(count)]


def env_runner(cfg: Config, device: torch.device, steps: int | None = None) -> Runner:
    """Env-only stepping of ``cfg``'s env: ``steps`` steps per repetition (default: about
    ``ENV_REPEAT_TARGET_S`` seconds' worth, sized from a few probe steps)."""
    t0 = time.perf_counter()
    env = env_from_config(cfg, device)
    setup_s = time.perf_counter() - t0
    env.reset(seed=cfg.seed)
    actions = _random_actions(env.info, cfg.num_envs, device, torch.Generator(device=device).manual_seed(cfg.seed))
    if steps is None:
        with torch.inference_mode():
            t1 = time.perf_counter()
            for i in range(3):
                env.step(actions[i])
            synchronize(device)
            per_step = (time.perf_counter() - t1) / 3
        steps = int(min(2000, max(4, ENV_REPEAT_TARGET_S / max(per_step, 1e-7))))

    total = steps * cfg.num_envs

    def run() -> Sample:
        with torch.inference_mode():  # as the collector steps envs
            if env.same_step_reset:  # every step is valid: nothing to count
                for i in range(steps):
                    env.step(actions[i % len(actions)])
                return Sample(total)
            valid = torch.zeros((), dtype=torch.int64, device=device)
            for i in range(steps):
                valid += env.step(actions[i % len(actions)]).valid.sum()
        return Sample(int(valid), total - int(valid))

    return Runner(run, env.close, setup_s, {"steps": steps})


def trainer_runner(phase: str, cfg: Config) -> Runner:
    """A ``Trainer`` phase: ``collect``, ``update`` (on one stored epoch) or ``train`` (an epoch)."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    setup_s = time.perf_counter() - t0
    entries = cfg.num_steps * cfg.num_envs

    def valid_steps() -> Sample:
        valid = int(trainer.buf["valid"].sum())
        return Sample(valid, entries - valid)

    if phase == "update":
        trainer.collect()

        def run() -> Sample:
            return Sample(entries, 0, {"mask_frac": float(trainer.update()["mask_frac"])})

    elif phase == "collect":

        def run() -> Sample:
            trainer.collect()
            return valid_steps()

    elif phase == "train":

        def run() -> Sample:
            trainer.epoch()
            return valid_steps()

    else:
        trainer.close()
        raise ValueError(f"phase must be collect, update or train, got {phase!r}")
    return Runner(run, trainer.close, setup_s, {"trainer": trainer})


def returns_runner(T: int, N: int, device: torch.device, seed: int = 0) -> Runner:
    """``reward_to_go`` over random ``[T, N]`` float32 data into a preallocated output."""
    g = torch.Generator(device=device).manual_seed(seed)
    reward = torch.rand(T, N, generator=g, device=device)
    done = torch.rand(T, N, generator=g, device=device) < 0.02
    out = torch.empty_like(reward)

    def run() -> Sample:
        reward_to_go(reward, done, 0.99, out=out)
        return Sample(T * N)

    return Runner(run, lambda: None, 0.0)


def time_runner(runner: Runner, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Time ``repeats`` repetitions after ``warmup`` untimed ones, then close the runner.

    Returns the rate (items/s) median, min and max, the times, the items and reset steps of the
    median repetition, ``setup_s``, ``warmup_s`` and the extras of every repetition (as lists).
    """
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):
            runner.run()
        synchronize(device)
        warmup_s = time.perf_counter() - t0
        times, samples = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample = runner.run()
            synchronize(device)
            times.append(time.perf_counter() - t0)
            samples.append(sample)
    finally:
        runner.close()
    rates = sorted(s.items / t for s, t in zip(samples, times))
    items = statistics.median(s.items for s in samples)
    extra = {k: [s.extra[k] for s in samples] for k in samples[0].extra}
    return {
        "rate_median": statistics.median(rates),
        "rate_min": rates[0],
        "rate_max": rates[-1],
        "time_median_s": statistics.median(times),
        "times_s": times,
        "items": items,
        "reset_steps": statistics.median(s.reset_steps for s in samples),
        "per_repeat_items": [s.items for s in samples],
        "setup_s": runner.setup_s,
        "warmup_s": warmup_s,
        **{k: v for k, v in runner.info.items() if k != "trainer"},
        **extra,
    }
