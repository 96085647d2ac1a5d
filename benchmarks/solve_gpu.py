"""Time to solve CartPole-v1 on a GPU (the CUDA-graph epoch), under the protocol of solve_protocol.py.

python benchmarks/solve_gpu.py      # on a machine with CUDA (see benchmarks/cuda/graph_checks.sh)

Evaluations run on the CPU in gymnasium's CartPoleVectorEnv (as for every system in peers.py), the
policy's forward on the GPU; they are not training time. (A first attempt evaluated with the
generic path on the GPU, 500 lockstep steps of launches per evaluation, and ran out of its time.)
"""

import statistics

from solve_protocol import EVAL_EPISODES, median_time, solve_fastpg

from fastpg import make_env

eval_env = make_env("CartPole-v1", EVAL_EPISODES, backend="vector")

for n, t in ((1024, 128), (4096, 64)):
    changes = dict(device="cuda", num_envs=n, num_steps=t)
    rows = [solve_fastpg("fastpg-cuda", s, 475.0, changes, env=eval_env, max_train_s=20.0) for s in range(3)]
    times = [r["time_to_solve_s"] for r in rows]
    kind = "graph" if rows[0]["fused"] else "generic"
    print(
        f"N={n} T={t}: solved {sum(r['solved'] for r in rows)}/3, median {median_time(rows)} s, times {times}, "
        f"steps/s {statistics.median(r['sps'] for r in rows):.3g}, epoch {kind}",
        flush=True,
    )
