"""A set of envs of one task, stepped in this process or across worker processes.

:class:`EnvSet` is what :class:`dtrl.harness.rollout.RolloutEngine` and :class:`dtrl.envs.vec.VecStepper` step:
every operation takes the env rows it applies to and does the same thing to each env in row order
(reset with a seed, step with an action recording the snapshot taken before the step, restore a
snapshot, read or set each env's RNG). With ``workers=0`` it runs here; with ``workers=W`` each of
W processes owns a contiguous slice of the envs and runs the same code (:class:`_Slice`) on its
rows, all workers at once, while this process waits. Actions, observations and snapshots cross the
pipes as float64 arrays (pickled bit-exactly), and each env is only ever touched by its own
worker, so the results are bit-identical to in-process stepping: the policy forward stays one
batched call in the main process, only the env stepping is spread over cores.

Workers are started with ``forkserver`` (``spawn`` where unavailable), never ``fork``: a CUDA
context or torch's thread pools in the parent must not be forked. An exception in a worker comes
back as one :class:`EnvWorkerError` naming the worker, its envs and the command, with the worker's
traceback; a worker that dies is reported the same way. :meth:`EnvSet.close` (also run when the
set is garbage-collected or the interpreter exits) stops the workers.

How many workers (config ``rollout_workers``): a MuJoCo step takes tens of microseconds and a pipe
round trip about as long, so a worker pays off when it steps several envs per call; use at most
(cores available to the job - 1), leaving a core for the main process (policy forward, bookkeeping),
and keep 0 on a box with few cores or few envs. ``scripts/bench_rollout.py --workers`` measures it.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from dtrl.tasks import Task

_DEFAULT_WORKERS = 0


def set_default_workers(n: int) -> None:
    """Workers an :class:`EnvSet` uses when its caller does not say (config ``rollout_workers``)."""
    global _DEFAULT_WORKERS
    if int(n) < 0:
        raise ValueError(f"rollout_workers is {n}; use 0 (step envs in-process) or a number of worker processes")
    _DEFAULT_WORKERS = int(n)


def default_workers() -> int:
    return _DEFAULT_WORKERS


class EnvWorkerError(RuntimeError):
    """An env worker process raised or died."""


@dataclass
class Stepped:
    """What one :meth:`EnvSet.step` returns, one row per stepped env, in the order of the rows given."""

    obs: np.ndarray  # (m, S) observation after the step
    rewards: np.ndarray  # (m,)
    terminals: np.ndarray  # (m,) bool
    sims: np.ndarray | None  # (m, D) snapshot before the step, when recorded
    qpos: np.ndarray | None
    qvel: np.ndarray | None
    # (m,) bool: the env's info["success"] after the step (gymnasium-robotics Adroit's per-step goal_achieved;
    # False for envs that report none). Adroit's episode success counts these steps (dtrl.envs.robotics.success_rate).
    goal: np.ndarray | None = None


class _Slice:
    """Envs ``lo..hi`` of a set; the code that runs in a worker, and in-process with no workers."""

    def __init__(self, task: Task, seeds: Sequence[int | None]):
        from dtrl.envs.make import make_env

        self.envs = [make_env(task, seed=s) for s in seeds]

    def info(self) -> dict[str, int]:
        from dtrl.envs.make import sim_state_size

        env = self.envs[0]
        return {"obs_dim": int(env.observation_space.shape[0]), "act_dim": int(env.action_space.shape[0]),
                "nq": int(env.model.nq), "nv": int(env.model.nv), "state_dim": int(sim_state_size(env))}

    def reset(self, rows, seeds) -> np.ndarray:
        return np.stack([np.asarray(self.envs[i].reset(seed=None if s is None else int(s))[0], dtype=np.float64)
                         for i, s in zip(rows, seeds)])

    def step(self, rows, actions, record: bool):
        from dtrl.envs.make import get_sim_state

        m = len(rows)
        sims = qpos = qvel = None
        if record:
            sims = np.stack([get_sim_state(self.envs[i]) for i in rows])
            qpos = np.stack([self.envs[i].data.qpos.copy() for i in rows])
            qvel = np.stack([self.envs[i].data.qvel.copy() for i in rows])
        obs, rewards, terms, goal = [], np.zeros(m), np.zeros(m, dtype=bool), np.zeros(m, dtype=bool)
        for j, i in enumerate(rows):
            o, r, term, _, info = self.envs[i].step(actions[j])
            obs.append(np.asarray(o, dtype=np.float64))
            rewards[j], terms[j], goal[j] = r, term, bool(info.get("success", False))
        return np.stack(obs), rewards, terms, sims, qpos, qvel, goal

    def set_sim(self, rows, states) -> None:
        from dtrl.envs.make import set_sim_state

        for i, s in zip(rows, states):
            set_sim_state(self.envs[i], s)

    def get_sim(self, rows) -> np.ndarray:
        from dtrl.envs.make import get_sim_state

        return np.stack([get_sim_state(self.envs[i]) for i in rows])

    def get_rng(self, rows) -> list:
        return [self.envs[i].np_random.bit_generator.state for i in rows]

    def set_rng(self, rows, states) -> None:
        for i, s in zip(rows, states):
            self.envs[i].np_random.bit_generator.state = s


def _worker_main(conn, task: Task, seeds: list) -> None:
    try:
        sl = _Slice(task, seeds)
        conn.send(("ok", sl.info()))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, args = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if cmd == "close":
            return
        try:
            conn.send(("ok", getattr(sl, cmd)(*args)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


def _context():
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def _stop(procs, conns) -> None:
    for c in conns:
        try:
            c.send(("close", ()))
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    for c in conns:
        c.close()


class EnvSet:
    """``len(seeds)`` envs of ``task``, env i made with ``make_env(task, seed=seeds[i])``; see the module doc."""

    def __init__(self, task: Task, seeds: Sequence[int | None], workers: int | None = None):
        self.n = len(seeds)
        w = default_workers() if workers is None else int(workers)
        if w < 0:
            raise ValueError(f"workers is {w}; use 0 (in-process) or a number of worker processes")
        self.workers = min(w, self.n)
        self._procs: list = []
        self._conns: list = []
        if self.workers == 0:
            self._local = _Slice(task, list(seeds))
            self.envs = self._local.envs  # in-process only: the env objects themselves
            self.info = self._local.info()
            return
        self._local, self.envs = None, None
        # worker w owns envs bounds[w]..bounds[w+1]; owner[i] and local[i] map a row to (worker, index there)
        self._bounds = [self.n * k // self.workers for k in range(self.workers + 1)]
        self._owner = np.repeat(np.arange(self.workers), np.diff(self._bounds))
        self._index = np.arange(self.n) - np.asarray(self._bounds)[self._owner]
        ctx = _context()
        try:
            for k in range(self.workers):
                parent, child = ctx.Pipe()
                lo, hi = self._bounds[k], self._bounds[k + 1]
                p = ctx.Process(target=_worker_main, args=(child, task, list(seeds[lo:hi])), daemon=True,
                                name=f"dtrl-env-worker-{k}")
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
            infos = [self._recv(k, "make_env") for k in range(self.workers)]
        except BaseException:
            _stop(self._procs, self._conns)
            raise
        self.info = infos[0]
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._conns)  # also runs at exit

    # -- plumbing -----------------------------------------------------------------------------------
    def _recv(self, k: int, cmd: str) -> Any:
        lo, hi = self._bounds[k], self._bounds[k + 1]
        try:
            status, value = self._conns[k].recv()
        except (EOFError, OSError):
            p = self._procs[k]
            p.join(timeout=1)
            raise EnvWorkerError(f"env worker {k} (envs {lo}..{hi - 1}) died during '{cmd}' "
                                 f"(exit code {p.exitcode})") from None
        if status == "error":
            cause = value.strip().splitlines()[-1]
            raise EnvWorkerError(f"env worker {k} (envs {lo}..{hi - 1}) failed in '{cmd}': {cause}\n"
                                 f"worker traceback:\n{value}")
        return value

    def _call(self, cmd: str, rows, *per_row) -> list:
        """Run ``cmd`` on ``rows`` (each worker on its own rows, all at once); results per worker used."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        if self._local is not None:
            return [(np.arange(len(rows)), getattr(self._local, cmd)(rows, *per_row))]
        owners = self._owner[rows]
        sent = []
        for k in np.unique(owners):
            sel = np.flatnonzero(owners == k)
            args = [self._index[rows[sel]]] + [_take(a, sel) for a in per_row]
            try:
                self._conns[k].send((cmd, tuple(args)))
            except (OSError, ValueError):
                self._recv(k, cmd)  # reports the dead worker
                raise
            sent.append((k, sel))
        # every worker that was sent a command is read before any error is raised, so no reply is left queued
        out, first_error = [], None
        for k, sel in sent:
            try:
                out.append((sel, self._recv(k, cmd)))
            except EnvWorkerError as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return out

    # -- operations ---------------------------------------------------------------------------------
    def reset(self, rows, seeds) -> np.ndarray:
        """Reset envs ``rows`` with ``seeds`` (None: continue the env's RNG); their observations (m, S)."""
        out = np.zeros((len(rows), self.info["obs_dim"]))
        for sel, obs in self._call("reset", rows, list(seeds)):
            out[sel] = obs
        return out

    def step(self, rows, actions: np.ndarray, record: bool = False) -> Stepped:
        """Step envs ``rows`` with ``actions`` (m, A); ``record`` adds the snapshot, qpos, qvel from before."""
        m = len(rows)
        res = Stepped(np.zeros((m, self.info["obs_dim"])), np.zeros(m), np.zeros(m, dtype=bool),
                      np.zeros((m, self.info["state_dim"])) if record else None,
                      np.zeros((m, self.info["nq"])) if record else None,
                      np.zeros((m, self.info["nv"])) if record else None, np.zeros(m, dtype=bool))
        for sel, (obs, rew, term, sims, qpos, qvel, goal) in self._call("step", rows, np.asarray(actions), record):
            res.obs[sel], res.rewards[sel], res.terminals[sel], res.goal[sel] = obs, rew, term, goal
            if record:
                res.sims[sel], res.qpos[sel], res.qvel[sel] = sims, qpos, qvel
        return res

    def set_sim(self, rows, states) -> None:
        """Restore simulator snapshots ``states`` (m, D) into envs ``rows`` (dtrl.envs.make.set_sim_state)."""
        self._call("set_sim", rows, np.asarray(states))

    def get_sim(self, rows) -> np.ndarray:
        out = np.zeros((len(rows), self.info["state_dim"]))
        for sel, sims in self._call("get_sim", rows):
            out[sel] = sims
        return out

    def get_rng(self, rows) -> list:
        out: list = [None] * len(rows)
        for sel, states in self._call("get_rng", rows):
            for j, s in zip(sel, states):
                out[j] = s
        return out

    def set_rng(self, rows, states) -> None:
        self._call("set_rng", rows, list(states))

    def close(self) -> None:
        if self._procs:
            self._finalizer()
            self._procs = []


def _take(a, sel):
    """Rows ``sel`` of a per-row argument: an array, a list, or a flag shared by every row."""
    if isinstance(a, np.ndarray):
        return a[sel]
    if isinstance(a, list):
        return [a[j] for j in sel]
    return a
