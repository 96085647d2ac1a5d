"""Same-process A/B of fastpg's compiled kernels: a previous commit's build against the working tree's.

    .venv/bin/python benchmarks/ab_kernels.py REV [CONFIG ...]

Both builds are loaded into one process (the previous one from ``git show REV:fastpg/csrc/*``) and
drive two trainers of the same configuration through the fused epoch, epochs interleaved (ABBA), so
that this VM's drift between processes (+-30%) cancels. Prints per configuration the median
collect and update times and the epoch's steps/s of each, and the ratio. Configurations: the cells
of issue 11's targets (and the defaults) and issue 21's; name some to run only those.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from types import ModuleType

from fastpg import Config, Trainer
from fastpg._kernels import _CFLAGS, _LDFLAGS, SOURCE_DIR, kernels

CONFIGS = {
    "N8_T512_128relu": dict(num_envs=8, num_steps=512),
    "N16_T512_128relu": dict(num_envs=16, num_steps=512),
    "N16_T512_32tanh": dict(num_envs=16, num_steps=512, hidden_sizes=(32,), activation="tanh"),
    "N64_T256_128relu": dict(num_envs=64, num_steps=256),
    "N256_T128_32tanh": dict(num_envs=256, num_steps=128, hidden_sizes=(32,), activation="tanh"),
    "N16384_T128_32tanh": dict(num_envs=16384, num_steps=128, hidden_sizes=(32,), activation="tanh"),
    # issue 21's cells: native envs on their settings (Config.for_env), the value baseline
    "Pendulum": dict(env="Pendulum-v1"),
    "MountainCarContinuous": dict(env="MountainCarContinuous-v0"),
    "Acrobot": dict(env="Acrobot-v1"),
    "CartPole_value": dict(env="CartPole-v1", baseline="value"),
}


def build_at(rev: str) -> ModuleType:
    """The kernels of commit ``rev``, built under a name of their own."""
    from torch.utils.cpp_extension import load

    repo = SOURCE_DIR.parent.parent
    src = Path(tempfile.mkdtemp(prefix="fastpg_ab_"))
    names = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", f"{rev}:fastpg/csrc"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        blob = subprocess.run(
            ["git", "-C", str(repo), "show", f"{rev}:fastpg/csrc/{name}"], check=True, capture_output=True
        )
        (src / name).write_bytes(blob.stdout)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    )
    return load(
        name=f"fastpg_kernels_ab_{commit.stdout.strip()}",
        sources=[str(src / "kernels.cpp")],
        extra_include_paths=[str(src)],
        extra_cflags=_CFLAGS,  # fastpg's own flags (OpenMP included: without it parallel_for is serial)
        extra_ldflags=_LDFLAGS,
    )


def compare(name: str, modules: dict[str, ModuleType]) -> str:
    cfg = Config.for_env(**{"env": "CartPole-v1", **CONFIGS[name]}, target_return=1e9, quiet=True)
    trainers = {}
    for tag, module in modules.items():
        trainers[tag] = Trainer(cfg)
        trainers[tag].fused.kernels = module  # the update
        trainers[tag].fused.module = module  # the collect (the native envs' kernels are in this module)
    steps = cfg.num_envs * cfg.num_steps
    reps = max(3, min(40, 2_000_000 // steps))
    times: dict[str, dict[str, list[float]]] = {tag: {"collect": [], "update": []} for tag in modules}
    for r in range(reps + 2):  # two warm-up rounds
        for tag in list(modules) if r % 2 == 0 else reversed(list(modules)):
            t = trainers[tag]
            t0 = time.perf_counter()
            t.collect()
            t1 = time.perf_counter()
            t.update()
            t2 = time.perf_counter()
            if r >= 2:
                times[tag]["collect"].append(t1 - t0)
                times[tag]["update"].append(t2 - t1)
    epoch = {}
    row = [f"{name:20s}"]
    for tag, ts in times.items():
        epoch[tag] = statistics.median(c + u for c, u in zip(ts["collect"], ts["update"]))
        row.append(
            f"{tag}: collect {statistics.median(ts['collect']) * 1e3:7.2f} ms, update "
            f"{statistics.median(ts['update']) * 1e3:7.2f} ms, {steps / epoch[tag] / 1e6:5.2f}M steps/s"
        )
    old, new = modules
    row.append(f"{new}/{old} {epoch[old] / epoch[new]:.2f}x")
    return " | ".join(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rev", help="the previous commit (any git revision)")
    p.add_argument("configs", nargs="*", help=f"default: all of {', '.join(CONFIGS)}")
    args = p.parse_args()
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        p.error(f"unknown configurations {unknown}; choose from {', '.join(CONFIGS)}")
    modules = {args.rev: build_at(args.rev), "tree": kernels()}
    for name in args.configs or CONFIGS:
        print(compare(name, modules), flush=True)


if __name__ == "__main__":
    main()
