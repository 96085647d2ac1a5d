"""``PoolVectorEnv``: N copies of a gymnasium env stepped by W processes, through shared memory.

gymnasium's ``AsyncVectorEnv`` runs one process per copy and pays a pipe round trip (with pickled
arrays) per copy per step: on MuJoCo at N = 16 on 2 cores it is 5x slower than ``SyncVectorEnv``.
The pool splits the copies into W contiguous shares (default W: the usable cores, at most N), each
built and stepped as a ``SyncVectorEnv`` (see ``_Share``): the first in the trainer's own
process, the others in W - 1 forked worker processes. A step is:

1. the trainer writes all N actions into one shared array,
2. one byte goes down each worker's pipe,
3. every process steps its share and writes observations, rewards and flags into shared arrays,
4. one byte comes back from each worker.

So a step costs one round trip per worker, not per copy, and no array is pickled. A process
waiting for the next byte polls for ``SPIN_S`` before it sleeps (see ``_receive``).

Semantics are those of ``sync`` exactly: copy i (of the whole env) is reset with ``seed + i``,
each share autoresets NEXT_STEP as ``SyncVectorEnv`` does, and the arrays are the same numbers, so
a run with ``--backend pool`` computes what the same run with ``--backend sync`` computes (tested).

Reliability, as for ``async``: a worker that raises is named with its env copy and the original
error; one that dies (its pipe closes) or does not answer within ``timeout_s`` is named as such;
every worker is then stopped and the env marked closed, and the trainer's error is one line. The
workers ignore SIGINT and leave the launcher's process group (a signal to the group reaches the
trainer alone, which ends the run cleanly and closes them), and a worker whose trainer dies sees
its pipe close and exits: no orphans. The trainer's own share is as guarded as ``sync``: a copy
there that raises is named; one that kills its process ends the run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from fastpg.envs.gym_vector import _CopyFailure, _name_copies, _workers_ignore_sigint
from fastpg.errors import EnvWorkerError

__all__ = ["PoolVectorEnv", "POOL_TIMEOUT_S", "shares"]

# A step or reset that takes longer than this is taken for a hung (or dead) worker.
POOL_TIMEOUT_S = 60.0
# How long a process waiting on a pipe polls it before sleeping: long enough to cover the trainer's
# policy forward between two steps at small N (a few hundred microseconds), short enough that a
# worker left waiting (a long update, evaluation) soon stops taking a core.
SPIN_S = 0.002

_STEP, _RESET, _CLOSE = b"s", b"r", b"c"
_OK, _ERROR = b"k", b"e"


def shares(num_envs: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` ranges of copies, one per worker, sizes differing by at most one."""
    base, extra = divmod(num_envs, workers)
    out, lo = [], 0
    for w in range(workers):
        hi = lo + base + (1 if w < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


class _SharedArrays:
    """The step's arrays in shared memory (one ``RawArray`` each), seen as numpy arrays."""

    def __init__(self, ctx, num_envs: int, obs_space: gym.Space, action_space: gym.Space):
        self.layout = {
            "obs": ((num_envs, *obs_space.shape), np.dtype(obs_space.dtype)),
            "action": ((num_envs, *action_space.shape), np.dtype(action_space.dtype)),
            "reward": ((num_envs,), np.dtype(np.float64)),
            "terminated": ((num_envs,), np.dtype(np.bool_)),
            "truncated": ((num_envs,), np.dtype(np.bool_)),
        }
        self.buffers = {
            name: ctx.RawArray("b", max(1, int(np.prod(shape)) * dtype.itemsize))
            for name, (shape, dtype) in self.layout.items()
        }

    def views(self) -> dict[str, np.ndarray]:
        """numpy views of the shared buffers (in whichever process calls it)."""
        out = {}
        for name, (shape, dtype) in self.layout.items():
            count = int(np.prod(shape))
            out[name] = np.frombuffer(self.buffers[name], dtype=dtype, count=count).reshape(shape)
        return out


class _Share:
    """Copies ``lo..hi-1``, built as ``SyncVectorEnv`` builds them and stepped as it steps them
    (NEXT_STEP autoreset), writing straight into the shared arrays' rows.

    The loop is ``SyncVectorEnv.step``'s without what the pool never returns: the per-copy info
    dicts (merged key by key, copy by copy: ~10% of a MuJoCo share's step) and the copies of
    the result arrays."""

    def __init__(self, env_id: str, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.vec = gym.make_vec(
            env_id,
            num_envs=hi - lo,
            vectorization_mode="sync",
            vector_kwargs={"copy": False},
            wrappers=[_name_copies()],  # a copy's failure names it (index within the share)
        )
        self.envs = list(self.vec.envs)
        self.autoreset = np.zeros(hi - lo, dtype=np.bool_)
        self.view: dict[str, np.ndarray] = {}

    def attach(self, arrays: _SharedArrays) -> None:
        """Read actions from, and write results into, this share's rows of ``arrays``."""
        self.view = {name: a[self.lo : self.hi] for name, a in arrays.views().items()}

    def step(self) -> None:
        v = self.view
        obs, reward, terminated, truncated = v["obs"], v["reward"], v["terminated"], v["truncated"]
        actions = v["action"]
        for i, env in enumerate(self.envs):
            if self.autoreset[i]:  # the copy ended last step: this step resets it
                obs[i], _ = env.reset()
                reward[i], terminated[i], truncated[i] = 0.0, False, False
            else:
                obs[i], reward[i], terminated[i], truncated[i], _ = env.step(actions[i])
        np.logical_or(terminated, truncated, out=self.autoreset)

    def reset(self, seed: int | None) -> None:
        obs = self.view["obs"]
        for i, env in enumerate(self.envs):
            obs[i], _ = env.reset(seed=None if seed is None else seed + self.lo + i)
        self.autoreset[:] = False

    def failure(self, e: Exception) -> tuple[int | None, str]:
        """The failing copy (of the whole env, where known) and the cause, in words."""
        copy, cause = (self.lo + e.index, e.__cause__) if isinstance(e, _CopyFailure) else (None, e)
        return copy, f"{type(cause).__name__}: {' '.join(str(cause).split())}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.vec.close()


def _receive(conn: Connection, spin_s: float, timeout_s: float | None = None) -> bytes | None:
    """The next message on ``conn``: polled without sleeping for ``spin_s`` (a process asleep on a
    pipe takes ~100 us to wake on a virtual machine, as long as a small share's whole step), then
    waited for (at most ``timeout_s``; None: no limit). None if nothing came in time."""
    end = time.perf_counter() + spin_s
    while time.perf_counter() < end:
        if conn.poll(0):
            return conn.recv_bytes()
        os.sched_yield()  # where processes outnumber cores, let the one we wait for run
    if conn.poll(timeout_s):
        return conn.recv_bytes()
    return None


def _worker(
    env_id: str, lo: int, hi: int, arrays: _SharedArrays, conn: Connection, parent_end: Connection, spin_s: float
) -> None:
    """One pool worker: build copies ``lo..hi-1`` and serve commands until told to close or until
    the trainer's end of the pipe closes."""
    parent_end.close()  # so that the trainer's death closes this worker's pipe
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # out of the launcher's process group (see the module docstring)
    try:
        share = _Share(env_id, lo, hi)
        share.attach(arrays)
    except Exception as e:
        conn.send_bytes(_ERROR + pickle.dumps((None, f"{type(e).__name__}: {' '.join(str(e).split())}")))
        return
    conn.send_bytes(_OK)
    try:
        _serve(share, conn, spin_s)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the trainer is gone: exit
    finally:
        share.close()


def _serve(share: _Share, conn: Connection, spin_s: float) -> None:
    """The worker's command loop (``_STEP``, ``_RESET`` + pickled seed, ``_CLOSE``)."""
    while True:
        message = _receive(conn, spin_s)
        command = message[:1]
        if command == _CLOSE:
            conn.send_bytes(_OK)
            return
        try:
            share.step() if command == _STEP else share.reset(pickle.loads(message[1:]))
        except Exception as e:
            conn.send_bytes(_ERROR + pickle.dumps(share.failure(e)))
            continue
        conn.send_bytes(_OK)


class PoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of ``env_id`` stepped by ``workers`` processes (see the module docstring):
    the first share in this process, the others in ``workers - 1`` worker processes.

    A gymnasium ``VectorEnv`` (NEXT_STEP autoreset), so fastpg's ``GymVectorEnv`` adapter serves
    it as it serves ``SyncVectorEnv``. The arrays ``step`` and ``reset`` return are views of the
    shared buffers, overwritten by the next call (as ``SyncVectorEnv(copy=False)``'s are).
    ``spin_s``: how long a process waiting for the next command or answer polls before it sleeps.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        workers: int,
        *,
        timeout_s: float = POOL_TIMEOUT_S,
        spin_s: float = SPIN_S,
    ):
        if not 1 <= workers <= num_envs:
            raise ValueError(f"workers must be in [1, num_envs={num_envs}], got {workers}")
        self.env_id = env_id
        self.num_envs = num_envs
        self.timeout_s = timeout_s
        self.spin_s = spin_s
        self.shares = shares(num_envs, workers)
        self.closed = False
        self.processes: list[Any] = []
        self.pipes: list[Connection] = []
        self.metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
        ctx = multiprocessing.get_context()
        self._own = _Share(env_id, *self.shares[0])  # built first: its spaces are the pool's
        own = self._own.vec
        self.single_observation_space, self.single_action_space = own.single_observation_space, own.single_action_space
        self.spec, self.render_mode = own.spec, own.render_mode
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._arrays = _SharedArrays(ctx, num_envs, self.single_observation_space, self.single_action_space)
        self._view = self._arrays.views()
        self._own.attach(self._arrays)
        with _workers_ignore_sigint(), self._stopped_on_failure():
            for lo, hi in self.shares[1:]:
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(
                    target=_worker,
                    name=f"fastpg-pool-{lo}-{hi}",
                    args=(env_id, lo, hi, self._arrays, child_end, parent_end, spin_s),
                    daemon=True,
                )
                process.start()
                child_end.close()
                self.processes.append(process)
                self.pipes.append(parent_end)
        self._wait_all("start")

    @contextlib.contextmanager
    def _stopped_on_failure(self):
        """Starting the workers: one that cannot start (fork refused) stops those already started."""
        try:
            yield
        except BaseException:
            self._stop()
            raise

    @property
    def worker_processes(self) -> int:
        """Processes stepping copies beside the trainer's (W - 1)."""
        return len(self.processes)

    # -- commands ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._run(_RESET + pickle.dumps(seed), "reset", lambda: self._own.reset(seed))
        return self._view["obs"], {}

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        """Start a step: the actions written, the workers told (they step while this process does
        other work: another pool's step, say, as a population's members' pools do)."""
        np.copyto(self._view["action"], np.asarray(actions).reshape(self._view["action"].shape), casting="unsafe")
        self._send(_STEP, "step")

    def step_wait(self):
        """End the step ``step_async`` started: this process's share, then every worker's answer."""
        self._finish("step", self._own.step)
        v = self._view
        return v["obs"], v["reward"], v["terminated"], v["truncated"], {}

    def close(self, **kwargs) -> None:
        """Ask every worker to close its envs, then stop the pool (``_stop``: every worker exited,
        this process's share closed)."""
        if self.closed:
            return
        self.closed = True
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send_bytes(_CLOSE)
        deadline = time.monotonic() + 2.0
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    pipe.recv_bytes()
        self._stop()

    # -- plumbing ---------------------------------------------------------------------------------
    def _run(self, message: bytes, what: str, own: Callable[[], None]) -> None:
        """Send ``message`` to every worker, do this process's share (``own``), then wait for every
        worker's answer. The first failure stops the pool and raises, naming it."""
        self._send(message, what)
        self._finish(what, own)

    def _send(self, message: bytes, what: str) -> None:
        if self.closed:
            raise EnvWorkerError(f"env {self.env_id}: {what} on a closed pool (a worker failed earlier)")
        for w, pipe in enumerate(self.pipes, start=1):
            try:
                pipe.send_bytes(message)
            except (OSError, ValueError) as e:
                raise self._failure(what, w, f"the worker's pipe is closed ({type(e).__name__})") from e

    def _finish(self, what: str, own: Callable[[], None]) -> None:
        try:
            own()
        except Exception as e:
            copy, cause = self._own.failure(e)
            raise self._failure(what, 0, cause, copy) from e
        self._wait_all(what)

    def _wait_all(self, what: str) -> None:
        """One answer from every worker; the first failure stops the pool and raises, naming it."""
        deadline = time.monotonic() + self.timeout_s
        for w, pipe in enumerate(self.pipes, start=1):
            try:
                answer = _receive(pipe, self.spin_s, max(0.0, deadline - time.monotonic()))
            except (EOFError, OSError):
                raise self._failure(what, w, self._death(w)) from None
            if answer is None:
                raise self._failure(what, w, f"no answer within {self.timeout_s:g} s (hung or died)")
            if answer[:1] == _ERROR:
                copy, text = pickle.loads(answer[1:])
                raise self._failure(what, w, text, copy)

    def _death(self, w: int) -> str:
        process = self.processes[w - 1]
        process.join(timeout=1.0)  # a dead worker's pipe can report EOF before it is reaped
        return f"the worker process died (exit code {process.exitcode})"

    def _failure(self, what: str, w: int, cause: str, copy: int | None = None) -> EnvWorkerError:
        lo, hi = self.shares[w]
        where = f"env copy {copy}" if copy is not None else f"copies {lo}..{hi - 1}"
        who = "the trainer's own share" if w == 0 else f"pool worker {w}"
        self._stop()
        return EnvWorkerError(f"env {self.env_id}: {what} failed in {who} ({where}): {cause}")

    def _stop(self) -> None:
        """End every worker process (terminate what has not exited), close the pipes and this
        process's share."""
        self.closed = True
        for process in self.processes:
            process.join(timeout=0.2 if process.exitcode is None else 0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=1.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=1.0)
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.close()
        self._own.close()

    def __del__(self):
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not self.closed:
                self._stop()
