"""``NativeEnv``: what every native batched torch environment shares.

Subclasses define the physics (``_dynamics``), the reset distribution (``_sample_reset``) and, where
the observation is not the state itself, ``_observe``. The base class owns the batched state, the
env's random generator, the time limit and the same-step autoreset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fastpg.envs.base import EnvInfo, Step
from fastpg.envs.env_kernel import EnvKernel

__all__ = ["NativeEnv"]

# Up to this many copies on CPU, resets draw a fresh state for every copy and select the done ones
# (three ops); above it, only the done copies draw (nonzero + index_copy: cheaper than drawing 4N
# numbers). The choice depends on N alone, so the same seed, N and device give the same run.
SELECT_RESET_MAX_ENVS = 512


class NativeEnv:
    """N copies of one environment as tensors on one device; resets done copies in the same step.

    The state is stored feature-major, ``[D, N]``, so that each state variable is a contiguous row
    (elementwise ops on strided columns are several times slower at large N); ``state`` is its
    ``[N, D]`` view. Physical constants are 0-dim tensors of the state dtype: a Python float
    operand costs a scalar conversion on every op, which at small N doubles the step time.

    Subclass contract: class attributes ``state_dim`` and ``VERSIONS`` (env id -> (max episode
    steps, reward threshold)); ``__init__`` sets ``self.info``; ``_dynamics`` must not modify the
    state it is given (it becomes ``final_obs``).
    """

    same_step_reset = True
    # The compiled step of the fused epoch (fastpg.envs.env_kernel), or None: the generic path.
    env_kernel: EnvKernel | None = None
    state_dim: int
    VERSIONS: dict[str, tuple[int, float | None]]
    # Step implementations: "torch" (torch ops, any device) and, where a class has one, compiled
    # CPU kernels it loads in ``_use_kernel`` ("cpp": the env kernel's step; TorchCartPole's own).
    KERNELS: tuple[str, ...] = ("torch",)

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str,
        dtype: torch.dtype,
        env_id: str,
        state_dtype: torch.dtype | None = None,
    ):
        if env_id not in self.VERSIONS:
            raise ValueError(f"env_id must be one of {', '.join(self.VERSIONS)}, got {env_id!r}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.env_id = env_id
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype  # observations and rewards
        self.state_dtype = state_dtype or dtype  # the dynamics' arithmetic
        self.max_episode_steps, self.reward_threshold = self.VERSIONS[env_id]
        self.generator = torch.Generator(device=self.device)
        self._state = torch.zeros(self.state_dim, num_envs, dtype=self.state_dtype, device=self.device)
        self._final = self._state
        self.elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._valid = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self.kernel = "torch"
        self.info: EnvInfo
        # Data-parallel runs: these copies are rows [lo, lo + num_envs) of total_envs copies, and
        # resets draw for all of them (set_shard).
        self.shard_lo, self.total_envs = 0, num_envs
        self.counts_before: Callable[[int], tuple[int, int]] | None = None
        # Populations: these copies are len(member_generators) groups of num_envs / K, each drawing
        # its resets from its own generator as an env of its own would (set_members).
        self.member_generators: list[torch.Generator] | None = None

    # Tensors of state_dict() that hold one entry per copy, and the dim of the copies.
    SHARD_DIMS = {"state": 1, "final": 1, "elapsed": 0}

    def set_shard(self, lo: int, total: int, counts_before: Callable[[int], tuple[int, int]]) -> None:
        """Make these ``num_envs`` copies rows ``[lo, lo + num_envs)`` of a ``total``-copy env split
        over processes (``fastpg.distributed``): every reset draws what the ``total``-copy env
        draws and keeps these rows, so the generator and the trajectories stay the whole env's.
        ``counts_before(k)`` is a collective returning (done copies on lower shards, on all
        shards) when this shard has ``k`` (the draw-only-done mode needs them every step)."""
        if not 0 <= lo <= total - self.num_envs:
            raise ValueError(f"shard [{lo}, {lo + self.num_envs}) does not fit in {total} copies")
        self.shard_lo, self.total_envs, self.counts_before = lo, total, counts_before

    def set_members(self, generators: list[torch.Generator]) -> None:
        """Make these copies ``K = len(generators)`` consecutive groups of ``num_envs / K``, group k
        the copies of population member k: its resets are drawn from ``generators[k]`` exactly as
        an env of ``num_envs / K`` copies with that generator draws them (same values, same order,
        the same choice between drawing for every copy and for the done ones), so one env of K x N
        copies steps K members' envs at once (``fastpg.population``)."""
        if not generators or self.num_envs % len(generators):
            raise ValueError(f"{len(generators)} members do not split {self.num_envs} copies evenly")
        if self.total_envs != self.num_envs:
            raise ValueError("an env split over processes cannot hold population members")
        self.member_generators = list(generators)

    @property
    def _member_copies(self) -> int:
        return self.num_envs // len(self.member_generators) if self.member_generators else self.total_envs

    def _member_draw(self, generator: torch.Generator, n: int) -> Tensor:
        """``_sample_reset(n)`` from ``generator`` (a member's) instead of this env's own."""
        own, self.generator = self.generator, generator
        try:
            return self._sample_reset(n)
        finally:
            self.generator = own

    def set_kernel(self, kernel: str) -> None:
        """Step with ``kernel`` (one of ``KERNELS``) from now on; compiled kernels run on CPU only."""
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(self.KERNELS)} for {self.env_id}, got {kernel!r}")
        if kernel != "torch" and self.device.type != "cpu":
            raise ValueError(f"kernel {kernel!r} is a CPU kernel; this env is on {self.device} (use kernel 'torch')")
        self._use_kernel(kernel)
        self.kernel = kernel

    def _use_kernel(self, kernel: str) -> None:
        """Load the compiled step: ``"cpp"`` is the env kernel's own (``env_kernel``, the step the
        fused epoch compiles in), one call per lockstep step; subclasses with other kernels load
        them here."""
        if kernel == "cpp":
            self._kernel_module = type(self).env_kernel.module()

    def _compiled_dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``_dynamics`` by the env kernel's compiled step (``kernel="cpp"``)."""
        new, reward, terminated = self._kernel_module.env_step(type(self).env_kernel.name, state, action, self.elapsed)
        return new, reward.to(self.dtype), terminated

    def _make_info(self, obs_dim: int, *, num_actions: int | None = None, action_bound: float | None = None) -> EnvInfo:
        """EnvInfo for ``Discrete(num_actions)`` or ``Box(-action_bound, action_bound, (1,))`` actions."""
        box = action_bound is not None
        return EnvInfo(
            env_id=self.env_id,
            obs_shape=(obs_dim,),
            discrete=not box,
            num_actions=None if box else num_actions,
            action_shape=(1,) if box else (),
            action_low=torch.tensor([-action_bound]) if box else None,
            action_high=torch.tensor([action_bound]) if box else None,
            reward_threshold=self.reward_threshold,
            max_episode_steps=self.max_episode_steps,
        )

    def _const(self, value: float, dtype: torch.dtype | None = None) -> Tensor:
        return torch.tensor(value, dtype=dtype or self.state_dtype, device=self.device)

    @property
    def state(self) -> Tensor:
        """[N, D] view of the current state (the next action is taken in it)."""
        return self._state.t()

    @property
    def final_obs(self) -> Tensor:
        """[N, *obs_shape] observation reached by the last step, before done copies were reset."""
        return self._observe(self._final)

    # -- subclass hooks -------------------------------------------------------------------------
    def _sample_reset(self, n: int) -> Tensor:
        """[D, n] initial states drawn from self.generator."""
        raise NotImplementedError

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From ``state`` [D, N] (not modified): (next state [D, N], reward [N], terminated [N])."""
        raise NotImplementedError

    def _observe(self, state: Tensor) -> Tensor:
        """[N, *obs_shape] observation of ``state`` [D, N], in ``self.dtype``."""
        return state.t() if state.dtype == self.dtype else state.t().to(self.dtype)

    # -- BatchedEnv --------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Tensor:
        if self.member_generators is not None:
            raise RuntimeError("an env of population members is reset member by member (their own envs)")
        if seed is not None:
            self.generator.manual_seed(seed)
        self._state = self._fresh_states(self.num_envs, before=self.shard_lo, total=self.total_envs)
        self._final = self._state
        self.elapsed.zero_()
        return self._observe(self._state)

    def step(self, action: Tensor) -> Step:
        dynamics = self._compiled_dynamics if self.kernel == "cpp" else self._dynamics
        new, reward, terminated = dynamics(self._state, action)
        self._final = new
        self.elapsed += 1
        done = torch.bitwise_or(terminated, self.elapsed >= self.max_episode_steps)
        self._state = self._reset_done(new, done)
        return Step(self._observe(self._state), reward, done, self._valid, terminated)

    @property
    def selects_resets(self) -> bool:
        """True when resets draw a state for every copy and select the done ones (CUDA, and CPU up
        to ``SELECT_RESET_MAX_ENVS`` copies); False when only the done copies draw."""
        return self.device.type != "cpu" or self._member_copies <= SELECT_RESET_MAX_ENVS

    def _reset_done(self, new: Tensor, done: Tensor) -> Tensor:
        """The state after resetting the done copies; ``new`` is left intact (it is ``final_obs``)."""
        if self.selects_resets:
            # Draw a reset state for every copy and select: fixed shapes, and no host sync on CUDA
            # (nonzero would wait for the GPU every step); on CPU it is the cheaper way at small N.
            self.elapsed.masked_fill_(done, 0)
            return torch.where(done, self._states_to_select(), new)
        if self.member_generators is not None:
            return self._reset_done_members(new, done)
        # Large N on CPU: draw only for the done copies (drawing for all N costs more).
        idx = done.nonzero().squeeze(1)
        before, total = (0, idx.numel()) if self.counts_before is None else self.counts_before(idx.numel())
        if not idx.numel():
            if total:  # other shards' copies reset: their draws advance this generator too
                self._sample_reset(total)
            return new
        self.elapsed.index_fill_(0, idx, 0)
        return new.index_copy(1, idx, self._fresh_states(idx.numel(), before=before, total=total))

    def _states_to_select(self) -> Tensor:
        """[D, N] reset states, one per copy, for the resets that select the done copies: this
        env's columns of the whole draw, or each member's draw from its own generator."""
        if self.member_generators is None:
            return self._fresh_states(self.num_envs, before=self.shard_lo, total=self.total_envs)
        return torch.cat([self._member_draw(g, self._member_copies) for g in self.member_generators], dim=1)

    def _reset_done_members(self, new: Tensor, done: Tensor) -> Tensor:
        """``_reset_done`` for population members drawing for the done copies only: each group
        draws from its own generator."""
        gens, n = self.member_generators, self._member_copies
        idx = done.nonzero().squeeze(1)
        if not idx.numel():
            return new
        counts = torch.bincount(idx // n, minlength=len(gens)).tolist()  # done copies per member, in order
        self.elapsed.index_fill_(0, idx, 0)
        fresh = torch.cat([self._member_draw(g, c) for g, c in zip(gens, counts) if c], dim=1)
        return new.index_copy(1, idx, fresh)

    def _fresh_states(self, count: int, *, before: int, total: int) -> Tensor:
        """[D, count] reset states: columns ``[before, before + count)`` of the ``total`` drawn (the
        whole draw of an unsplit env)."""
        states = self._sample_reset(total)
        return states if count == total else states[:, before : before + count]

    def kernel_state(self) -> Tensor:
        """A contiguous copy of the state, ``[D, N]`` feature-major, for a compiled loop to step in
        place (``fastpg.fused``); hand it back with ``install_kernel_state``. The step counters
        (``elapsed``) and the generator are stepped in place by such a loop."""
        return self._state.clone(memory_format=torch.contiguous_format)

    @property
    def raw_state(self) -> Tensor:
        """The state tensor itself, ``[D, N]`` feature-major (``state`` is its ``[N, D]`` view)."""
        return self._state

    @property
    def raw_final(self) -> Tensor:
        """The state each copy reached on the last step before any reset, ``[D, N]``."""
        return self._final

    def install_kernel_state(self, state: Tensor, final: Tensor) -> None:
        """The state a compiled loop stepped to, and the state each copy reached on its last step
        before any reset (``final_obs``), both ``[D, N]``."""
        self._state, self._final = state, final

    def set_state(self, state: Tensor, elapsed: Tensor | None = None) -> None:
        """Overwrite the state of every copy from ``state`` [N, D] (tests, checkpoints)."""
        if tuple(state.shape) != (self.num_envs, self.state_dim):
            raise ValueError(f"state must have shape {(self.num_envs, self.state_dim)}, got {tuple(state.shape)}")
        self._state = state.to(device=self.device, dtype=self.state_dtype).t().contiguous()
        self._final = self._state
        if elapsed is not None:
            self.elapsed.copy_(elapsed)

    def state_dict(self) -> dict[str, Tensor]:
        """Everything the next steps depend on (checkpoints): state, step counters, generator."""
        return {
            "state": self._state.clone(),
            "final": self._final.clone(),
            "elapsed": self.elapsed.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Restore what ``state_dict`` returned (from an env of the same id, N and dtype)."""
        if tuple(sd["state"].shape) != tuple(self._state.shape) or sd["state"].dtype != self.state_dtype:
            raise ValueError(
                f"env state is {tuple(sd['state'].shape)} {sd['state'].dtype}, this env needs "
                f"{tuple(self._state.shape)} {self.state_dtype}"
            )
        self._state = sd["state"].to(self.device).clone()
        self._final = sd["final"].to(self.device).clone()
        self.elapsed.copy_(sd["elapsed"])
        self.generator.set_state(sd["generator"])

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        name, n = type(self).__name__, self.num_envs
        return f"{name}({self.env_id!r}, num_envs={n}, device={self.device}, dtype={self.dtype})"
