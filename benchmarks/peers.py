"""fastpg side by side with its peers on CartPole-v1: one run, one machine, ratios fastpg / peer.

    .venv/bin/pip install -c constraints.txt -e '.[peers]'      # stable-baselines3 (optional)
    .venv/bin/python benchmarks/peers.py --json benchmarks/results/peers.json > benchmarks/results/peers.txt

(about 8 minutes on the 2-core machine; progress on stderr).

Sections (``--sections``; each prints its table as it finishes, the ratios come at the end):

- ``env``: env-only steps/s with random actions (``fastpg bench``'s env phase): gymnasium's
  ``SyncVectorEnv`` (N = 8, 256) and ``AsyncVectorEnv`` (N = 8: one worker process per copy, each
  ~100 MB as it imports torch; 256 of them exhaust this machine's 24 GB), its
  ``CartPoleVectorEnv`` and fastpg's native env (torch ops, and the fused C++ step) at N = 8, 256,
  4096, 65536.
- ``returns``: reward-to-go elements/s at [T, N] = [128, 65536], float32: fastpg's kernel against a
  tuned torch loop over T, the reference loop and torchrl's ``reward2go`` (when torchrl imports).
- ``sps``: fastpg's end-to-end training steps/s (``fastpg bench``'s train phase, T = 128) with the
  tch-rs example's policy (one hidden layer of 32, tanh) and the default policy (128, relu).
- ``solve``: time to solve CartPole-v1 for every seed, under one protocol for every system:
  fastpg on its defaults (``fastpg``: the fused epoch) and on its generic torch path
  (``fastpg-generic``, ``--fused off``), stable-baselines3 A2C and PPO with the rl-zoo CartPole-v1
  hyperparameters (8 envs, ``DummyVecEnv``), and the classic per-episode REINFORCE loop of the
  tutorials (``classic_reinforce.py``). The peers' training steps/s come from these runs.

Time-to-solve protocol (``solve_protocol.py``). A system's clock runs only while it trains
(collecting and updating): setup and every evaluation are excluded. An evaluation plays 100 fresh
episodes of gymnasium's ``CartPoleVectorEnv`` (one per copy), actions sampled from the policy
(``--eval-deterministic``: the most likely action); the first evaluation with a mean return >= 475
gives the time to solve. The headline evaluates after every update (fastpg: an epoch;
stable-baselines3: a rollout and its training); the second column evaluates on a 0.5 s grid of
training time (after the first update once 0.5 s have passed since the last evaluation), measured
in the same runs. A2C and the classic loop make thousands of tiny updates (one per 64 steps, one
per episode), too many to evaluate each: they are measured on the grid only
(``--every-update-systems``). A run that has not solved after ``--max-train-s`` of training (or,
for the peers, its rl-zoo step budget) counts as not solved; medians over seeds count an unsolved
run as longer than every solved one.

Run it on an otherwise idle machine: two CPU-bound processes on 2 cores slow each other down by
far more than 2x.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from classic_reinforce import ClassicReinforce
from returns_impls import returns_data, returns_impls
from solve_protocol import EVAL_EPISODES, SolveClock, evaluator, median_time, solve_fastpg

from fastpg import Config, ConfigError
from fastpg.bench import BenchConfig, machine_info, run_bench
from fastpg.envs import make_env
from fastpg.metrics import format_si

SECTIONS = ("env", "returns", "sps", "solve")
SYSTEMS = ("fastpg", "fastpg-generic", "sb3-a2c", "sb3-ppo", "classic")
TARGET = 475.0

# rl-baselines3-zoo, hyperparams/ppo.yml and a2c.yml, CartPole-v1 ("lin_X": X times the remaining
# fraction of the step budget; everything not listed is stable-baselines3's default).
RL_ZOO = {
    "sb3-ppo": {
        "n_envs": 8,
        "n_timesteps": 100_000,
        "kwargs": dict(
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=("lin", 1e-3),
            clip_range=("lin", 0.2),
        ),
    },
    "sb3-a2c": {"n_envs": 8, "n_timesteps": 500_000, "kwargs": dict(ent_coef=0.0)},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the time-to-solve section -------------------------------------------------------------------


def _clock(logits, seed: int, args: argparse.Namespace, eval_env, system: str) -> SolveClock:
    evaluate_fn = evaluator(logits, eval_env, deterministic=args.eval_deterministic)
    return SolveClock(evaluate_fn, seed, TARGET, every_update=system in args.every_update_systems,
                      grid_s=args.grid_s, max_train_s=args.max_train_s)  # fmt: skip


def solve_classic(seed: int, args: argparse.Namespace, eval_env) -> dict[str, Any]:
    learner = ClassicReinforce(seed)
    clock = _clock(learner.logits, seed, args, eval_env, "classic")
    clock.start()
    try:
        while True:
            learner.episode()
            if clock.boundary(learner.steps):
                return clock.result("classic", learner.steps)
    finally:
        learner.close()


def _sb3_kwargs(system: str) -> dict[str, Any]:
    kwargs = {}
    for k, v in RL_ZOO[system]["kwargs"].items():
        if isinstance(v, tuple):  # ("lin", x): linear decay to 0 over the budget, as rl-zoo's lin_x
            x = v[1]
            kwargs[k] = lambda progress_remaining, x=x: progress_remaining * x
        else:
            kwargs[k] = v
    return kwargs


def solve_sb3(system: str, seed: int, args: argparse.Namespace, eval_env) -> dict[str, Any]:
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    spec = RL_ZOO[system]
    algo = PPO if system == "sb3-ppo" else A2C
    env = make_vec_env("CartPole-v1", n_envs=spec["n_envs"], seed=seed)
    model = algo("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **_sb3_kwargs(system))

    def logits(obs: torch.Tensor) -> torch.Tensor:
        return model.policy.get_distribution(obs).distribution.logits

    clock = _clock(logits, seed, args, eval_env, system)

    class Protocol(BaseCallback):
        stop = False

        def _on_training_start(self) -> None:
            clock.start()

        def _on_rollout_start(self) -> None:  # after each training phase (and once before the first rollout)
            if self.num_timesteps > 0 and not self.stop:
                self.stop = clock.boundary(self.num_timesteps)

        def _on_step(self) -> bool:
            return not self.stop

    try:
        model.learn(total_timesteps=spec["n_timesteps"], callback=Protocol())
        if clock.evals and clock.evals[-1][1] < model.num_timesteps:
            clock.boundary(model.num_timesteps)  # the budget ended between two boundaries
        return clock.result(system, model.num_timesteps)
    finally:
        env.close()


def run_solve(args: argparse.Namespace) -> list[dict[str, Any]]:
    eval_env = make_env("CartPole-v1", EVAL_EPISODES, backend="vector")
    rows = []
    try:
        for system in args.systems:
            seeds = args.classic_seeds if system == "classic" and args.classic_seeds else args.seeds
            for seed in seeds:
                with contextlib.redirect_stdout(io.StringIO()):
                    if system.startswith("fastpg"):
                        overrides = {**args.fastpg, **({"fused": "off"} if system == "fastpg-generic" else {})}
                        row = solve_fastpg(system, seed, TARGET, overrides, env=eval_env, grid_s=args.grid_s,
                                           max_train_s=args.max_train_s,
                                           every_update=system in args.every_update_systems)  # fmt: skip
                    elif system == "classic":
                        row = solve_classic(seed, args, eval_env)
                    else:
                        row = solve_sb3(system, seed, args, eval_env)
                rows.append(row)
                t = f"every update {_secs(row['time_to_solve_s'])}, 0.5 s grid {_secs(row['grid_time_to_solve_s'])}"
                log(
                    f"solve  {system:<8} seed {seed}: {t}, {row['env_steps']:,} steps, "
                    f"{format_si(row['sps'])} steps/s, {row['evaluations']} evaluations"
                )
    finally:
        eval_env.close()
    return rows


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def _cell(x: float | None, measured: bool = True) -> str:
    """A time for the report's table: seconds, '-' for unsolved, 'n/a' where not measured."""
    return "n/a" if not measured else "-" if x is None else f"{x:.3f}s"


# -- throughput sections --------------------------------------------------------------------------


def run_env(args: argparse.Namespace) -> list[dict[str, Any]]:
    common = dict(phases=("env",), device="cpu", repeats=args.repeats, quiet=True)
    cells = [
        BenchConfig(backends=("sync", "async"), num_envs=(8,), **common),
        BenchConfig(backends=("sync",), num_envs=(256,), **common),
        BenchConfig(backends=("vector", "torch"), num_envs=(8, 256, 4096, 65536), **common),
        BenchConfig(backends=("torch",), num_envs=(8, 256, 4096, 65536), env_kernel="cpp", **common),
    ]
    rows = []
    for b in cells:
        for r in run_bench(b, progress=log)["results"]:
            r["impl"] = "fused" if b.env_kernel == "cpp" else r["backend"]
            rows.append(r)
    return rows


def run_returns(args: argparse.Namespace) -> list[dict[str, Any]]:
    T, N = 128, 65536
    reward, done = returns_data(T, N)
    out = torch.empty_like(reward)
    impls = returns_impls()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for fn in impls.values():
        fn(reward, done, out)  # warm-up
    for _ in range(args.repeats):  # round robin: drift of the machine hits every implementation alike
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn(reward, done, out)
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, ts in times.items():
        rate = T * N / statistics.median(ts)
        rows.append({"impl": name, "T": T, "N": N, "rate_median": rate, "times_s": ts})
        log(f"returns {name:<10} [{T}, {N}]: {format_si(rate)} elements/s")
    return rows


def run_sps(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for hidden, act in (((32,), "tanh"), ((128,), "relu")):
        b = BenchConfig(
            phases=("train",),
            backends=("torch",),
            num_envs=tuple(args.sps_num_envs),
            hidden_sizes=hidden,
            activation=act,
            device="cpu",
            repeats=args.repeats,
            quiet=True,
        )
        for r in run_bench(b, progress=log)["results"]:
            r["policy"] = f"{hidden[0]}-{act}"
            rows.append(r)
    return rows


# -- report ---------------------------------------------------------------------------------------


def _rate(rows, **match) -> float | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and "rate_median" in r:
            return r["rate_median"]
    return None


def ratios(report: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    out: list[tuple[str, float | None, str]] = []

    def add(label: str, num: float | None, den: float | None, target: str = "") -> None:
        out.append((label, num / den if num and den else None, target))

    env = report.get("env", [])
    for n in (8, 256, 4096, 65536) if env else ():
        add(
            f"env: native (torch ops) / CartPoleVectorEnv, N={n}",
            _rate(env, impl="torch", num_envs=n),
            _rate(env, impl="vector", num_envs=n),
        )
        add(
            f"env: native (fused) / CartPoleVectorEnv, N={n}",
            _rate(env, impl="fused", num_envs=n),
            _rate(env, impl="vector", num_envs=n),
        )
    for n, peer in ((8, "sync"), (8, "async"), (256, "sync")) if env else ():
        add(
            f"env: native (fused) / {peer} vector env, N={n}",
            _rate(env, impl="fused", num_envs=n),
            _rate(env, impl=peer, num_envs=n),
        )
    ret = report.get("returns", [])
    if ret:
        add(
            "returns: fastpg / torch loop over T, [128, 65536]",
            _rate(ret, impl="fast"),
            _rate(ret, impl="torch-loop"),
            ">= 2x",
        )
        add("returns: fastpg / reference loop, [128, 65536]", _rate(ret, impl="fast"), _rate(ret, impl="reference"))
        add(
            "returns: fastpg / torchrl reward2go, [128, 65536]",
            _rate(ret, impl="fast"),
            _rate(ret, impl="torchrl"),
            ">= 100x",
        )
    sps = report.get("sps", [])
    solve = report.get("solve", [])
    best = max((r["rate_median"] for r in sps if r.get("policy") == "32-tanh" and "rate_median" in r), default=None)
    for system in ("sb3-ppo", "sb3-a2c", "classic") if sps else ():
        peer = [r["sps"] for r in solve if r["system"] == system and r["sps"]]
        if peer:
            add(
                f"training steps/s: fastpg 32-tanh (best N) / {system}",
                best,
                statistics.median(peer),
                ">= 500x" if system == "sb3-ppo" else "",
            )
    for ours in ("fastpg", "fastpg-generic"):
        ours_rows = [r for r in solve if r["system"] == ours]
        for system in ("sb3-ppo", "sb3-a2c", "classic") if ours_rows else ():
            peer_rows = [r for r in solve if r["system"] == system]
            for key, protocol in (("time_to_solve_s", "every update"), ("grid_time_to_solve_s", "0.5 s grid")):
                ours_t, peer_t = median_time(ours_rows, key), median_time(peer_rows, key)
                if peer_rows and (ours_t or peer_t):  # time ratio peer / fastpg: > 1 means fastpg solves faster
                    target = ">= 10x" if (ours, system, key) == ("fastpg", "sb3-ppo", "time_to_solve_s") else ""
                    out.append(
                        (
                            f"time to solve ({protocol}): {system} / {ours}",
                            peer_t / ours_t if peer_t and ours_t else None,
                            target,
                        )
                    )
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = []
    if report.get("env"):
        lines.append("env-only steps/s (random actions)")
        for r in report["env"]:
            val = format_si(r["rate_median"]) if "rate_median" in r else "skipped"
            lines.append(f"  {r['impl']:<7} N={r['num_envs']:<6} {val}")
    if report.get("returns"):
        lines.append("reward-to-go elements/s, [128, 65536] float32")
        lines += [f"  {r['impl']:<11} {format_si(r['rate_median'])}" for r in report["returns"]]
    if report.get("sps"):
        lines.append("fastpg end-to-end training steps/s (T = 128, native CartPole-v1)")
        lines += [
            f"  {r['policy']:<9} N={r['num_envs']:<6} {format_si(r['rate_median'])}"
            for r in report["sps"]
            if "rate_median" in r
        ]
    if report.get("solve"):
        lines.append("time to solve CartPole-v1 (training time, evaluations excluded; medians over seeds)")
        lines.append(
            f"  {'system':<15} {'every update':>12} {'min':>7} {'max':>7} {'solved':>7} {'0.5 s grid':>11} "
            f"{'steps':>9} {'steps/s':>9}"
        )
        for system in dict.fromkeys(r["system"] for r in report["solve"]):
            rows = [r for r in report["solve"] if r["system"] == system]
            every = [r["time_to_solve_s"] for r in rows if r["time_to_solve_s"] is not None]
            measured = rows[0]["every_update"]
            steps = [r["env_steps_to_solve"] or r["grid_env_steps_to_solve"] for r in rows if r["solved"]]
            fastest, slowest = _cell(min(every, default=None), measured), _cell(max(every, default=None), measured)
            lines.append(
                f"  {system:<15} {_cell(median_time(rows), measured):>12} {fastest:>7} "
                f"{slowest:>7} {sum(r['solved'] for r in rows)}/{len(rows):<5} "
                f"{_cell(median_time(rows, 'grid_time_to_solve_s')):>11} "
                f"{format_si(statistics.median(steps)) if steps else '-':>9} "
                f"{format_si(statistics.median(r['sps'] for r in rows)):>9}"
            )
    lines.append("ratios (fastpg / peer; same run)")
    for label, value, target in report["ratios"]:
        v = "n/a" if value is None else f"{value:,.2f}x"
        lines.append(f"  {label:<66} {v:>10}" + (f"   target {target}" if target else ""))
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    out = {}
    for mod in ("stable_baselines3", "torchrl"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def parse_overrides(p: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs (VALUE as JSON where it parses, else a string; lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            p.error(f"--fastpg {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key] = tuple(value) if isinstance(value, list) else value
    try:
        Config(**out)
    except (ConfigError, TypeError) as e:
        p.error(f"--fastpg: {e}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="systems of the solve section")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--classic-seeds", type=int, nargs="+", default=None, help="seeds of the classic loop (default: --seeds)"
    )
    p.add_argument("--grid-s", type=float, default=0.5, help="training seconds between evaluations on the grid")
    p.add_argument(
        "--every-update-systems",
        nargs="*",
        choices=SYSTEMS,
        default=["fastpg", "fastpg-generic", "sb3-ppo"],
        help="systems also evaluated after every update (the others on the grid only)",
    )
    p.add_argument("--eval-deterministic", action="store_true", help="evaluate with the most likely action")
    p.add_argument(
        "--max-train-s", type=float, default=120.0, help="training time after which a run counts as unsolved"
    )
    p.add_argument("--sps-num-envs", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of the throughput measurements")
    p.add_argument(
        "--fastpg",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="fastpg Config fields for the solve section (default: fastpg's defaults), e.g. env_kernel=cpp",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.fastpg = parse_overrides(p, args.fastpg)
    if "solve" in args.sections and any(s.startswith("sb3") for s in args.systems):
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            p.error(
                "stable-baselines3 is not installed: pip install -c constraints.txt -e '.[peers]' "
                "(or drop sb3-* from --systems)"
            )

    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine_info(torch.device("cpu")),
        "peers": versions(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    runners = {"env": run_env, "returns": run_returns, "sps": run_sps, "solve": run_solve}
    for section in SECTIONS:
        if section in args.sections:
            log(f"== {section}")
            report[section] = runners[section](args)
    report["ratios"] = ratios(report)
    report["wall_s"] = time.perf_counter() - t0
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
