"""Time to solve CartPole-v1 on a GPU (the CUDA-graph epoch), under the protocol of solve_protocol.py,
against the fused CPU epoch on the same machine, in one run.

python benchmarks/solve_gpu.py [--json OUT.json]   # on a machine with CUDA (benchmarks/cuda/graph_checks.sh)

Evaluations run on the CPU in gymnasium's CartPoleVectorEnv (as for every system in peers.py), the
policy's forward on its training device; they are not training time. Each seed's row is printed as
it finishes. Runs stop at ``MAX_TRAIN_S`` of training: at the default learning rate a large batch
needs hundreds of updates, each followed by an evaluation (~50 ms of wall time), so the cap bounds
the wall time of the whole script to a few minutes.
"""

import argparse
import json
import statistics

import torch
from solve_protocol import EVAL_EPISODES, median_time, solve_fastpg

from fastpg import make_env

SEEDS = range(3)
MAX_TRAIN_S = 5.0
# (label, device, N, T): the defaults (N = 16, T = 512) on both devices, then the larger batches
# a GPU is built for.
RUNS = [
    ("cpu-fused", "cpu", 16, 512),
    ("cuda-graph", "cuda", 16, 512),
    ("cuda-graph", "cuda", 256, 128),
    ("cuda-graph", "cuda", 1024, 128),
]


SHOWN = ("system", "num_envs", "num_steps", "seed", "solved", "time_to_solve_s", "env_steps_to_solve", "updates", "sps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    eval_env = make_env("CartPole-v1", EVAL_EPISODES, backend="vector")
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    rows = []
    for label, device, n, t in RUNS:
        changes = dict(device=device, num_envs=n, num_steps=t)
        mine = []
        for s in SEEDS:
            r = solve_fastpg(label, s, 475.0, changes, env=eval_env, max_train_s=MAX_TRAIN_S)
            r.update(device=device, num_envs=n, num_steps=t)
            mine.append(r)
            print(json.dumps({k: r[k] for k in SHOWN}), flush=True)
        rows += mine
        times = [r["time_to_solve_s"] for r in mine]
        print(
            f"{label} N={n} T={t}: solved {sum(r['solved'] for r in mine)}/{len(mine)}, median {median_time(mine)} s, "
            f"times {times}, steps/s {statistics.median(r['sps'] for r in mine):.3g}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": gpu, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
