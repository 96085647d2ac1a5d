"""End-to-end training steps/s (collect + update, default policy, T = 512): native vs vector backend.

    python benchmarks/train_sps.py
"""
import time, torch
from fastpg import Config, Trainer
for N in (16, 64, 256):
    for backend in ("torch", "vector"):
        with Trainer(Config(num_envs=N, num_steps=512, backend=backend, quiet=True)) as tr:
            tr.epoch()
            t0=time.perf_counter(); steps=0; c=u=0
            for _ in range(4):
                m=tr.epoch(); c+=m["collect_s"]; u+=m["update_s"]
            dt=time.perf_counter()-t0
            print(f"N={N:>4} {backend:>6}: {N*512*4/dt/1e3:7.1f}k sps  collect {c/4*1e3:6.1f} ms  update {u/4*1e3:6.1f} ms per epoch")
