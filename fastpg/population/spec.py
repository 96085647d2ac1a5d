"""``Population``: K independent runs trained as one batched program, as a pure value.

A run is a function of its config; a population is that function batched over members that share
everything that fixes a shape or the program (env, N, T, policy sizes and activation, backend,
device, baseline, outputs, ...) and may differ in what does not (``VARYING_FIELDS``: the seed, the
learning rate, the discount, the entropy and value coefficients, gradient clipping, the target,
the initial log-std and the budgets). Member i computes what the single run of its config computes
(``fastpg.population.PopulationTrainer``).

Build one from a list of ``Config``s, or as a grid over a base config::

    Population.grid(Config(), seeds=8, lr=[0.01, 0.003], entropy_coef=[0.0, 0.01])  # 32 members

Members are setting-major: the grid of the varying values in the order given (the last one
fastest), and the seeds innermost, so member ``i`` has setting ``i // S`` and seed ``i % S`` of S
seeds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from fastpg.config import Config
from fastpg.errors import ConfigError

__all__ = ["Population", "VARYING_FIELDS", "seed_list"]

# Fields that may differ between the members of a population: none of them changes a shape, the
# program the members run or where the population writes.
VARYING_FIELDS = (
    "seed",
    "lr",
    "gamma",
    "entropy_coef",
    "value_coef",
    "max_grad_norm",
    "target_return",
    "log_std_init",
    "max_env_steps",
    "max_epochs",
)

# Members beyond this are refused (a typo such as --seeds 10000000 would otherwise build them all).
MAX_MEMBERS = 65536


def seed_list(seeds: int | Sequence[int], first: int = 0) -> tuple[int, ...]:
    """``seeds`` as a tuple: a count K is ``first, first + 1, ..., first + K - 1``; a sequence is
    taken as it is (``range(0, 32)`` included). Seeds are checked by ``Config`` (in [0, 2**32))."""
    if isinstance(seeds, bool):
        raise ConfigError("seeds", f"must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if not 1 <= seeds <= MAX_MEMBERS:
            raise ConfigError("seeds", f"a count of seeds must be in [1, {MAX_MEMBERS}], got {seeds}")
        return tuple(range(first, first + seeds))
    out = tuple(seeds)
    if not out:
        raise ConfigError("seeds", "give at least one seed")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in out):
        raise ConfigError("seeds", f"seeds must be integers, got {list(out)!r}")
    if len(set(out)) != len(out):
        raise ConfigError("seeds", f"each seed once, got {list(out)!r}")
    return out


@dataclass(frozen=True)
class Population:
    """The members of a population (checked on construction: at least one member, the shared
    fields equal, no member twice)."""

    members: tuple[Config, ...]

    def __post_init__(self) -> None:
        members = tuple(self.members)
        object.__setattr__(self, "members", members)
        if not members:
            raise ConfigError("members", "a population needs at least one member")
        if len(members) > MAX_MEMBERS:
            raise ConfigError("members", f"at most {MAX_MEMBERS} members, got {len(members)}")
        for i, m in enumerate(members):
            if not isinstance(m, Config):
                raise ConfigError("members", f"member {i} is {type(m).__name__}, expected a fastpg.Config")
        _check_shared(members)
        seen: dict[str, int] = {}
        for i, m in enumerate(members):
            key = json.dumps(_varying_values(m), sort_keys=True)
            if key in seen:
                raise ConfigError("members", f"members {seen[key]} and {i} are the same run ({_describe(m)})")
            seen[key] = i

    @classmethod
    def grid(
        cls, base: Config, *, seeds: int | Sequence[int] | None = None, **values: Sequence[Any] | Any
    ) -> Population:
        """Every combination of ``values`` (field -> list of values, fields of ``VARYING_FIELDS``)
        with every seed of ``seeds`` (a count from ``base.seed`` on, or a list; default: the base
        seed alone), on top of ``base``. A field given one value (not a list) is set for all."""
        for name in values:
            _check_varying(name)
        if "seed" in values:
            raise ConfigError("seed", "give the seeds of a population with seeds=, not seed=")
        lists = {k: list(v) if isinstance(v, (list, tuple, range)) else [v] for k, v in values.items()}
        for name, vals in lists.items():
            if not vals:
                raise ConfigError(name, "give at least one value")
        seed_values = seed_list(seeds, base.seed) if seeds is not None else (base.seed,)
        names = list(lists)
        count = len(seed_values)
        for vals in lists.values():
            count *= len(vals)
        if count > MAX_MEMBERS:
            raise ConfigError("members", f"the grid has {count} members; at most {MAX_MEMBERS}")
        members = [
            base.replace(**dict(zip(names, combo)), seed=seed)
            for combo in itertools.product(*lists.values())
            for seed in seed_values
        ]
        return cls(tuple(members))

    def __len__(self) -> int:
        return len(self.members)

    @property
    def base(self) -> Config:
        """The first member (its shared fields are every member's)."""
        return self.members[0]

    @property
    def varying(self) -> tuple[str, ...]:
        """The fields whose values differ between members, in ``VARYING_FIELDS`` order."""
        return tuple(f for f in VARYING_FIELDS if len({getattr(m, f) for m in self.members}) > 1)

    def setting(self, i: int) -> dict[str, Any]:
        """Member i's hyperparameter setting: its values of the varying fields other than the
        seed (members that differ only in their seed share a setting)."""
        return {f: getattr(self.members[i], f) for f in self.varying if f != "seed"}

    def setting_label(self, i: int) -> str:
        """``"lr 0.01, entropy_coef 0"`` (``"all"`` when only the seed varies)."""
        setting = self.setting(i)
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items()) or "all"

    def settings(self) -> list[str]:
        """The distinct setting labels, in member order."""
        return list(dict.fromkeys(self.setting_label(i) for i in range(len(self))))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (checkpoint- and JSON-safe): the members' configs."""
        return {"members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Population:
        return cls(tuple(Config.from_dict(m) for m in values["members"]))

    def replace(self, **changes: Any) -> Population:
        """Every member with ``changes`` applied (shared fields: outputs, budgets, ...)."""
        return Population(tuple(m.replace(**changes) for m in self.members))


def _check_varying(name: str) -> None:
    known = {f.name for f in fields(Config)}
    if name not in known:
        raise ConfigError(name, "is not a Config field")
    if name not in VARYING_FIELDS:
        raise ConfigError(
            name,
            "fixes the shape or the program of a population and must be the same for every member; "
            f"the fields that may vary are {', '.join(VARYING_FIELDS)}",
        )


def _varying_values(cfg: Config) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in VARYING_FIELDS}


def _describe(cfg: Config) -> str:
    return ", ".join(f"{k} {v}" for k, v in _varying_values(cfg).items())


def _check_shared(members: tuple[Config, ...]) -> None:
    """Every field outside ``VARYING_FIELDS`` must be the same for every member: ``ConfigError``
    naming the first that is not, and two members that differ in it."""
    first = members[0].to_dict()
    for i, m in enumerate(members[1:], start=1):
        d = m.to_dict()
        for name, value in first.items():
            if name not in VARYING_FIELDS and d[name] != value:
                raise ConfigError(
                    name,
                    f"must be the same for every member of a population (member 0: {value!r}, member {i}: "
                    f"{d[name]!r}); the fields that may vary are {', '.join(VARYING_FIELDS)}",
                )
