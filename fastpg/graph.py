"""The CUDA-graph epoch: a whole collect and the update's math replayed as one captured graph.

On a GPU every torch op is a kernel launch of a few microseconds on the host, and one epoch of T
lockstep steps is thousands of them. Where it applies (``graph_problem``: native env on CUDA, the
built-in ``MLPPolicy``; Discrete actions without a value network until Box actions and the value
network have been checked on a GPU: ``GRAPH_BOX_AND_VALUE``), the epoch is captured once with
``torch.cuda.graph`` and replayed: T steps of policy sampling and env stepping into the ``[T, N]``
storage, episode totals, reward-to-go, the masked loss and its backward (slice by slice), the
gradient norm and clipping, and the non-finite checks. After each replay one host sync reads the
statistics; the optimizer then steps eagerly unless a value was non-finite (the guard of
``fastpg.update``).

Fixed shapes: a graph cannot compact the entries in the loss (that needs their count on the host),
so the loss runs over all T x N entries with the masked statistics and advantages of 0 outside the
mask, which adds exactly 0 there: the same loss as the compacted one of ``fastpg.update``.

Random numbers: the env's and the trainer's generators are registered with the graph, so each
replay draws fresh numbers from them (a replay that repeated its draws would train on the same
trajectories over and over). Capturing needs two warm-up epochs first (their collects advance the
envs and generators; the parameters are not changed), part of the setup.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastpg._lazy_compiler import TensorDict
from fastpg.config import Config
from fastpg.envs import BatchedEnv, NativeEnv
from fastpg.loss import reinforce_loss
from fastpg.policy import MLPPolicy
from fastpg.returns import episode_complete_mask, reward_to_go
from fastpg.rollout import Carry, collect
from fastpg.update import UpdateSettings

__all__ = ["GraphedEpoch", "graph_problem", "masked_loss_and_gradients", "GRAPH_SLICE_ENTRIES", "GRAPH_BOX_AND_VALUE"]

# Entries per slice of the captured loss (activations of 2^22 x width floats per layer).
GRAPH_SLICE_ENTRIES = 2**22
# Whether graph_problem admits Box actions and the value network (baseline value, unfinished
# bootstrap). Their math (masked_loss_and_gradients) is tested on the CPU against the generic
# update, but their capture has not yet run on a GPU: False until tests/test_graph.py, which sets
# it for its checks, passes on one (benchmarks/cuda/graph_checks.sh).
GRAPH_BOX_AND_VALUE = False
_STATS = ("loss", "policy_loss", "value_loss", "entropy", "grad_norm", "mask_frac")


def graph_problem(cfg: Config, env: BatchedEnv, policy: nn.Module, device: torch.device) -> str | None:
    """Why the CUDA-graph epoch cannot run this configuration, or None if it can."""
    if cfg.fused == "off":
        return "--fused off"
    if device.type != "cuda":
        return f"it runs on CUDA (device {device})"
    if not isinstance(env, NativeEnv):
        return "it needs a native env (backend torch)"
    if type(policy) is not MLPPolicy:
        return "it needs the built-in MLPPolicy"
    if policy.obs_normalizer is not None:
        return "observation normalization (--obs-norm) runs on the generic path"
    if not GRAPH_BOX_AND_VALUE and (not policy.discrete or policy.value_net is not None):
        return "Box actions and the value network are not yet checked on a GPU (generic path)"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return "this torch cannot register generators with a CUDA graph"
    return None


def masked_loss_and_gradients(
    policy: MLPPolicy, buf: TensorDict, s: UpdateSettings, last_obs: Tensor
) -> tuple[Tensor, Tensor]:
    """The update's loss over the ``[T, N]`` epoch in ``buf`` with fixed shapes (what a graph can
    capture: no compaction, no host sync), its gradients accumulated into the policy's; returns
    the totals ``(loss, policy_loss, value_loss, entropy)`` and the share of entries in the loss.

    The same loss as ``fastpg.update.reinforce_update``'s over the compacted entries: every term
    of an entry outside the loss is multiplied by 0 (advantage, entropy, value error), every mean
    divides by the count of those inside. Any baseline, ``unfinished`` masked or bootstrapped
    (V of ``last_obs``), Discrete or Box actions.
    """
    bootstrap = None
    if s.unfinished == "bootstrap":
        with torch.no_grad():
            bootstrap = policy.value(last_obs)
    ret = reward_to_go(buf["reward"], buf["done"], s.gamma, bootstrap=bootstrap, out=buf["ret"]).flatten()
    mask = buf["valid"]
    if s.unfinished == "mask":
        mask = mask & episode_complete_mask(buf["done"])
    m = mask.flatten().to(ret.dtype)
    count = m.sum().clamp_min(1.0)
    obs, action = buf["obs"].flatten(0, 1), buf["action"].flatten(0, 1)
    slices = [slice(i, i + GRAPH_SLICE_ENTRIES) for i in range(0, obs.shape[0], GRAPH_SLICE_ENTRIES)]
    adv = ret
    if s.baseline == "value":
        with torch.no_grad():
            adv = ret - torch.cat([policy.value(obs[sl]) for sl in slices])
    elif s.baseline == "mean":
        adv = adv - (ret * m).sum() / count
    if s.normalize:
        mean = (adv * m).sum() / count
        std = ((((adv - mean) * m) ** 2).sum() / count).sqrt()
        adv = (adv - mean) / (std + 1e-8)
    adv = adv * m  # entries outside the loss add exactly 0
    totals = torch.zeros(4, device=ret.device)
    for sl in slices:
        dist = policy(obs[sl])
        value = policy.value(obs[sl]) * m[sl] if s.baseline == "value" else None
        part, parts = reinforce_loss(dist.log_prob(action[sl]), adv[sl], count, ret=ret[sl] * m[sl], value=value,
                                     entropy=dist.entropy() * m[sl], entropy_coef=s.entropy_coef,
                                     value_coef=s.value_coef)  # fmt: skip
        part.backward()
        totals += torch.stack((part.detach(), parts["policy_loss"], parts["value_loss"], parts["entropy"]))
    return totals, m.mean()


class GraphedEpoch:
    """``collect`` (replays the captured graph) and ``update`` (guard, optimizer step)."""

    kind = "cuda-graph"

    def __init__(self, env: NativeEnv, policy: MLPPolicy, optimizer: torch.optim.Optimizer, buf: TensorDict,
                 carry: Carry, generator: torch.Generator, settings: UpdateSettings):  # fmt: skip
        self.env, self.policy, self.optimizer, self.buf = env, policy, optimizer, buf
        self.carry, self.generator, self.settings = carry, generator, settings
        self.state = env.kernel_state()  # static inputs the graph reads and writes
        self.final = env.kernel_state()
        self.params = list(policy.parameters())
        self.names = [n for n, _ in policy.named_parameters()]
        self.stats = torch.zeros(len(_STATS), dtype=torch.float64, device=env.device)
        self.finite = torch.ones(2 + len(self.params), dtype=torch.bool, device=env.device)
        self.graph = self._capture()

    @classmethod
    def create(cls, cfg: Config, trainer, device: torch.device) -> GraphedEpoch | None:
        """The graph epoch of a ``Trainer`` (its env, policy, optimizer, storage, carry, generator
        and update settings), or None where it does not apply."""
        t = trainer
        if graph_problem(cfg, t.env, t.policy, device) is not None:
            return None
        return cls(t.env, t.policy, t.optimizer, t.buf, t.carry, t.generator, t.settings)

    # -- the captured body -------------------------------------------------------------------------
    def _body(self) -> None:
        env, buf, carry = self.env, self.buf, self.carry
        env.install_kernel_state(self.state, self.final)
        collect(env, self.policy, buf, carry, self.generator)
        self.state.copy_(env.raw_state)
        self.final.copy_(env.raw_final)
        self._loss_and_gradients()

    def _loss_and_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        totals, mask_frac = masked_loss_and_gradients(self.policy, self.buf, self.settings, self.carry.obs)
        max_norm = self.settings.max_grad_norm if self.settings.max_grad_norm > 0 else math.inf
        grad_norm = nn.utils.clip_grad_norm_(self.params, max_norm)
        self.stats.copy_(torch.cat((totals, grad_norm.reshape(1), mask_frac.reshape(1))))
        checks = [torch.isfinite(totals[0]), torch.isfinite(grad_norm)] + [torch.isfinite(p).all() for p in self.params]
        self.finite.copy_(torch.stack(checks))

    def _capture(self) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: allocator, cuBLAS, autograd
            for _ in range(2):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        graph.register_generator_state(self.env.generator)
        with torch.cuda.graph(graph):
            self._body()
        self.env.install_kernel_state(self.state, self.final)
        return graph

    # -- the Trainer's interface -------------------------------------------------------------------
    def collect(self, buf: TensorDict, carry: Carry, generator: torch.Generator) -> Carry:
        """Replay the epoch: collect into ``buf`` and the loss's gradients (no optimizer step)."""
        env = self.env
        if env.raw_state is not self.state:  # restored from a checkpoint, say
            self.state.copy_(env.raw_state)
            self.final.copy_(env.raw_final)
            env.install_kernel_state(self.state, self.final)
        if carry is not self.carry:
            for name in ("obs", "episode_return", "episode_length"):
                getattr(self.carry, name).copy_(getattr(carry, name))
        self.graph.replay()
        return self.carry

    def update(self, optimizer: torch.optim.Optimizer, buf: TensorDict, s: UpdateSettings, *,
               apply: bool = True, last_obs: Tensor | None = None) -> tuple[dict[str, Tensor], str | None]:  # fmt: skip
        """The optimizer step for the gradients of the last replay, unless a value was non-finite."""
        ok = self.finite.tolist()  # the one host sync of the update
        bad = None
        if not all(ok):
            first_bad = ok.index(False)
            bad = ("loss", "gradient norm")[first_bad] if first_bad < 2 else f"parameter ({self.names[first_bad - 2]})"
        elif apply:
            optimizer.step()
        stats = dict(zip(_STATS, self.stats.clone().unbind()))  # on the device, as the generic stats
        stats["skipped"] = torch.tensor(float(bad is not None), dtype=torch.float64, device=self.stats.device)
        return stats, bad
