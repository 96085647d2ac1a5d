"""Probe which collectives work on CUDA tensors (run under torchrun; backend from argv[1])."""
import os, sys, datetime
import torch
import torch.distributed as dist

backend = sys.argv[1]
rank = int(os.environ["RANK"]); world = int(os.environ["WORLD_SIZE"])
torch.cuda.set_device(0)
dev = torch.device("cuda", 0)
try:
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=20), device_id=dev if backend == "nccl" else None)
except Exception as e:
    print(f"[{backend} r{rank}/{world}] init failed: {type(e).__name__}: {str(e)[:300]}", flush=True); sys.exit(0)
def t(name, fn):
    try:
        out = fn(); torch.cuda.synchronize(); print(f"[{backend} r{rank}/{world}] {name}: ok {out}", flush=True)
    except Exception as e:
        print(f"[{backend} r{rank}/{world}] {name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
x = torch.full((3,), float(rank + 1), device=dev, dtype=torch.float64)
t("all_reduce f64", lambda: (dist.all_reduce(x), x.tolist())[1])
y = torch.arange(4, device=dev, dtype=torch.int64) + 10 * rank
outs = [torch.empty_like(y) for _ in range(world)]
t("all_gather i64", lambda: (dist.all_gather(outs, y), [o.tolist() for o in outs])[1])
big = torch.empty(world * 4, device=dev, dtype=torch.int64)
t("all_gather_into_tensor", lambda: (dist.all_gather_into_tensor(big, y), big.tolist())[1])
b = torch.full((2,), float(rank), device=dev)
t("broadcast", lambda: (dist.broadcast(b, 0), b.tolist())[1])
objs = [None] * world
t("all_gather_object", lambda: (dist.all_gather_object(objs, {"r": rank}), objs)[1])
ol = [rank * 7]
t("broadcast_object_list", lambda: (dist.broadcast_object_list(ol, 0), ol)[1])
u = torch.tensor([rank], device=dev, dtype=torch.uint8)
t("all_reduce u8 max", lambda: (dist.all_reduce(u, op=dist.ReduceOp.MAX), u.tolist())[1])
dist.destroy_process_group()
