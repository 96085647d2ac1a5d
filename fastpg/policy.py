"""Policies: ``nn.Module``s that map observations to ``torch.distributions``.

The policy contract (what ``Trainer`` needs from a module you pass in yourself):

- ``policy(obs) -> Distribution``: ``obs`` is ``[*B, *obs_shape]`` float32 (``*B`` is ``[N]`` while
  collecting and ``[K]``, a slice of the epoch's entries in the loss, in the update); the
  distribution's batch shape is ``B`` and
  ``log_prob(action)`` / ``entropy()`` return ``[*B]``. Actions are ``[*B]`` int64 for Discrete
  spaces and ``[*B, *action_shape]`` float for Box spaces.
- ``policy.value(obs) -> [*B]``: only with ``baseline="value"``; predicts raw (undiscounted scale,
  unnormalized) returns.
- optional ``policy.act(obs, generator) -> action`` (``SamplingPolicy``): a fast path for
  collection that samples an action without building a distribution object; it must sample from
  the same distribution as ``policy(obs)``. Without it, the collector uses
  ``sample_action(policy(obs), generator)``.

Sampling uses an explicit ``torch.Generator`` (``sample_action``) so a run is reproducible without
touching the global RNG. ``Categorical``, ``Normal`` and ``Independent(Normal)`` are sampled that
way; any other distribution falls back to its own ``sample()``, which draws from the global RNG.

Box actions: the Gaussian is unbounded; the stored action and its log-probability are those of the
raw sample, and every backend steps the env with the action clipped to the space's bounds
(``fastpg.envs.base.action_clipper``; the CleanRL convention: the clip is part of the environment
from the policy's point of view).
"""

from __future__ import annotations

import inspect
import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from fastpg.config import Config
from fastpg.envs.base import EnvInfo
from fastpg.normalization import ObsNormalizer

__all__ = [
    "MLPPolicy",
    "SamplingPolicy",
    "mlp",
    "sample_action",
    "noise",
    "Rows",
    "mode_action",
    "ACTIVATION_MODULES",
    "Tanh",
    "gumbel_shape",
    "gumbel_choice",
]

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@runtime_checkable
class SamplingPolicy(Protocol):
    """A policy with a fast sampler for collection (same distribution as ``policy(obs)``)."""

    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with tanh's backward ``g * (1 - y**2)`` from the output."""

    @staticmethod
    def forward(ctx, x: Tensor, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
            y = x.mul_(2)
        else:
            y = torch.mul(x, 2)
        y.sigmoid_().mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y), None


class Tanh(nn.Module):
    """``nn.Tanh``, computed on CPU as ``2 * sigmoid(2x) - 1``; ``inplace`` as in ``nn.ReLU``.

    torch's CPU ``tanh`` kernel is slow: on the 2-core AVX2 machine this was measured on (torch
    2.13.0), ``torch.tanh`` of a [16384, 32] float32 tensor took 1.09 ms and this form 0.44 ms
    (2.5x; ``benchmarks/NOTES.md``), and the 32-unit tanh layer was the largest op of the collect
    loop. The result differs from ``torch.tanh`` by at most ~2e-7 (absolute, float32: the rounding
    of ``sigmoid`` near 1/2). Other devices use ``torch.tanh``. ``inplace=True`` overwrites the
    input (``mlp`` uses it on the output of a ``Linear``, which nothing else reads), saving a fresh
    activation-sized allocation per call.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return x.tanh_() if self.inplace else torch.tanh(x)
        return _SigmoidTanh.apply(x, self.inplace and not (x.is_leaf and x.requires_grad))

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


# One module per name of ``fastpg.config.Activation`` (a test checks that the two agree).
ACTIVATION_MODULES = {"tanh": Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them (none after the last).

    Activations run in place where the module allows it (their input is the preceding ``Linear``'s
    fresh output), which spares an activation-sized allocation per layer and call.
    """
    act = ACTIVATION_MODULES[activation]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            # In place where the module can: after a Linear layer nothing else reads its input.
            layers.append(act(inplace=True) if "inplace" in inspect.signature(act).parameters else act())
    return nn.Sequential(*layers)


class MLPPolicy(nn.Module):
    """MLP policy: Categorical over logits (Discrete) or a diagonal Gaussian with a learned,
    state-independent log-std clamped to [-5, 2] (Box); optional separate value network.

    Observations are flattened past the batch dimensions, so any Box observation shape works.
    """

    def __init__(
        self,
        info: EnvInfo,
        hidden_sizes: tuple[int, ...] = (128,),
        activation: str = "relu",
        *,
        value_head: bool = False,
        log_std_init: float = 0.0,
        obs_norm: bool = False,
        init: str = "default",
        last_layer_scale: float = 1.0,
        action_bound: str = "clip",
    ):
        super().__init__()
        self.activation = activation
        # Box actions: how a sample reaches the env's bounds (fastpg.envs.base.action_clipper)
        self.action_bound = action_bound
        self.obs_ndim = len(info.obs_shape)
        obs_dim = math.prod(info.obs_shape)
        self.discrete = info.discrete
        out = info.num_actions if info.discrete else math.prod(info.action_shape)
        self.action_shape = info.action_shape
        self.net = mlp([obs_dim, *hidden_sizes, out], activation)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((out,), float(log_std_init)))
        self.value_net = mlp([obs_dim, *hidden_sizes, 1], activation) if value_head else None
        self.obs_normalizer = ObsNormalizer(obs_dim) if obs_norm else None
        if init == "orthogonal":
            for net in (self.net, self.value_net):
                if net is not None:
                    _orthogonal(net)
        if last_layer_scale != 1.0:
            with torch.no_grad():
                self.net[-1].weight.mul_(last_layer_scale)

    @classmethod
    def from_config(cls, cfg: Config, info: EnvInfo) -> MLPPolicy:
        """The policy ``cfg`` describes, initialized from ``cfg.seed`` without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return cls(
                info,
                () if cfg.hidden_sizes == (0,) else cfg.hidden_sizes,  # (0,): linear, asked for explicitly
                cfg.activation,
                value_head=cfg.baseline == "value",
                log_std_init=0.0 if cfg.log_std_init is None else cfg.log_std_init,
                obs_norm=cfg.obs_norm,
                init=cfg.init,
                last_layer_scale=cfg.last_layer_scale,
                action_bound=cfg.action_bound,
            )

    def flatten(self, obs: Tensor) -> Tensor:
        """Observations [*B, *obs_shape] flattened past the batch dimensions (not normalized)."""
        return obs.flatten(-self.obs_ndim) if self.obs_ndim != 1 else obs

    def _flat(self, obs: Tensor) -> Tensor:
        """Observations as the networks take them: flattened, and normalized where ``obs_norm``."""
        flat = self.flatten(obs)
        return flat if self.obs_normalizer is None else self.obs_normalizer(flat)

    def forward(self, obs: Tensor) -> Distribution:
        """obs: [*B, *obs_shape] -> distribution with batch shape B."""
        return self.distribution(self.net(self._flat(obs)), None if self.discrete else self.log_std)

    def distribution(self, out: Tensor, log_std: Tensor | None) -> Distribution:
        """The distribution of the network's output ``out`` [*B, out] (``log_std`` broadcast to it;
        Box actions): what ``forward`` returns, for outputs computed elsewhere (a population's
        batched forward)."""
        if self.discrete:
            return Categorical(logits=out, validate_args=False)
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp().expand_as(out)
        if self.action_shape != out.shape[-1:]:
            out = out.unflatten(-1, self.action_shape)
            std = std.unflatten(-1, self.action_shape)
        return Independent(Normal(out, std, validate_args=False), len(self.action_shape), validate_args=False)

    def act(self, obs: Tensor, generator: torch.Generator | None = None, *, rows: Rows | None = None) -> Tensor:
        """Sample actions for obs [*B, *obs_shape] straight from the network output (no
        distribution object: building a Categorical normalizes the logits, which sampling does
        not need). Same distribution as ``forward``. ``rows``: see ``noise``."""
        out = self.net(self._flat(obs))
        if self.discrete:
            return _gumbel_argmax(out, generator, rows)
        return self.gaussian_action(out, self.log_std, noise(out.shape, out, generator, "normal", rows))

    def gaussian_action(self, out: Tensor, log_std: Tensor, eps: Tensor) -> Tensor:
        """Box actions: ``out + std * eps`` for standard normal draws ``eps`` of ``out``'s shape."""
        action = torch.addcmul(out, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp(), eps)
        return action if self.action_shape == out.shape[-1:] else action.unflatten(-1, self.action_shape)

    def value(self, obs: Tensor) -> Tensor:
        """obs: [*B, *obs_shape] -> [*B] predicted return."""
        if self.value_net is None:
            raise RuntimeError("this policy was built without a value head (value_head=False)")
        return self.value_net(self._flat(obs)).squeeze(-1)


def _orthogonal(net: nn.Sequential) -> None:
    """Orthogonal weights (gain sqrt(2) for hidden layers, 1 for the output layer), zero biases."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, gain=1.0 if i == len(linears) - 1 else math.sqrt(2))
        nn.init.zeros_(layer.bias)


# (lo, total): a batch that is rows [lo, lo + B) of a batch of ``total`` split over processes.
Rows = tuple[int, int]


def noise(
    shape: torch.Size | tuple[int, ...],
    like: Tensor,
    generator: torch.Generator | None,
    kind: str,
    rows: Rows | None = None,
) -> Tensor:
    """Standard ``"normal"`` or ``"uniform"`` [0, 1) draws of ``shape`` [B, ...], dtype and device of ``like``.

    With ``rows = (lo, total)`` the batch is rows ``[lo, lo + B)`` of a batch of ``total`` split
    over processes (``fastpg.distributed``): the draw is the whole batch's, and these rows are
    kept, so every process's generator stays where the unsplit run's is.
    """
    full = shape if rows is None else (rows[1], *shape[1:])
    u = torch.empty(full, dtype=like.dtype, device=like.device)
    u = u.normal_(generator=generator) if kind == "normal" else u.uniform_(generator=generator)
    return u if rows is None else u[rows[0] : rows[0] + shape[0]]


def _gumbel_argmax(logits: Tensor, generator: torch.Generator | None, rows: Rows | None = None) -> Tensor:
    """Sample Categorical(logits=logits) over the last dim with the Gumbel-max trick.

    ``argmax(logits + G)`` with ``G = -log(-log U)`` i.i.d. standard Gumbel, ``U`` uniform on (0, 1).
    With two actions that is ``logits[1] - logits[0] > G0 - G1``, and ``G0 - G1`` is standard
    logistic, ``logit(U)``: one uniform per row and no reduction over a 2-wide dimension (on CPU,
    N = 16384: 0.32 ms against 1.44 ms for the exponential-draw Gumbel-max it replaced; torch's CPU
    ``exponential_`` costs ~25 ns a number, ``uniform_`` ~4). ``uniform_`` draws from [0, 1); ``U`` is
    clamped up to the smallest normal float so that no noise term is infinite.
    """
    return gumbel_choice(logits, noise(gumbel_shape(logits), logits, generator, "uniform", rows))


def gumbel_shape(logits: Tensor) -> torch.Size:
    """The uniforms ``_gumbel_argmax`` draws for ``logits`` [*B, A]: one per row for two actions, else one per logit."""
    return logits.shape[:-1] if logits.shape[-1] == 2 else logits.shape


def gumbel_choice(logits: Tensor, u: Tensor) -> Tensor:
    """The Gumbel-max sample of ``logits`` from uniforms ``u`` of ``gumbel_shape(logits)``, a fresh
    draw it may overwrite."""
    u = u.clamp_min_(torch.finfo(u.dtype).tiny)  # a fresh draw (or rows of one): in place
    if logits.shape[-1] == 2:
        return (logits[..., 1] - logits[..., 0] > torch.special.logit(u)).long()
    return (logits - u.log_().neg_().log_()).argmax(-1)


def _base_normal(dist: Distribution) -> Normal | None:
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist if isinstance(dist, Normal) else None


def sample_action(dist: Distribution, generator: torch.Generator | None = None, *, rows: Rows | None = None) -> Tensor:
    """Draw one action per batch entry, from ``generator`` where the distribution allows.

    Categorical: Gumbel-max over the logits (one uniform draw per logit; no normalization needed).
    Normal / Independent(Normal): ``loc + scale * eps``. Others: ``dist.sample()`` (global RNG).
    ``rows``: see ``noise``.
    """
    if isinstance(dist, Categorical):
        return _gumbel_argmax(dist.logits, generator, rows)
    normal = _base_normal(dist)
    if normal is not None:
        loc = normal.loc
        return loc + normal.scale * noise(loc.shape, loc, generator, "normal", rows)
    return dist.sample()


def mode_action(dist: Distribution) -> Tensor:
    """The most likely action: argmax for Categorical, the mean for Gaussians."""
    if isinstance(dist, Categorical):
        return dist.logits.argmax(-1)
    normal = _base_normal(dist)
    if normal is not None:
        return normal.loc
    return dist.mode
