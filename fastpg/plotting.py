"""``fastpg plot``: learning curves from metrics files, the picture the classic tutorials show.

Two panels: the mean return of the latest 100 episodes against environment steps and against
training time, one curve per run, the target as a dashed line. Runs that differ only in their
seed (and outputs) are drawn as one curve: the mean over the seeds, with the spread between the
lowest and the highest as a band (each run's curve interpolated onto a common grid; a run that
stopped early, solved, holds its last value from there on, as its policy does).

A population's metrics file (``fastpg train --seeds K``) is read as its members' runs: one curve
with its band per hyperparameter setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from tyro.conf import Positional, arg

from fastpg.config import OUTPUT_FIELDS
from fastpg.errors import ConfigError

__all__ = ["PlotConfig", "Run", "read_run", "read_runs", "plot_runs"]

# Config fields that do not change what is learned: runs differing only in these are seeds of one curve.
_NOT_THE_EXPERIMENT = {"seed", *OUTPUT_FIELDS}


@dataclass(frozen=True)
class PlotConfig:
    """Plot learning curves from fastpg metrics files."""

    files: Positional[tuple[Path, ...]]
    """Metrics files (JSON Lines written by fastpg train --metrics-file)."""
    output: Annotated[Path, arg(aliases=("-o",))] = Path("curve.png")
    """The PNG to write."""
    title: str | None = None
    """Figure title (default: the env ids)."""

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError("files", "give at least one metrics file")
        for f in self.files:
            if not Path(f).is_file():
                raise ConfigError("files", f"no metrics file at {f}")
        if Path(self.output).suffix.lower() != ".png":
            raise ConfigError("output", f"must end in .png, got {self.output}")


@dataclass
class Run:
    """One metrics file: its header's config, its epochs and its summary (if it has one)."""

    path: Path
    config: dict[str, Any]
    steps: np.ndarray
    seconds: np.ndarray
    returns: np.ndarray
    target: float | None

    @property
    def experiment(self) -> str:
        """What the run tests, apart from its seed: a key shared by the seeds of one experiment."""
        return json.dumps({k: v for k, v in sorted(self.config.items()) if k not in _NOT_THE_EXPERIMENT})


def read_runs(path: Path) -> list[Run]:
    """The runs of a metrics file: its one run, or each member of a population (``ConfigError``
    for a file without an epoch to plot)."""
    header: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    rows: dict[int | None, list[tuple[float, float, float]]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError("files", f"{path}:{number} is not a JSON line") from None
        if record.get("header"):
            header = header or record
        elif record.get("summary"):
            summary = record
        elif record.get("return_mean_100") is not None:
            point = (record["env_steps"], record["wall_s"], record["return_mean_100"])
            rows.setdefault(record.get("member"), []).append(point)
    if not rows:
        raise ConfigError("files", f"{path} has no epoch with a finished episode to plot")
    config = header.get("config", {})
    members = {m["member"]: m for m in header.get("population", {}).get("members", [])}
    targets = {r["member"]: r.get("target_return") for r in summary.get("member_results", [])}
    runs = []
    for member, points in sorted(rows.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        steps, seconds, returns = (np.asarray(col, dtype=float) for col in zip(*points))
        if member is None:
            cfg, target = config, summary.get("target_return")
        else:
            values = {k: v for k, v in members.get(member, {}).items() if k not in ("member", "setting")}
            cfg, target = {**config, **values}, targets.get(member)
        runs.append(
            Run(Path(path), cfg, steps, seconds, returns, target if target is not None else cfg.get("target_return"))
        )
    return runs


def read_run(path: Path) -> Run:
    """The epochs of a one-run metrics file; ``ConfigError`` if it has none (or holds a
    population: ``read_runs`` reads its members)."""
    runs = read_runs(path)
    if len(runs) > 1:
        raise ConfigError("files", f"{path} holds a population of {len(runs)} runs; read it with read_runs")
    return runs[0]


def plot_runs(runs: list[Run], output: Path, title: str | None = None) -> Path:
    """Draw the runs (seeds of one experiment as mean and spread) into ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from fastpg.metrics import format_si

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.experiment, []).append(run)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    differing = _differing([members[0].config for members in groups.values()])
    for (_, members), color in zip(groups.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        label = _label(members, differing)
        for ax, x_of in ((axes[0], lambda r: r.steps), (axes[1], lambda r: r.seconds)):
            _draw(ax, members, x_of, color, label)
    targets = {r.target for r in runs if r.target is not None}
    for ax, xlabel in ((axes[0], "environment steps"), (axes[1], "training time (s)")):
        for target in targets:
            ax.axhline(target, color="0.35", linestyle="--", linewidth=1)
            ax.annotate(f"target {target:g}", (0.01, target), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize=8, color="0.35")  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_si(x) if x else "0"))
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    axes[0].set_ylabel("mean return, latest 100 episodes")
    axes[0].legend(loc="lower right", fontsize=8)
    envs = sorted({r.config.get("env", "?") for r in runs})
    fig.suptitle(title or ", ".join(envs))
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


def _differing(configs: list[dict[str, Any]]) -> list[str]:
    """The config fields whose values differ between the experiments (what their labels say)."""
    keys = sorted({k for c in configs for k in c} - _NOT_THE_EXPERIMENT)
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def _label(members: list[Run], differing: list[str]) -> str:
    cfg = members[0].config
    if differing:
        name = ", ".join(f"{k.replace('_', ' ')} {cfg.get(k)}" for k in differing)
    else:
        name = cfg.get("env", members[0].path.stem) if cfg else members[0].path.stem
    return f"{name} ({len(members)} seeds: mean, min-max)" if len(members) > 1 else name


def _draw(ax, members: list[Run], x_of, color: str, label: str) -> None:
    if len(members) == 1:
        run = members[0]
        ax.plot(x_of(run), run.returns, color=color, linewidth=1.6, label=label)
        return
    grid = np.linspace(0.0, max(x_of(r)[-1] for r in members), 300)
    # NaN before a run's first finished episodes; a run that stopped (solved) holds its last value
    curves = np.stack([np.interp(grid, x_of(r), r.returns, left=np.nan) for r in members])
    valid = ~np.isnan(curves).all(0)
    with np.errstate(all="ignore"):
        low, high, mean = (f(curves[:, valid], axis=0) for f in (np.nanmin, np.nanmax, np.nanmean))
    ax.fill_between(grid[valid], low, high, color=color, alpha=0.2, linewidth=0)
    ax.plot(grid[valid], mean, color=color, linewidth=1.6, label=label)
