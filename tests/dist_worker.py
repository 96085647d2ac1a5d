"""One rank of a data-parallel run for tests/test_distributed.py (launched by torchrun).

    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py OUT '{"num_envs": 16, ...}'

Trains ``max_epochs`` epochs with the config given as JSON (on top of ``DEFAULTS``; ``diverge``: rank 1
then nudges a parameter; ``group_of_one``: a launch of one process joins a group of one, which is
how one GPU checks the NCCL collectives), then writes
``OUT/rank{r}.pt``: the epochs' metrics, the parameters, the trainer's and the env's generator
states (None for a gymnasium env); rank 0 also writes ``OUT/state.pt``, the gathered ``Trainer.state_dict()``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from fastpg import Config, Trainer
from fastpg.distributed import Group, join_process_group, process_group

DEFAULTS = {"fused": "off", "eval_episodes": 0, "quiet": True, "device": "cpu"}


@contextlib.contextmanager
def group_of_one(cfg: Config) -> Iterator[Group]:
    group = join_process_group(cfg.device, cfg.dist_timeout_s, cfg.dist_backend, 1)
    try:
        yield group
    finally:
        dist.destroy_process_group()


def main(out: Path, overrides: dict) -> None:
    torch.set_num_threads(1)
    diverge = overrides.pop("diverge", False)  # rank 1 changes a parameter behind the others' back
    alone = overrides.pop("group_of_one", False)
    cfg = Config(**{**DEFAULTS, **overrides})
    joined = group_of_one(cfg) if alone else process_group(cfg.device, cfg.dist_timeout_s, cfg.dist_backend)
    with joined as group, Trainer(cfg, group=group) as trainer:
        metrics = list(trainer.run())
        if diverge and group.rank == 1:
            with torch.no_grad():
                next(trainer.policy.parameters()).view(-1)[0] += 1e-6
        state = trainer.state_dict()  # a collective: every rank
        record = {
            "metrics": metrics,
            "path": trainer.fused.kind if trainer.fused is not None else "generic",
            "backend": dist.get_backend(),
            "device": str(trainer.device),
            "params": {k: v.clone() for k, v in trainer.policy.state_dict().items()},
            "generator": trainer.generator.get_state(),
            "env_generator": env_generator.get_state()
            if (env_generator := getattr(trainer.env, "generator", None))
            else None,
        }
        torch.save(record, out / f"rank{group.rank}.pt")
        if group.rank == 0:
            torch.save(state, out / "state.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
