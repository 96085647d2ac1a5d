"""Which collectives work on CUDA tensors, under torchrun, for a backend (benchmarks/cuda).

    torchrun --standalone --nproc-per-node 2 benchmarks/cuda/dist_probe.py gloo   # 2 ranks share GPU 0
    torchrun --standalone --nproc-per-node 1 benchmarks/cuda/dist_probe.py nccl   # a group of one

Seen on one H100 (torch 2.11, NCCL 2.28.9): gloo carries every collective fastpg uses on CUDA
tensors with two ranks on one GPU; NCCL refuses two ranks on one GPU ("invalid usage") and runs
all of them in a group of one.
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist

BACKEND = sys.argv[1]
RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
DEV = torch.device("cuda", 0)


def say(text: str) -> None:
    print(f"[{BACKEND} r{RANK}/{WORLD}] {text}", flush=True)


def probe(name, fn) -> None:
    try:
        out = fn()
        torch.cuda.synchronize()
        say(f"{name}: ok {out}")
    except Exception as e:
        say(f"{name}: FAILED {type(e).__name__}: {str(e)[:200]}")


def main() -> None:
    torch.cuda.set_device(DEV)
    try:
        timeout = datetime.timedelta(seconds=20)
        dist.init_process_group(BACKEND, timeout=timeout, device_id=DEV if BACKEND == "nccl" else None)
    except Exception as e:
        say(f"init failed: {type(e).__name__}: {str(e)[:300]}")
        return
    x = torch.full((3,), float(RANK + 1), device=DEV, dtype=torch.float64)
    probe("all_reduce f64", lambda: (dist.all_reduce(x), x.tolist())[1])
    y = torch.arange(4, device=DEV) + 10 * RANK
    outs = [torch.empty_like(y) for _ in range(WORLD)]
    probe("all_gather i64", lambda: (dist.all_gather(outs, y), [o.tolist() for o in outs])[1])
    b = torch.full((2,), float(RANK), device=DEV)
    probe("broadcast", lambda: (dist.broadcast(b, 0), b.tolist())[1])
    objs = [None] * WORLD
    probe("all_gather_object", lambda: (dist.all_gather_object(objs, {"r": RANK}), objs)[1])
    box = [RANK * 7]
    probe("broadcast_object_list", lambda: (dist.broadcast_object_list(box, 0), box)[1])
    flag = torch.tensor([float(RANK)], device=DEV)
    probe("all_reduce max", lambda: (dist.all_reduce(flag, op=dist.ReduceOp.MAX), flag.tolist())[1])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
