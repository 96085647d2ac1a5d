"""Populations against one run after another, as a user would measure them (issue 20's targets).

    python benchmarks/population_solve.py                 # all three parts, figures to stdout
    python benchmarks/population_solve.py --part solve    # or: process, grid
    python benchmarks/population_solve.py --out benchmarks/results/population   # also write them

- ``solve``: CartPole-v1 on the defaults, 32 seeds, the time-to-solve protocol of
  ``solve_protocol.py`` (100 fresh episodes after every update, evaluations off the clock, the
  same episodes for the same seed and update): the population (one ``PopulationTrainer``, each
  member stopped once solved, the evaluations of all live members batched) against the same 32
  runs one after another with 1 and with 2 threads, in the same run. Reported: the training time
  until all have solved and the aggregate training steps/s, as ratios.
- ``process``: ``fastpg train --seeds 32`` against ``fastpg train`` as whole processes (start-up,
  training, final evaluations), alternated, median of 3.
- ``grid``: 4 learning rates x 8 seeds on CartPole-v1 and Acrobot-v1 (their settings), each a
  ``fastpg train`` population with the final evaluation of 100 episodes: IQM and 95% stratified-
  bootstrap intervals per learning rate (the summary's), and the plot (``fastpg plot``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from solve_protocol import EVAL_EPISODES, median_time, solve_fastpg

from fastpg import Config
from fastpg.metrics import machine_info
from fastpg.population import Population, PopulationTrainer

TARGET = 475.0
LRS = ["0.03", "0.01", "0.003", "0.001"]


def _eval_seed(seed: int, update: int) -> int:
    return 1_000_003 + 10_000 * seed + update  # solve_protocol.SolveClock's episodes


def solve_population(seeds: int, max_train_s: float = 60.0) -> dict:
    """The protocol for a population: after every batched epoch each live member is evaluated (one
    batched call, off the clock) on its protocol episodes; a member that reaches the target is
    stopped (it costs nothing more)."""
    base = Config(quiet=True, eval_episodes=0, target_return=1e9, max_env_steps=10**10)
    with PopulationTrainer(Population.grid(base, seeds=seeds)) as pt:
        solved: dict[int, tuple[float, int]] = {}
        while pt.live and pt.wall_s < max_train_s:
            pt.epoch()
            live = [pt.numbers[k] for k in pt.live]
            members = [pt.members[pt.numbers.index(i)] for i in live]
            seeds_ = [_eval_seed(m.cfg.seed, m.counters.epoch) for m in members]
            results = pt.evaluate(EVAL_EPISODES, members=live, seeds=seeds_)
            for number, m, r in zip(live, members, results):
                if r["eval_return_mean"] >= TARGET:
                    solved[number] = (pt.wall_s, m.counters.env_steps)
                    pt.stop_member(number, "solved")
        steps = sum(m.counters.env_steps for m in pt.members)
        return {
            "members": seeds,
            "solved": len(solved),
            "time_until_all_solved_s": max(t for t, _ in solved.values()) if len(solved) == seeds else None,
            "median_time_to_solve_s": statistics.median(t for t, _ in solved.values()) if solved else None,
            "train_s": pt.wall_s,
            "env_steps": steps,
            "sps": steps / pt.wall_s,
            "epochs": pt.epochs,
        }


def solve_one_after_another(seeds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    # grid_s 0: the grid schedule is every update too, so each run stops at its first solve, as a member does
    rows = [solve_fastpg("fastpg", s, TARGET, {}, grid_s=0.0, max_train_s=60.0) for s in range(seeds)]
    steps, train_s = sum(r["env_steps"] for r in rows), sum(r["train_s"] for r in rows)
    return {
        "threads": threads,
        "solved": sum(r["solved"] for r in rows),
        "time_until_all_solved_s": sum(r["time_to_solve_s"] or 0.0 for r in rows),  # one after another
        "median_time_to_solve_s": median_time(rows),
        "train_s": train_s,
        "env_steps": steps,
        "sps": steps / train_s,
    }


def part_solve(seeds: int) -> dict:
    threads = torch.get_num_threads()
    singles = [solve_one_after_another(seeds, t) for t in (1, 2)]
    torch.set_num_threads(threads)
    pop = solve_population(seeds)
    best = max(singles, key=lambda r: r["sps"])
    out = {
        "population": pop,
        "one_after_another": singles,
        "sps_ratio_vs_best_single": pop["sps"] / best["sps"],
        "time_ratio_vs_one_after_another": best["time_until_all_solved_s"] / pop["time_until_all_solved_s"]
        if pop["time_until_all_solved_s"]
        else None,
    }
    all_by = pop["time_until_all_solved_s"]
    print(
        f"solve: population of {seeds}: {pop['solved']}/{seeds} solved, all by "
        + (f"{all_by:.3f} s" if all_by is not None else "- (not all solved)")
        + f" of training, {pop['sps'] / 1e6:.2f}M steps/s; one after another (best of 1 and 2 threads: "
        f"{best['threads']}): {best['time_until_all_solved_s']:.3f} s, {best['sps'] / 1e6:.2f}M steps/s; "
        f"steps/s ratio {out['sps_ratio_vs_best_single']:.2f}x",
        flush=True,
    )
    return out


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def part_process(seeds: int, repeats: int = 3) -> dict:
    fastpg = [sys.executable, "-m", "fastpg", "train", "--quiet"]
    one, many = [], []
    for _ in range(repeats):  # alternated, so drift hits both alike
        one.append(_wall(fastpg))
        many.append(_wall([*fastpg, "--seeds", str(seeds)]))
    out = {"single_s": one, "population_s": many, "ratio": statistics.median(many) / statistics.median(one)}
    print(
        f"process: fastpg train {statistics.median(one):.2f} s, fastpg train --seeds {seeds} "
        f"{statistics.median(many):.2f} s (median of {repeats}): {out['ratio']:.2f}x",
        flush=True,
    )
    return out


def part_grid(out_dir: Path | None, seeds: int = 8) -> dict:
    results = {}
    tmp = out_dir or Path("/tmp")
    for env in ("CartPole-v1", "Acrobot-v1"):
        metrics = tmp / f"grid_{env}.jsonl"
        cmd = [sys.executable, "-m", "fastpg", "train", "--env", env, "--seeds", str(seeds), "--lr", *LRS]
        done = subprocess.run(
            [*cmd, "--quiet", "--metrics-file", str(metrics), "--overwrite"], check=True, capture_output=True, text=True
        )
        summary = json.loads(done.stdout)
        rows = []
        for s in summary["settings"]:
            ev, tt = s["eval_return"], s["time_to_solve_s"]
            rows.append({"lr": s["lr"], "solved": s["members_solved"], "members": s["members"], "eval_return": ev,
                         "time_to_solve_s": tt})  # fmt: skip
            print(
                f"grid {env} lr {s['lr']:g}: {s['members_solved']}/{s['members']} solved; final evaluation IQM "
                f"{ev['iqm']:.1f} [{ev['iqm_ci_low']:.1f}, {ev['iqm_ci_high']:.1f}]; time to solve IQM "
                + (f"{tt['iqm']:.3f} s [{tt['iqm_ci_low']:.3f}, {tt['iqm_ci_high']}]" if tt and tt["iqm"] else "-"),
                flush=True,
            )
        results[env] = {"command": " ".join(cmd[2:]), "train_wall_s": summary["train_wall_s"], "settings": rows}
        if out_dir is not None:
            png = out_dir / f"grid_{env}.png"
            subprocess.run([sys.executable, "-m", "fastpg", "plot", str(metrics), "-o", str(png)], check=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["solve", "process", "grid", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="directory for population.json and the grid's files")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_info(torch.device("cpu"))}
    if args.part in ("solve", "all"):
        record["solve"] = part_solve(args.seeds)
    if args.part in ("process", "all"):
        record["process"] = part_process(args.seeds)
    if args.part in ("grid", "all"):
        record["grid"] = part_grid(args.out)
    if args.out is not None:
        (args.out / f"population_{args.part}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
