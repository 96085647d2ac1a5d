"""Env-only steps/s with random actions: native torch CartPole vs gymnasium's numpy CartPoleVectorEnv,
measured in one run at several N (CPU). The pytest-benchmark suite comes with issue 4.

    python benchmarks/env_sps.py
"""
import time, torch, numpy as np, gymnasium as gym
from fastpg.envs import TorchCartPole
def sps_native(N, steps):
    env=TorchCartPole(N); env.reset(seed=0); g=torch.Generator().manual_seed(0)
    acts=[torch.randint(0,2,(N,),generator=g) for _ in range(16)]
    for i in range(20): env.step(acts[i%16])
    t0=time.perf_counter()
    for i in range(steps): env.step(acts[i%16])
    return N*steps/(time.perf_counter()-t0)
def sps_gym(N, steps):
    env=gym.make_vec("CartPole-v1", num_envs=N, vectorization_mode="vector_entry_point"); env.reset(seed=0)
    rng=np.random.default_rng(0); acts=[rng.integers(0,2,N) for _ in range(16)]
    for i in range(20): env.step(acts[i%16])
    t0=time.perf_counter()
    for i in range(steps): env.step(acts[i%16])
    return N*steps/(time.perf_counter()-t0)
for N,steps in [(16,3000),(256,2000),(4096,500),(65536,60)]:
    a,b=sps_native(N,steps),sps_gym(N,steps)
    print(f"N={N:>6} native {a/1e6:7.3f}M  gym-vector {b/1e6:7.3f}M  ratio {a/b:5.2f}  native us/step {N/a*1e6:7.1f}")
