"""The collect loop with a native env performs no host-device synchronization per step.

On CUDA a host sync is any op that needs a device value on the host: ``.item()``, ``bool(t)``,
``nonzero`` and boolean-mask indexing (data-dependent shapes). On CPU nothing can block, but the
same ops still show in a profile: ``aten::_local_scalar_dense`` (``.item()``/``bool()``) and
``aten::nonzero``. The CPU test runs each native env with N small enough that it takes the same
reset path as on CUDA (draw for every copy, ``torch.where``) and checks that those ops do not grow
with T: whatever the collector does once per epoch is allowed, nothing per step. The CUDA test (where
a GPU is present) turns on ``torch.cuda.set_sync_debug_mode("error")`` around the loop.
"""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fastpg.envs import make_env, native_env_ids
from fastpg.policy import MLPPolicy
from fastpg.rollout import collect, init_carry
from fastpg.storage import allocate_storage

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero")


def _collect_op_counts(env_id, T, device="cpu"):
    env = make_env(env_id, 64, backend="torch", device=device)
    policy = MLPPolicy(env.info, (32,), "tanh").to(device)
    buf = allocate_storage(env.info, T, env.num_envs, device)
    carry = init_carry(env, seed=0)
    g = torch.Generator(device=device).manual_seed(0)
    collect(env, policy, buf, carry, g)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        collect(env, policy, buf, carry, g)
    counts = {e.key: e.count for e in prof.key_averages()}
    return {op: counts.get(op, 0) for op in SYNC_OPS}, counts.get("aten::cos", 0) + counts.get("aten::index_select", 0)


# Acrobot's angle wrap loops on `any()` on CPU (exact for any state, and free there); on CUDA it
# runs a fixed number of masked steps instead. Its CUDA path is covered by the CUDA test below.
@pytest.mark.parametrize("env_id", [e for e in native_env_ids() if e != "Acrobot-v1"])
def test_collect_with_native_env_has_no_per_step_sync_ops(env_id):
    short, work_short = _collect_op_counts(env_id, T=8)
    long, work_long = _collect_op_counts(env_id, T=64)
    assert work_long > work_short  # the profile did see the per-step work
    assert long == short, (short, long)  # nothing that would sync grows with T
    assert long["aten::nonzero"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("env_id", native_env_ids())
def test_collect_on_cuda_never_syncs(env_id):
    env = make_env(env_id, 4096, backend="torch", device="cuda")
    policy = MLPPolicy(env.info, (64,), "tanh").to("cuda")
    buf = allocate_storage(env.info, 32, env.num_envs, "cuda")
    carry = init_carry(env, seed=0)
    g = torch.Generator(device="cuda").manual_seed(0)
    collect(env, policy, buf, carry, g)  # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    # collect() sums episode statistics once per epoch without syncing either; "error" raises on
    # any synchronizing call inside.
    torch.cuda.set_sync_debug_mode("error")
    try:
        collect(env, policy, buf, carry, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert buf["valid"].all()
