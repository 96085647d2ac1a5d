"""Native batched torch implementations of gymnasium's classic-control environments.

Each env holds the state of N copies as tensors on any device, in float32 (default) or float64,
and reproduces gymnasium's implementation of the same id and version: spaces, dynamics (same
formulas in the same order, the same roundings), reward, termination, truncation at the id's time
limit and the reset distribution. Differences, by design:

- Autoreset happens within the done step (no wasted reset steps): ``step`` returns, for a done
  env, the first observation of its next episode, and every step is ``valid``. The final
  observation of the finished episode is kept in ``final_obs`` until the next step.
- Randomness comes from a ``torch.Generator`` owned by the env (``reset(seed)`` seeds it), never
  from the global RNG; the same seed, N and device give the same trajectories. On CUDA, and on
  CPU up to 512 copies, every copy draws a reset state each step and ``torch.where`` picks the done
  ones (fixed shapes, no host sync); on CPU above 512 copies only the done copies draw. The paths
  consume the generator differently, so trajectories differ between devices and across that N.
- Rewards and observations are in the env's dtype (gymnasium returns float64 rewards and float32
  observations); in float32 the dynamics run in float32 too, except MountainCarContinuous, whose
  arithmetic is gymnasium's float32/float64 mix in either dtype.
"""

from fastpg.envs.classic_control._base import NativeEnv
from fastpg.envs.classic_control.acrobot import TorchAcrobot
from fastpg.envs.classic_control.cartpole import TorchCartPole
from fastpg.envs.classic_control.mountain_car import TorchMountainCar, TorchMountainCarContinuous
from fastpg.envs.classic_control.pendulum import TorchPendulum

__all__ = [
    "NativeEnv",
    "TorchAcrobot",
    "TorchCartPole",
    "TorchMountainCar",
    "TorchMountainCarContinuous",
    "TorchPendulum",
    "NATIVE_ENVS",
]

# Every native env class; each serves the ids in its VERSIONS.
NATIVE_ENVS: tuple[type[NativeEnv], ...] = (
    TorchCartPole,
    TorchAcrobot,
    TorchMountainCar,
    TorchMountainCarContinuous,
    TorchPendulum,
)
