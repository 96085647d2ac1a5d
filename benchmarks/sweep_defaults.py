"""The sweep behind fastpg's CartPole-v1 defaults: time and env steps to solve over 5 seeds.

Each line printed is one configuration (changes from the defaults) with how many seeds solved
(evaluation mean >= 475), and the median / worst training time and env steps to solve. It includes
the choices for episodes unfinished at the end of an epoch (mask vs value bootstrap) and a short-T
run that shows the cost of masking when T is much shorter than an episode.

    python benchmarks/sweep_defaults.py > benchmarks/results/cartpole_defaults_sweep.jsonl

Run it on an otherwise idle machine; it takes about 5 minutes on 2 cores. The recorded results
were measured with the vector backend (before native CartPole became `auto`'s choice).
"""

import contextlib
import io
import json
import statistics
import sys

from fastpg import Config, train

CONFIGS = {
    "none_mask_relu_N16": dict(),
    "none_mask_tanh_N16": dict(activation="tanh"),
    "none_mask_relu_N8": dict(num_envs=8),
    "value_bootstrap_N16": dict(baseline="value", unfinished="bootstrap"),
    "value_mask_N16": dict(baseline="value"),
    "none_mask_relu_N16_T128": dict(num_steps=128),
}


def main(backend: str = "auto") -> None:
    for name, changes in CONFIGS.items():
        runs = []
        for seed in range(5):
            with contextlib.redirect_stdout(io.StringIO()):
                runs.append(train(Config(seed=seed, quiet=True, max_env_steps=2_000_000, backend=backend, **changes)))
        times = [s["time_to_solve_s"] or float("inf") for s in runs]
        steps = [s["env_steps_to_solve"] or float("inf") for s in runs]
        print(
            json.dumps(
                {
                    "config": name,
                    "solved": sum(bool(s["solved"]) for s in runs),
                    "median_time_s": round(statistics.median(times), 2),
                    "max_time_s": round(max(times), 2),
                    "median_steps": statistics.median(steps),
                    "max_steps": max(steps),
                    "times": [round(t, 1) for t in times],
                    "sps_median": round(statistics.median(s["sps"] for s in runs)),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:2])
