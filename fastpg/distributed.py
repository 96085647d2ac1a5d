"""Data-parallel training over ``torch.distributed``, as ``torchrun`` launches it.

    torchrun --nproc-per-node 2 -m fastpg train --num-envs 64 ...

``--num-envs`` is the global number of env copies: K ranks step ``N / K`` copies each (``Shard``),
so runs with different K train on the same batch. The K-rank run is the one-process run with the
same N and seed (``--fused off``, the generic path every rank runs), split:

- **Collect.** Every rank draws the random numbers of all N copies from generators in the state
  the one-process run's are in, and keeps its own rows: the policy's sampling noise (``[N]``
  draws, rows ``lo:hi``), a native env's resets (drawn for all N and selected, or, above
  ``SELECT_RESET_MAX_ENVS`` copies, drawn for the done copies of all ranks: one all-gather of the
  done counts per step tells each rank where its copies' draws sit). So the generators stay
  identical on every rank and the trajectories are the one-process run's, bit for bit, until the
  first update.
- **Update.** The statistics of the loss are global: the count of entries, the mean baseline, the
  normalization's mean and standard deviation are all-reduced sums (``Group.sum_``), and every
  rank's loss is its entries' share of the global loss (divided by the global count), so the
  all-reduced sum of the gradients is the global gradient. Clipping, the non-finite guard and
  Adam then see the same numbers on every rank, and the parameters stay identical (broadcast from
  rank 0 at the start). Sums split over ranks round differently from one sum: the update agrees
  with the one-process run to float32 rounding (relative 1e-6 per update), not to the bit.
- **Everything around it.** Finished episodes and non-finite env copies are gathered, in the
  one-process run's order, so every rank holds the same episode window and takes the same target
  decision; rank 0 evaluates and broadcasts the result (one verdict); a stop request (a signal to
  any rank) is agreed between epochs, so all ranks stop after the same epoch. Rank 0 alone writes
  metrics, progress, checkpoints and the summary; a checkpoint holds the gathered global state,
  the same format as a one-process run's (either can resume the other with any K dividing N).

Devices: on CPU the ranks talk over gloo; on CUDA each process trains on the GPU of its local rank
(``rank_device``) and the collectives run over NCCL on device tensors (``backend_for``;
``Config.dist_backend`` can ask for gloo, which lets processes share a GPU). The CUDA-graph epoch is
a one-process path: on CUDA every rank runs the generic path.

Collectives wait at most ``Config.dist_timeout_s``; a rank that dies or hangs ends the job with a
``DistributedError`` on the others (``torchrun`` then stops every worker).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastpg._lazy_compiler import TensorDict
from fastpg.checkpoint import restart_count
from fastpg.errors import ConfigError, DistributedError
from fastpg.preflight import resolve_device

__all__ = [
    "Shard",
    "Group",
    "launched_world_size",
    "local_world_size",
    "process_group",
    "join_process_group",
    "rank_device",
    "backend_for",
]


def launched_world_size() -> int:
    """The number of processes of this launch (``WORLD_SIZE``, set by torchrun), 1 outside one."""
    world = os.environ.get("WORLD_SIZE", "1")
    return int(world) if world.isdigit() else 1


@dataclass(frozen=True)
class Shard:
    """The env copies one rank steps: ``[lo, hi)`` of ``total``."""

    rank: int
    world_size: int
    total: int

    @property
    def size(self) -> int:
        return self.total // self.world_size

    @property
    def lo(self) -> int:
        return self.rank * self.size

    @property
    def hi(self) -> int:
        return self.lo + self.size

    def take(self, x: Tensor, dim: int = 0) -> Tensor:
        """This rank's rows of a tensor over all ``total`` copies along ``dim``."""
        return x.narrow(dim, self.lo, self.size)


class Group:
    """The collectives of a data-parallel run, over the default process group.

    Every method is a collective: each rank calls it, in the same order. A failure (a rank that
    died, a timeout) raises ``DistributedError`` naming the operation. ``device`` is this rank's
    training device; the collectives' tensors live there (NCCL carries CUDA tensors only).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.seconds = 0.0  # spent in collectives (waiting for the others included) since take_seconds

    def take_seconds(self) -> float:
        """Seconds spent in collectives since the last call (the epoch's ``comm_s``)."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def shard(self, total: int) -> Shard:
        """This rank's share of ``total`` env copies (``ConfigError`` unless K divides it)."""
        if total % self.world_size:
            raise ConfigError(
                "num_envs",
                f"{total} env copies (the global count) cannot be split evenly over {self.world_size} processes; "
                f"give a multiple of {self.world_size}",
            )
        return Shard(self.rank, self.world_size, total)

    def sum_(self, tensors: list[Tensor], what: str) -> None:
        """All-reduce (sum) ``tensors`` in place, as one flat buffer (one collective)."""
        flat = torch.cat([t.reshape(-1).double() for t in tensors])
        with self._collective(what):
            dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def counts_before(self, count: int) -> tuple[int, int]:
        """(copies on lower ranks, copies on all ranks) of a per-rank ``count`` (all-gather)."""
        local = torch.tensor([count], dtype=torch.int64, device=self.device)
        every = [torch.empty_like(local) for _ in range(self.world_size)]
        with self._collective("the exchange of the env resets' counts"):
            dist.all_gather(every, local)
        counts = [int(c) for c in every]
        return sum(counts[: self.rank]), sum(counts)

    def objects(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order (all-gather of picklable objects)."""
        out: list[Any] = [None] * self.world_size
        with self._collective(what):
            dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        with self._collective(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_tensors(self, tensors: dict[str, Tensor], dims: dict[str, int], what: str) -> dict[str, Tensor]:
        """The global tensors: each rank's shard of ``tensors[k]`` concatenated along ``dims[k]``."""
        every = self.objects({k: tensors[k].cpu() for k in dims}, what)
        return {k: torch.cat([part[k] for part in every], dims[k]) for k in dims}

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (identical parameters from the start)."""
        with self._collective("the broadcast of the initial parameters"), torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def agree(self, reason: str | None, what: str = "the agreement on stopping") -> str | None:
        """The first rank's non-None ``reason`` (a stop request any rank received), else None: one
        all-reduce of a flag, and the reasons gathered only when some rank has one."""
        flag = torch.tensor([float(reason is not None)], device=self.device)
        with self._collective(what):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not flag.item():
            return None
        return next((r for r in self.objects(reason, what) if r is not None), None)

    def check_identical(self, values: dict[str, bytes], what: str) -> None:
        """Raise ``DistributedError`` unless every rank holds the same ``values`` (digests of what
        must not differ between ranks: parameters, generators), naming the first that differs."""
        digests = {k: hashlib.sha256(v).hexdigest() for k, v in values.items()}
        every = self.objects(digests, what)
        for rank, theirs in enumerate(every):
            differ = [k for k in digests if theirs[k] != every[0][k]]
            if differ:
                raise DistributedError(
                    f"{what}: rank {rank}'s {differ[0]} differ from rank 0's: the ranks no longer train one model "
                    "(a fastpg bug: please report it with the command line)"
                )

    # -- the epoch's gathered statistics -------------------------------------------------------
    def epoch_data(
        self, buf: TensorDict, shard: Shard, nonfinite: list[int]
    ) -> tuple[list[float], list[int], int, list[int]]:
        """What the epoch's metrics need from every rank, in one gather: return and length of
        every episode that ended (in the order the one-process run lists them: step, then global
        copy index), the valid steps, and the global indices of the copies with non-finite data
        (``nonfinite``: this rank's local ones)."""
        done = buf["done"]
        t, n = done.nonzero(as_tuple=True)  # t-major: this rank's episodes in the order they ended
        key = t * shard.total + n + shard.lo  # the one-process run's order: step, then global copy
        mine = (
            (key.cpu(), buf["episode_return"][done].cpu(), buf["episode_length"][done].cpu()),
            int(buf["valid"].sum()),
            [i + shard.lo for i in nonfinite],
        )  # tensors, not lists: pickling and sorting tens of thousands of episodes as Python objects cost ~100 ms
        every = self.objects(mine, "the gather of the epoch's episodes")
        order = torch.cat([part[0][0] for part in every]).argsort()
        returns = torch.cat([part[0][1] for part in every])[order].tolist()
        lengths = torch.cat([part[0][2] for part in every])[order].tolist()
        bad = sorted(i for _, _, part in every for i in part)
        return returns, lengths, sum(valid for _, valid, _ in every), bad

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Time a collective, and turn its failure into one line naming it (a rank died, hung or
        left early)."""
        start = time.perf_counter()
        try:
            yield
        except (RuntimeError, ValueError) as e:  # gloo / NCCL errors are RuntimeError subclasses
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistributedError(
                f"rank {self.rank}: {what} failed: another process of the job died, hung past --dist-timeout-s "
                f"or left early ({type(e).__name__}: {first})"
            ) from e
        finally:
            self.seconds += time.perf_counter() - start


@contextlib.contextmanager
def process_group(device: str | torch.device, timeout_s: float, backend: str = "auto") -> Iterator[Group | None]:
    """The data-parallel group of this launch: ``None`` outside a multi-process launch; inside
    one (``WORLD_SIZE`` > 1) the default process group, initialized here from torchrun's
    environment (TCP rendezvous at ``MASTER_ADDR:MASTER_PORT``) unless the caller did, and
    destroyed on exit when initialized here.

    ``device`` is the run's (``Config.device``): ``cuda`` without an index gives each process the
    GPU of its local rank (``cuda:LOCAL_RANK``), which becomes the current CUDA device. ``backend``
    ``auto`` is NCCL on CUDA and gloo on CPU (``Config.dist_backend``)."""
    if dist.is_available() and dist.is_initialized():  # the caller's group (and current CUDA device)
        world = dist.get_world_size()
        yield Group(rank_device(device, world)) if world > 1 else None
        return
    world = launched_world_size()
    if world <= 1:
        yield None
        return
    group = join_process_group(device, timeout_s, backend, world)
    try:
        yield group
    finally:
        dist.destroy_process_group()


def join_process_group(device: str | torch.device, timeout_s: float, backend: str, world_size: int) -> Group:
    """Initialize the default process group from torchrun's environment, whatever its size (one
    process too: a group of one checks the collectives on one GPU), and return it as a ``Group``
    on this rank's device. The caller destroys it (``dist.destroy_process_group``)."""
    # torch's compiler is imported before the group exists. fastpg's runs do not import it
    # (fastpg._lazy_compiler), but torch's Adam.step does, on the generic path's first update;
    # imported then, after the group's threads exist, a rank sometimes aborted at exit
    # ("terminate called without an active exception": 3 of 25 two-rank launches on a loaded
    # 2-core machine, 0 of 25 with this import; benchmarks/NOTES.md).
    import torch._dynamo

    here = rank_device(device, world_size)
    pinned = str(device) != "auto" and torch.device(device).index is not None  # cuda:I typed: shared by all
    name = backend_for(here, backend, local_world_size(world_size) if pinned else 1)
    if here.type == "cuda":
        torch.cuda.set_device(here)  # NCCL's object collectives run on the current device
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        # torchrun's store outlives a restart (--max-restarts) and still holds the addresses the
        # dead attempt's processes published; each attempt takes its own keys, or the new
        # processes dial the old, closed ports (seen: "connectFullMesh ... Connection refused").
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        store = dist.PrefixStore(f"fastpg/attempt-{restart_count()}", store)
        dist.init_process_group(
            name, store=store, rank=rank, world_size=size, timeout=timeout, device_id=here if name == "nccl" else None
        )
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"could not join the process group of this launch ({name}): {e}") from e
    return Group(here)


def local_world_size(world_size: int) -> int:
    """Processes of this launch on this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(local) if local.isdigit() else world_size


def rank_device(device: str | torch.device, world_size: int) -> torch.device:
    """This process's training device in a ``world_size``-process launch: ``auto`` as one process
    resolves it; ``cuda`` without an index -> ``cuda:LOCAL_RANK``, after checking that this machine
    has a GPU for each of its processes (the same check, and the same ``ConfigError``, on every
    rank); an explicit ``cuda:I`` is kept (every local process on GPU I)."""
    dev = resolve_device(str(device))
    if dev.type != "cuda" or dev.index is not None:
        return dev
    local, count = local_world_size(world_size), torch.cuda.device_count()
    if local > count:
        raise ConfigError(
            "device",
            f"{str(device)!r} with {local} processes on this machine needs {local} GPUs (process i trains on cuda:i), "
            f"but it has {count}; start at most {count} per machine (torchrun --nproc-per-node {count}), share one "
            "GPU with --device cuda:0 --dist-backend gloo, or use --device cpu",
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def backend_for(device: torch.device, backend: str, local_processes: int) -> str:
    """The ``torch.distributed`` backend of a run on ``device``, which ``local_processes`` processes
    of this machine share (``Config.dist_backend``): ``auto`` is NCCL on CUDA, gloo on CPU. ``ConfigError``
    for NCCL on CPU, and for NCCL with several local processes on one GPU (NCCL refuses two ranks
    on one device)."""
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            "dist_backend", f"'nccl' carries CUDA tensors only, and the device is {str(device)!r}: use gloo"
        )
    if backend == "nccl" and local_processes > 1:
        raise ConfigError(
            "device",
            f"{str(device)!r} for all {local_processes} processes of this machine: NCCL needs one GPU per process; "
            "give --device cuda (process i trains on cuda:i), or share the GPU with --dist-backend gloo",
        )
    return backend
