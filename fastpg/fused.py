"""The fused epoch: a whole collect and a whole update as two calls of compiled code.

Where it applies (``fused_problem`` says why not otherwise): a native env with an env kernel
(``NativeEnv.env_kernel``: CartPole, Acrobot, MountainCar, MountainCarContinuous and Pendulum, and
users' own envs, ``fastpg.envs.env_kernel``) on CPU, the built-in ``MLPPolicy`` (Discrete actions,
or Box actions and its diagonal Gaussian; relu or tanh), any baseline (none, mean, or the value
network), unfinished episodes masked or bootstrapped. There the generic path pays a few
microseconds of dispatch for each of some 40 torch ops per lockstep step and dozens per update;
the fused path runs:

- ``collect``: T steps of MLP forward, sampling, env step (the env kernel's compiled dynamics in
  gymnasium's arithmetic: CartPole, MountainCar and MountainCarContinuous bit-identical to
  gymnasium in float64, Acrobot and Pendulum to the last bit of the C library's cos/sin), reset,
  storage writes and episode totals in one C++ loop (parallel over envs at large N);
- ``update``: reward-to-go (bootstrapped by V of the last observation where asked), the entries
  in the loss, the baseline and the advantage, the policy's and the value network's forward and
  backward over those entries (explicit gradients, parallel over chunks of entries; the
  Gaussian's log-std included), the gradient norm, clipping and the non-finite check in one C++
  call; then the optimizer's step.

It computes what the generic path computes. It draws from the same generators in the same order
(the env's for resets, the trainer's for actions), so with one seed it is deterministic, and it
follows the generic path's trajectory until float rounding first flips a sampled action; the tests
hold its action distribution to the policy's, its env transitions to gymnasium's and its update to
the autograd one on the same batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fastpg._lazy_compiler import TensorDict
from fastpg.config import Config
from fastpg.envs import BatchedEnv, NativeEnv
from fastpg.errors import KernelBuildError
from fastpg.loss import SumAcross
from fastpg.policy import LOG_STD_MAX, LOG_STD_MIN, MLPPolicy
from fastpg.rollout import Carry, nonfinite_envs
from fastpg.storage import allocate_storage
from fastpg.update import UpdateSettings

__all__ = ["FusedEpoch", "KernelCall", "fused_problem", "FUSED_ACTIVATIONS"]

FUSED_ACTIVATIONS = {"relu": 0, "tanh": 1}  # codes of fastpg/csrc/mlp.h
_BASELINES = {"none": 0, "mean": 1, "value": 2}  # codes of fastpg/csrc/kernels.cpp


class KernelCall(NamedTuple):
    """One call of a compiled kernel: the module whose ``collect`` runs it, its arguments, and
    ``finish()``, to run once it has run (it hands the results back: the carry, the env's state,
    an evaluation's summary)."""

    module: ModuleType
    args: tuple
    finish: Callable[[], Any]

    def run(self) -> Any:
        self.module.collect(*self.args)
        return self.finish()


def run_many(calls: list[KernelCall]) -> None:
    """Run many collect calls, each module's in one batched ``collect_many`` (their ``finish``
    is the caller's)."""
    by_module: dict[int, list[KernelCall]] = {}
    for c in calls:
        by_module.setdefault(id(c.module), []).append(c)
    for group in by_module.values():
        group[0].module.collect_many([c.args for c in group])


def fused_problem(cfg: Config, env: BatchedEnv, policy: nn.Module, device: torch.device) -> str | None:
    """Why the fused epoch cannot run this configuration, or None if it can."""
    if cfg.fused == "off":
        return "--fused off"
    if device.type != "cpu":
        return f"it runs on CPU (device {device})"
    if not isinstance(env, NativeEnv) or type(env).env_kernel is None:
        return f"it needs a native env with an env kernel (fastpg.envs.EnvKernel), not {type(env).__name__}"
    if type(policy) is not MLPPolicy:
        return f"it needs the built-in MLPPolicy, not {type(policy).__name__}"
    info = env.info
    if len(info.obs_shape) != 1 or (not info.discrete and len(info.action_shape) != 1):
        return "it needs flat observations and actions"
    if policy.activation not in FUSED_ACTIVATIONS:
        return f"activation {policy.activation!r} is not one of {', '.join(FUSED_ACTIVATIONS)}"
    if policy.obs_normalizer is not None:
        return "observation normalization (--obs-norm) runs on the generic path"
    if policy.action_bound != "clip" and not policy.discrete:
        return f"action bound {policy.action_bound!r} runs on the generic path (the kernels clip)"
    if (policy.value_net is not None) != (cfg.baseline == "value"):
        return "a value head is trained with baseline value only (and baseline value needs one)"
    return None


def _linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]


class FusedEpoch:
    """``collect`` and ``update`` of the fused path, with the signatures of the generic ones."""

    kind = "fused"

    def __init__(self, env: NativeEnv, policy: MLPPolicy):
        self.env_kernel = type(env).env_kernel
        self.module = self.env_kernel.module()  # the env's collect
        self.kernels = self.module if self.env_kernel.builtin else _main_module()  # the update
        _check_kernel_sizes(self.module, env)
        self.env = env
        self.policy = policy
        linears = _linears(policy.net)
        self.weights = [m.weight for m in linears]
        self.biases = [m.bias for m in linears]
        self.act = FUSED_ACTIVATIONS[policy.activation]
        self.box = not policy.discrete
        value = _linears(policy.value_net) if policy.value_net is not None else []
        # Every parameter in named_parameters order (log_std, the policy network's, the value
        # network's): the kernel's gradients, its non-finite check and the optimizer's order.
        self.params = [policy.log_std] if self.box else []
        self.params += [p for m in linears for p in (m.weight, m.bias)]
        self.params += [p for m in value for p in (m.weight, m.bias)]
        self.names = [n for n, _ in policy.named_parameters()]
        assert len(self.names) == len(self.params), "MLPPolicy's parameters are log_std, net and value_net"
        self.grads = [torch.zeros_like(p) for p in self.params]
        self._fresh_adam_state: torch.optim.Optimizer | None = None  # adam_job created its state
        n_policy = 2 * len(linears)
        self.log_std_grad = self.grads[0] if self.box else None
        self.policy_grads = self.grads[self.box : self.box + n_policy]
        self.value_weights = [m.weight for m in value]
        self.value_biases = [m.bias for m in value]
        self.value_grads = self.grads[self.box + n_policy :]
        self.env_name = self.env_kernel.name
        info = env.info
        self.action_low = info.action_low.flatten().float() if self.box else None
        self.action_high = info.action_high.flatten().float() if self.box else None

    @classmethod
    def create(cls, cfg: Config, env: BatchedEnv, policy: nn.Module, device: torch.device) -> FusedEpoch | None:
        """The fused epoch for this run, or None where it does not apply or cannot be built here
        (then with a warning: the generic path runs)."""
        if fused_problem(cfg, env, policy, device) is not None:
            return None
        try:
            return cls(env, policy)
        except KernelBuildError as e:
            warnings.warn(f"{e} Training goes on with the generic path.", RuntimeWarning, stacklevel=3)
            return None

    def epoch_data(self, buf: TensorDict) -> EpochRead:
        """What ``Trainer._epoch_data`` reads of the epoch in ``buf``, in one kernel call."""
        return read_epochs(self.kernels, [buf])[0]

    def collect(self, buf: TensorDict, carry: Carry, generator: torch.Generator, env: NativeEnv | None = None) -> Carry:
        """Fill ``buf`` with T steps (as ``fastpg.rollout.collect``) of the trainer's env, or of
        ``env`` (a native env of the same kind); returns the carry."""
        return self.collect_call(buf, carry, generator, env).run()

    def collect_call(
        self, buf: TensorDict, carry: Carry, generator: torch.Generator, env: NativeEnv | None = None
    ) -> KernelCall:
        """``collect`` as a kernel call: its arguments, and what to do once it has run (a batched
        call runs many, ``collect_many``)."""
        env = self.env if env is None else env
        state = env.kernel_state()
        final = torch.empty_like(state)
        obs = (
            carry.obs
            if carry.obs.dtype == torch.float32 and carry.obs.is_contiguous()
            else carry.obs.float().contiguous()
        )
        gaussian = None
        if self.box:  # the policy's std as MLPPolicy computes it, and the action space's bounds
            with torch.no_grad():
                std = self.policy.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
            gaussian = (std, self.action_low, self.action_high)
        args = (
            self.env_name,
            self.weights, self.biases, self.act, generator, state, final, env.elapsed, env.generator,
            env.max_episode_steps, env.selects_resets, buf["obs"], buf["action"], buf["reward"], buf["done"],
            buf["terminated"], buf["valid"], buf["episode_return"], buf["episode_length"], obs,
            carry.episode_return, carry.episode_length, env.shard_lo, env.total_envs, env.counts_before, gaussian,
        )  # fmt: skip

        def finish() -> Carry:
            if obs is not carry.obs:
                carry.obs.copy_(obs)
            env.install_kernel_state(state, final)
            return carry

        return KernelCall(self.module, args, finish)

    def evaluate(self, env: NativeEnv, seed: int, generator: torch.Generator) -> dict[str, float]:
        """One episode in each copy of ``env`` (a native env of the trainer's kind), actions sampled
        from the policy with ``generator``: what ``fastpg.evaluate`` reports, from one fused
        collect of ``max_episode_steps`` steps (every copy ends its first episode within them)."""
        return self.evaluation_call(env, seed, generator).run()

    def evaluation_call(self, env: NativeEnv, seed: int, generator: torch.Generator) -> KernelCall:
        """``evaluate`` as a kernel call (see ``collect_call``); ``finish()`` returns its result."""
        T, N = env.max_episode_steps, env.num_envs
        buf = allocate_storage(env.info, T, N, "cpu")
        first = env.reset(seed=seed)
        carry = Carry(first.clone(), torch.zeros(N), torch.zeros(N, dtype=torch.int64))
        collected = self.collect_call(buf, carry, generator, env)

        def finish() -> dict[str, float]:
            collected.finish()
            end = buf["done"].to(torch.uint8).argmax(0, keepdim=True)  # [1, N]: each copy's first done
            ret = buf["episode_return"].gather(0, end).squeeze(0)
            length = buf["episode_length"].gather(0, end).squeeze(0)
            return {
                "eval_return_mean": ret.mean().item(),
                "eval_return_std": ret.std(unbiased=False).item(),
                "eval_length_mean": length.float().mean().item(),
                "eval_episodes": N,
                "unfinished": 0,
            }

        return KernelCall(self.module, collected.args, finish)

    def update(
        self,
        optimizer: torch.optim.Optimizer,
        buf: TensorDict,
        s: UpdateSettings,
        *,
        apply: bool = True,
        sum_across: SumAcross | None = None,
        last_obs: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], str | None]:
        """One update from the epoch in ``buf`` (as ``fastpg.update.reinforce_update``, with its
        ``sum_across`` for a batch split over processes, and ``last_obs``, the observation after
        the last step, which ``unfinished="bootstrap"`` needs)."""
        args = self.update_args(buf, s, optimizer if apply else None, sum_across, last_obs)
        return self.finish_update(self.kernels.update_grads(*args), optimizer, args, apply=apply)

    def update_args(
        self,
        buf: TensorDict,
        s: UpdateSettings,
        optimizer: torch.optim.Optimizer | None,
        sum_across: SumAcross | None = None,
        last_obs: Tensor | None = None,
    ) -> tuple:
        """The arguments of the kernel's ``update_grads`` for the epoch in ``buf`` (a batched call
        runs many, ``update_grads_many``); hand its result to ``finish_update``. ``optimizer``:
        the optimizer to step after a finite update (None: no step), which the kernel takes where
        it can (``adam_job``)."""
        gaussian = (self.policy.log_std, self.log_std_grad) if self.box else None
        value = None
        if s.baseline == "value":
            if s.unfinished == "bootstrap" and last_obs is None:
                raise ValueError("unfinished='bootstrap' needs last_obs, the observation after the last step")
            bootstrap = last_obs.float().contiguous() if s.unfinished == "bootstrap" else None
            value = (self.value_weights, self.value_biases, self.value_grads, s.value_coef, bootstrap)
        return (
            self.weights, self.biases, self.act, buf["obs"], buf["action"], buf["reward"], buf["done"],
            buf["valid"], buf["ret"], s.gamma, s.normalize, _BASELINES[s.baseline], s.entropy_coef,
            s.max_grad_norm, self.policy_grads, None if sum_across is None else lambda t: sum_across([t]),
            None if optimizer is None else self.adam_job(optimizer), gaussian, value,
        )  # fmt: skip

    def adam_job(self, optimizer: torch.optim.Optimizer) -> tuple | None:
        """The optimizer's step as the kernel takes it, or None where it cannot (then
        ``optimizer.step()`` runs in ``finish_update``).

        The kernel runs torch's single-tensor Adam as the same ATen ops with the same scalars
        (``fastpg/csrc/kernels.cpp``, ``adam_step``): the parameters and the optimizer's state come
        out bit for bit as ``optimizer.step()`` leaves them, without some 40 Python-level tensor
        calls per update (a third of a default epoch's time on the 2-core CPU). It applies to the
        trainer's own ``torch.optim.Adam`` on these parameters, in its defaults' form (no weight
        decay, amsgrad, maximize, foreach, fused, capturable or differentiable; float lr and betas;
        no step hooks). Before the first step the state is created here as ``Adam.step`` creates
        it (a zero step count and zero moments; removed again by ``finish_update`` if the update
        is skipped), so ``optimizer.step()``, which imports torch's compiler (about a second,
        ``fastpg._lazy_compiler``), is not called at all."""
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        options = ("weight_decay", "amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable")
        plain = not any(group.get(name) for name in options)
        beta1, beta2 = group["betas"]
        scalars = (group["lr"], beta1, beta2, group["eps"])
        if not plain or not all(type(x) is float for x in scalars) or _has_step_hooks(optimizer):
            return None
        params = group["params"]
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            return None
        states = [optimizer.state.get(p) for p in params]
        if not any(states):  # torch/optim/adam.py, Adam._init_group, neither capturable nor fused
            step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            for p in params:
                optimizer.state[p] = {
                    "step": torch.tensor(0.0, dtype=step_dtype),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
            states = [optimizer.state[p] for p in params]
            self._fresh_adam_state = optimizer
        elif not all(states):
            return None
        return (
            self.params, self.grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
            [st["step"] for st in states], *scalars,
        )  # fmt: skip

    def finish_update(
        self, raw: Tensor, optimizer: torch.optim.Optimizer, args: tuple, *, apply: bool = True
    ) -> tuple[dict[str, Tensor], str | None]:
        """The gradients the kernel wrote, the non-finite guard and the optimizer's step (unless
        the kernel took it: ``args``, the call's ``update_args``), from the kernel's statistics
        ``raw``; returns (stats, the non-finite quantity or None)."""
        loss, policy_loss, entropy, mask_frac, grad_norm, nonfinite, which, _, value_loss = raw.tolist()
        bad = self._nonfinite_name(int(nonfinite), int(which))
        for p, g in zip(self.params, self.grads):
            p.grad = None if bad else g
        if bad is None and apply and args[16] is None:
            optimizer.step()
        fresh, self._fresh_adam_state = self._fresh_adam_state, None
        if bad is not None and fresh is optimizer:  # skipped: no step, so no state (as Adam.step leaves it)
            for p in self.params:
                optimizer.state.pop(p, None)
        values = [loss, policy_loss, value_loss, entropy, grad_norm, mask_frac, float(bad is not None)]
        keys = ("loss", "policy_loss", "value_loss", "entropy", "grad_norm", "mask_frac", "skipped")
        return dict(zip(keys, torch.tensor(values, dtype=torch.float64).unbind())), bad

    def _nonfinite_name(self, code: int, which: int) -> str | None:
        """The kernel's non-finite code as ``fastpg.update.first_nonfinite`` names it."""
        name = self.names[which] if which >= 0 else None
        return {0: None, 1: "loss", 2: f"gradient (of {name})" if name else "gradient norm", 3: f"parameter ({name})"}[
            code
        ]


# The return and length of every episode that ended in an epoch (in the order they ended), its
# valid steps, and the env copies with a non-finite reward or observation.
EpochRead = tuple[list[float], list[int], int, list[int]]
_EPOCH_KEYS = ("done", "valid", "reward", "obs", "episode_return", "episode_length")


def read_epochs(kernels: ModuleType, bufs: list[TensorDict]) -> list[EpochRead]:
    """``EpochRead`` of every storage in ``bufs`` (the fused path's: CPU, float32), in one kernel
    call (one pass over each epoch, instead of ~10 torch ops: a sixth of the Python time of a
    fused Pendulum epoch); the non-finite copies are found by ``nonfinite_envs`` where the kernel
    saw any."""
    read = kernels.epoch_data_many([tuple(buf[k] for k in _EPOCH_KEYS) for buf in bufs])
    return [
        (ret.tolist(), length.tolist(), valid, [] if finite else nonfinite_envs(buf))
        for buf, (ret, length, valid, finite) in zip(bufs, read)
    ]


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a pre- or post-step hook is registered on ``optimizer`` or on every optimizer (a
    step the kernel takes would skip them)."""
    from torch.optim import optimizer as module

    return bool(
        optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
        or module._global_optimizer_pre_hooks or module._global_optimizer_post_hooks
    )  # fmt: skip


def _main_module() -> ModuleType:
    from fastpg._kernels import kernels

    return kernels()


def _check_kernel_sizes(module: ModuleType, env: NativeEnv) -> None:
    """Refuse an env whose Python class and C++ kernel disagree on the sizes (a user's env kernel
    declared with other spaces than its class), naming both."""
    kernel = type(env).env_kernel
    found = module.env_kernels().get(kernel.name)
    if found is None:
        raise ValueError(f"{type(env).__name__}: its env kernel module has no kernel named {kernel.name!r}")
    info = env.info
    declared = (
        env.state_dim,
        info.obs_shape[0] if len(info.obs_shape) == 1 else None,
        info.num_actions if info.discrete else 0,
        0 if info.discrete else info.action_shape[0],
    )
    names = ("state_dim", "obs_dim", "num_actions", "action_dim")
    for name, k, py in zip(names, found, declared):
        if k != py:
            raise ValueError(
                f"{type(env).__name__} and its env kernel {kernel.describe()} disagree: the kernel's {name} is {k}, "
                f"the env's (state_dim, info) say {py}"
            )
