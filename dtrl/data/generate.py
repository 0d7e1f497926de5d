"""The D4RL recipe re-run locally on Gymnasium v5 envs: SAC behaviour policies, then datasets.

One SAC run per env family (``train_behaviour``) leaves in ``<data_root>/behaviour/<family>/``:

    random.pt         the actor at initialisation (D4RL's 'random' policy)
    medium.pt         the first checkpoint whose eval return reaches medium_fraction * ref_max
                      (or the best checkpoint, flagged in the metadata, if SAC never gets there)
    medium_replay.hdf5  every transition SAC collected up to 'medium', episode by episode, with
                      qpos/qvel/sim states (D4RL's medium-replay)
    expert.pt         the actor at the end of the run
    metadata.json     eval curve, SAC steps, seed, returns, settings, warnings
    sac_state.pt      while the run is unfinished: everything to resume it (written every
                      ``sac_checkpoint_every`` steps and when paused after 'medium', see below)

A task that needs no expert (random, medium, medium-replay) stops the run once 'medium' is saved
and leaves it resumable; a task that needs the expert (or ``dtrl behaviour``) resumes or runs it to
``sac_steps``. The run up to 'medium' is the same either way, so the medium datasets do not depend
on which command trained the policies. A run killed at any point resumes from its last
``sac_state.pt`` (networks, optimiser, replay buffer, every RNG, the envs' simulator states and the
medium-replay log so far) and continues exactly as the uninterrupted run would have.

``generate_task_dataset`` then rolls the right policy out with sampled actions, as D4RL did, in
``rollout_envs`` envs stepped together; each env gets an equal share of the transitions and is run
like D4RL's single env, episode after episode, its last episode cut where its share ends (so the
set is not biased towards short episodes, as stopping all envs at a global count would be).
Every step records qpos, qvel and ``get_sim_state`` taken *before* the step: the state in which
observation[t] was seen and action[t] taken. Time-limit cuts are timeouts, never terminals; a
piece cut by the data budget also ends with a timeout so D4RL readers split it off.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtrl.config import to_dict
from dtrl.data.d4rl_hdf5 import read_d4rl, read_metadata, write_d4rl
from dtrl.data.sac import SAC, Actor, NumpyActor, actor_payload, load_actor
from dtrl.data.trajectories import DataError, Trajectory, TrajectoryDataset
from dtrl.config.device import resolve_device
from dtrl.util.io import atomic_torch_save, atomic_write_json, read_json, torch_load
from dtrl.util.lock import hold
from dtrl.tasks import EnvFamily, Task, get_family
from dtrl.envs.vec import StepBatch, VecStepper

# Generator settings that shape the behaviour run; a run made with other values is not reused.
BEHAVIOUR_KEYS = ("sac_steps", "sac_envs", "sac_batch_size", "sac_hidden", "sac_lr", "sac_gamma", "sac_tau",
                  "sac_utd", "sac_init_alpha", "sac_start_steps", "eval_every", "eval_episodes", "eval_stochastic",
                  "medium_fraction", "seed")
DATASET_KEYS = BEHAVIOUR_KEYS + ("transitions", "rollout_envs")
# Which behaviour policies a quality rolls out, and the share of the transitions each one gets.
QUALITY_POLICIES: dict[str, list[tuple[str, float]]] = {
    "random": [("random", 1.0)],
    "medium": [("medium", 1.0)],
    "expert": [("expert", 1.0)],
    "medium-expert": [("medium", 0.5), ("expert", 0.5)],  # D4RL: the medium set + the expert set
}
_PURPOSE = {"sac": 1, "eval": 2, "resume": 3, "random": 11, "medium": 12, "expert": 13, "policy": 20}


def data_root(exp: Any) -> Path:
    """``exp.data.root``, or ``<exp.results>/data`` when it is empty."""
    return Path(exp.data.root) if exp.data.root else Path(exp.results) / "data"


def behaviour_dir(exp: Any, family: str) -> Path:
    return data_root(exp) / "behaviour" / family


def _seed(*parts: int) -> int:
    """A 32-bit seed from several integers; distinct purposes get unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _settings(gen: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    d = to_dict(gen)
    return {k: d[k] for k in keys}


def _check_settings(recorded: dict[str, Any] | None, gen: Any, keys: tuple[str, ...], what: Path) -> None:
    if recorded is None:
        return
    now = _settings(gen, keys)
    diff = [f"{k}: {recorded.get(k)!r} there, {now[k]!r} now" for k in keys if recorded.get(k) != now[k]]
    if diff:
        raise DataError(f"{what} was made with other data.generator settings ({'; '.join(diff)}). Delete it to "
                        "make it again with the current settings, or use the settings it was made with")


def _warn(msg: str) -> None:
    print(f"dtrl: warning: {msg}", file=sys.stderr)


def _progress(total: int, desc: str, enabled: bool, unit: str = "step"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)


def family_task(family: EnvFamily) -> Task:
    """A Task standing for the family (env, time limit, reference scores) in the behaviour run."""
    return Task(name=f"{family.name}-behaviour", family=family, quality="medium")


def _env_batch(task: Task, seeds: list[int]) -> VecStepper:
    """Envs first reset with ``seeds``; later episodes continue each env's own RNG stream."""
    return VecStepper(task, len(seeds), seeds=seeds, reseed=False)


def evaluate_actor(actor: Actor, envs: VecStepper, seeds: list[int], sample: bool,
                   generator: torch.Generator | None = None) -> np.ndarray:
    """Returns of one episode per env, all envs stepped together, from fixed reset seeds."""
    envs.reset(seeds)
    returns = np.zeros(envs.n)
    active = np.ones(envs.n, dtype=bool)
    while active.any():
        rows = np.flatnonzero(active)
        out = envs.step(actor.act(envs.obs[rows], sample=sample, generator=generator), rows)
        returns[rows] += out.rewards
        active[rows[out.terminals | out.timeouts]] = False
    return returns


# -- cutting per-env streams into episodes ------------------------------------------------------------------
_FIELDS = ("obs", "actions", "rewards", "terminals", "timeouts", "next_obs", "qpos", "qvel", "sim_states")


def _to_trajectory(cols: dict[str, np.ndarray], cut: bool) -> Trajectory:
    timeouts = cols["timeouts"].astype(bool).copy()
    if cut:  # the data budget (not the env, not the time limit) ended this piece
        timeouts[-1] = True
    return Trajectory(observations=cols["obs"].astype(np.float32), actions=cols["actions"].astype(np.float32),
                      rewards=cols["rewards"].astype(np.float32), terminals=cols["terminals"].astype(bool),
                      timeouts=timeouts, qpos=cols["qpos"].astype(np.float64), qvel=cols["qvel"].astype(np.float64),
                      sim_states=cols["sim_states"].astype(np.float64),
                      next_observations=cols["next_obs"].astype(np.float32))


def _split_stream(cols: dict[str, np.ndarray]) -> list[tuple[int, Trajectory, bool]]:
    """One env's consecutive steps -> (index of its last step, episode, was cut) per piece.

    A trailing piece that neither terminated nor timed out was cut by the data budget."""
    ends = np.flatnonzero(cols["terminals"] | cols["timeouts"])
    n = cols["rewards"].shape[0]
    pieces, start = [], 0
    for e in [*ends.tolist(), n - 1]:
        if e < start:
            continue
        stop = e + 1
        cut = stop == n and not (cols["terminals"][e] or cols["timeouts"][e])
        pieces.append((e, _to_trajectory({k: v[start:stop] for k, v in cols.items()}, cut), cut))
        start = stop
    return pieces


class EpisodeLog:
    """Everything SAC collected, step by step for all its envs (medium-replay), kept on the host."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {k: [] for k in _FIELDS}

    def add(self, out: StepBatch, actions: np.ndarray) -> None:
        for k in _FIELDS:
            self.chunks[k].append(actions if k == "actions" else getattr(out, k))

    def __len__(self) -> int:
        return len(self.chunks["rewards"])

    def trajectories(self, vector_steps: int | None = None) -> list[Trajectory]:
        """Episodes of the first ``vector_steps`` collection steps, in the order they ended."""
        k = len(self) if vector_steps is None else vector_steps
        if k == 0:
            return []
        stacked = {f: np.stack(v[:k], axis=1) for f, v in self.chunks.items()}  # (n_envs, k, ...)
        pieces = []
        for i in range(stacked["rewards"].shape[0]):
            for end, traj, _ in _split_stream({f: a[i] for f, a in stacked.items()}):
                pieces.append((end, i, traj))
        pieces.sort(key=lambda p: (p[0], p[1]))
        return [p[2] for p in pieces]


# -- the SAC behaviour run ---------------------------------------------------------------------------------
@dataclass
class _Best:
    ret: float = -np.inf
    step: int = 0
    vector_steps: int = 0
    payload: dict | None = None


def load_behaviour_metadata(exp: Any, family: str) -> dict[str, Any] | None:
    path = behaviour_dir(exp, family) / "metadata.json"
    return read_json(path) if path.exists() else None


def train_behaviour(exp: Any, family: str, until: str = "expert") -> dict[str, Any]:
    """Train, resume or reuse the SAC behaviour run of ``family``; returns its metadata.

    ``until='medium'`` stops (resumably) once the medium policy and its replay are saved;
    ``until='expert'`` runs to ``sac_steps``. Concurrent callers wait on a lock file.
    """
    if until not in ("medium", "expert"):
        raise ValueError(f"until must be 'medium' or 'expert', not {until!r}")
    fam = get_family(family)
    out = behaviour_dir(exp, fam.name)
    resolve_device(exp.data.generator.device, "data.generator.device")  # a bad device leaves nothing behind
    with hold(out, f"the {fam.name} behaviour policies", wait=True):  # dtrl data jobs of one family share it
        meta = load_behaviour_metadata(exp, fam.name)
        if meta is not None:
            _check_settings(meta.get("generator"), exp.data.generator, BEHAVIOUR_KEYS, out)
            if meta["status"] == "complete" or (meta["status"] == "medium" and until == "medium"):
                return meta
        resume = meta is not None or (out / "sac_state.pt").exists()  # paused, or killed after a checkpoint
        return _BehaviourRun(exp, fam, out, resume=resume).run(until)


class _BehaviourRun:
    def __init__(self, exp: Any, fam: EnvFamily, out: Path, resume: bool):
        self.exp, self.fam, self.out = exp, fam, out
        self.gen = gen = exp.data.generator
        self.task = family_task(fam)
        self.device = resolve_device(gen.device, "data.generator.device")
        # Small-MLP SAC on the CPU is overhead-bound: extra intra-op threads only add synchronisation
        # (up to 10x slower on a busy machine), so it uses one thread unless exp.threads says otherwise.
        torch.set_num_threads(exp.threads if exp.threads > 0 else 1)
        self.envs = _env_batch(self.task, [_seed(gen.seed, _PURPOSE["sac"], i) for i in range(gen.sac_envs)])
        self.eval_envs = _env_batch(self.task, [0] * gen.eval_episodes)
        self.eval_seeds = [_seed(gen.seed, _PURPOSE["eval"], k) for k in range(gen.eval_episodes)]
        self.obs_dim, self.act_dim = self.envs.obs_dim, self.envs.act_dim
        self.threshold = gen.medium_fraction * self.task.ref_max_score
        # Seed every RNG the run draws from (weights, SAC sampling on CPU and GPU, uniform start steps).
        torch.manual_seed(gen.seed)
        self.rng = np.random.default_rng(_seed(gen.seed, _PURPOSE["sac"]))
        self.agent = SAC(self.obs_dim, self.act_dim, gen, capacity=gen.sac_steps + gen.sac_envs, device=self.device)
        self.step = 0
        self.owed = 0.0
        self.curve: list[list[float]] = []
        self.best = _Best()
        self.medium: dict[str, Any] | None = None
        self.log: EpisodeLog | None = EpisodeLog()
        self.warnings: list[str] = []
        self.wall = 0.0
        self.cpu = 0.0  # process CPU-seconds (all threads): the cost on a shared machine, where wall time is not
        self.env_time = 0.0
        self.update_time = 0.0
        self.resumed_at: list[int] = []
        if resume:
            self._load_state()

    # persistence ------------------------------------------------------------------------------------
    def _save_policy(self, name: str, payload: dict) -> None:
        atomic_torch_save(self.out / f"{name}.pt", payload)

    def _payload(self, ret: float | None) -> dict:
        return actor_payload(self.agent.actor, family=self.fam.name, env_id=self.fam.env_id, sac_steps=self.step,
                             eval_return=ret, seed=self.gen.seed)

    def _state_path(self) -> Path:
        return self.out / "sac_state.pt"

    def _elapsed(self) -> tuple[float, float]:
        """Wall and process CPU seconds of the whole run so far (earlier sessions included)."""
        return self.wall + time.perf_counter() - self._start_wall, self.cpu + time.process_time() - self._start_cpu

    def _save_state(self, wall: float | None = None, cpu: float | None = None) -> None:
        state = {"agent": self.agent.state(), "step": self.step, "owed": self.owed, "curve": self.curve,
                 "medium": self.medium, "warnings": self.warnings, "wall": self.wall if wall is None else wall,
                 "cpu": self.cpu if cpu is None else cpu,
                 "generator": _settings(self.gen, BEHAVIOUR_KEYS), "envs": self.envs.state_dict(),
                 "log": None if self.log is None else self.log.chunks, "best": vars(self.best),
                 "env_time": self.env_time, "update_time": self.update_time, "resumed_at": self.resumed_at,
                 "np_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        atomic_torch_save(self._state_path(), state)

    def _load_state(self) -> None:
        path = self._state_path()
        if not path.exists():
            raise DataError(f"{self.out}: the behaviour run is marked paused but {path.name} is missing; delete "
                            f"{self.out} to train it again")
        st = torch_load(path, map_location="cpu", fix=f"delete {self.out} to train the behaviour policies again")
        _check_settings(st.get("generator"), self.gen, BEHAVIOUR_KEYS, path)
        self.agent.load_state(st["agent"])
        self.step, self.owed, self.curve = int(st["step"]), float(st["owed"]), st["curve"]
        self.medium, self.warnings, self.wall = st["medium"], st["warnings"], float(st["wall"])
        self.cpu = float(st.get("cpu", 0.0))  # states written before CPU time was kept start it at 0
        self.env_time, self.update_time = float(st["env_time"]), float(st["update_time"])
        self.resumed_at = [*st["resumed_at"], self.step]
        self.rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        if st["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        if "envs" in st:  # the envs, the log up to 'medium' (until it is saved) and the best checkpoint carry over
            self.envs.load_state_dict(st["envs"])
            self.log = None
            if st["log"] is not None:
                self.log = EpisodeLog()
                self.log.chunks = st["log"]
            self.best = _Best(**st["best"])
        else:  # a paused state of an older dtrl: its envs restart their episodes
            self.log = None  # the replay up to 'medium' is already saved
            self.envs.reset([_seed(self.gen.seed, _PURPOSE["resume"], self.step, i) for i in range(self.envs.n)])

    def _metadata(self, status: str, expert: dict | None = None) -> dict[str, Any]:
        return {
            "family": self.fam.name, "env_id": self.fam.env_id, "status": status,
            "generator": _settings(self.gen, BEHAVIOUR_KEYS), "seed": self.gen.seed, "device": str(self.device),
            "sac_steps_done": self.step, "sac_updates": self.agent.updates,
            "eval_curve": self.curve, "eval_stochastic": self.gen.eval_stochastic,
            "random": {"eval_return": self.curve[0][1] if self.curve else None},
            "medium": self.medium, "expert": expert, "ref_max_score": self.task.ref_max_score,
            "medium_threshold": self.threshold, "warnings": self.warnings, "resumed_at": self.resumed_at,
            "wall_time_s": self.wall, "cpu_time_s": self.cpu, "env_time_s": self.env_time, "update_time_s": self.update_time,
            "env_steps_per_s": self.step / self.wall if self.wall > 0 else None,
            "updates_per_s": self.agent.updates / self.update_time if self.update_time > 0 else None,
            "obs_dim": self.obs_dim, "act_dim": self.act_dim,
        }

    def _write_metadata(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.out / "metadata.json", meta)

    # medium ------------------------------------------------------------------------------------------
    def _save_medium(self, payload: dict, ret: float, step: int, vector_steps: int, reached: bool) -> None:
        assert self.log is not None
        trajs = self.log.trajectories(vector_steps)
        self._save_policy("medium", payload)
        replay = TrajectoryDataset(trajs, metadata={"family": self.fam.name, "policy": "medium-replay",
                                                    "sac_steps": step, "seed": self.gen.seed},
                                   source=str(self.out / "medium_replay.hdf5"))
        write_d4rl(self.out / "medium_replay.hdf5", replay)
        wall, cpu = self._elapsed()
        self.medium = {"sac_steps": step, "eval_return": ret, "reached": reached,
                       "replay_transitions": replay.num_transitions, "replay_episodes": len(replay),
                       "wall_time_s": wall, "cpu_time_s": cpu}
        self.log = None  # free the host copy; the buffer keeps what SAC learns from

    # the loop ----------------------------------------------------------------------------------------
    def _evaluate(self) -> float:
        ret = float(evaluate_actor(self.agent.actor, self.eval_envs, self.eval_seeds,
                                   sample=self.gen.eval_stochastic).mean())
        self.curve.append([self.step, ret])
        return ret

    def _after_eval(self, ret: float) -> None:
        """Track the best checkpoint and take the first one at the medium threshold as 'medium'."""
        if self.medium is not None or self.step == 0:  # step 0 is the random policy, not a checkpoint
            return
        vector_steps = len(self.log) if self.log is not None else 0
        if ret > self.best.ret:
            self.best = _Best(ret, self.step, vector_steps, self._payload(ret))
        if ret >= self.threshold:
            self._save_medium(self._payload(ret), ret, self.step, vector_steps, reached=True)

    def run(self, until: str) -> dict[str, Any]:
        gen, agent, envs = self.gen, self.agent, self.envs
        self.out.mkdir(parents=True, exist_ok=True)
        self._start_wall = time.perf_counter()
        self._start_cpu = time.process_time()
        if self.step == 0:
            self._save_policy("random", self._payload(self._evaluate()))
        next_eval = (self.step // gen.eval_every + 1) * gen.eval_every
        every = gen.sac_checkpoint_every
        next_ckpt = (self.step // every + 1) * every if every else None
        bar = _progress(gen.sac_steps, f"SAC {self.fam.name}", gen.progress)
        bar.update(self.step)
        last_ret = self.curve[-1][1] if self.curve else float("nan")
        paused = False
        try:
            while self.step < gen.sac_steps:
                if self.step < gen.sac_start_steps:
                    actions = self.rng.uniform(-1.0, 1.0, (envs.n, self.act_dim)).astype(np.float32)
                else:
                    actions = agent.actor.act(envs.obs, sample=True)
                t0 = time.perf_counter()
                step_out = envs.step(actions, record=self.log is not None)
                self.env_time += time.perf_counter() - t0
                agent.add(step_out.obs, actions, step_out.rewards, step_out.next_obs, step_out.terminals)
                if self.log is not None:
                    self.log.add(step_out, actions)
                self.step += envs.n
                bar.update(envs.n)
                if self.step >= gen.sac_start_steps and agent.size >= gen.sac_batch_size:
                    self.owed += envs.n * gen.sac_utd
                    k = int(self.owed)
                    self.owed -= k
                    t0 = time.perf_counter()
                    agent.update(k)
                    if self.device.type == "cuda":  # count the GPU's work, not just its launch
                        torch.cuda.synchronize(self.device)
                    self.update_time += time.perf_counter() - t0
                if self.step >= next_eval or self.step >= gen.sac_steps:
                    next_eval += gen.eval_every
                    last_ret = self._evaluate()
                    self._after_eval(last_ret)
                    bar.set_postfix(ret=f"{last_ret:.0f}", medium="yes" if self.medium else "no",
                                    alpha=f"{agent.diagnostics()['alpha']:.3f}" if agent.updates else "-")
                    if self.medium is not None and until == "medium" and self.step < gen.sac_steps:
                        paused = True
                        break
                if next_ckpt is not None and self.step >= next_ckpt and self.step < gen.sac_steps:
                    self._save_state(*self._elapsed())
                    next_ckpt = (self.step // every + 1) * every
        finally:
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.wall, self.cpu = self._elapsed()
            self._start_wall, self._start_cpu = time.perf_counter(), time.process_time()  # counted once

        if paused:
            self._save_state()
            meta = self._metadata("medium")
            self._write_metadata(meta)
            return meta

        if self.medium is None:
            b = self.best
            msg = (f"SAC on {self.fam.env_id} never reached the medium return {self.threshold:.1f} "
                   f"({gen.medium_fraction:.3g} x ref max {self.task.ref_max_score:g}) in {gen.sac_steps} steps; "
                   f"'medium' is the best checkpoint instead (step {b.step}, eval return {b.ret:.1f}). "
                   "Raise data.generator.sac_steps for a true medium policy")
            _warn(msg)
            self.warnings.append(msg)
            self._save_medium(b.payload, b.ret, b.step, b.vector_steps, reached=False)
        expert = {"sac_steps": self.step, "eval_return": last_ret}
        self._save_policy("expert", self._payload(last_ret))
        meta = self._metadata("complete", expert)
        self._write_metadata(meta)
        self._state_path().unlink(missing_ok=True)
        return meta


# -- datasets ----------------------------------------------------------------------------------------------
def initial_actor(obs_dim: int, act_dim: int, gen: Any) -> Actor:
    """The SAC actor at initialisation ('random'), identical to the one a behaviour run starts from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen.seed)
        return Actor(obs_dim, act_dim, gen.sac_hidden)


def rollout_policy(task: Task, actor: Actor, transitions: int, n_envs: int, seed: int, workers: int = 1,
                   progress: bool = False, desc: str = "rollout") -> tuple[list[Trajectory], dict[str, Any]]:
    """``transitions`` steps of ``actor`` (sampled actions) in ``n_envs`` envs, each a share run to its end.

    The envs are split over ``workers`` processes. Each env draws its action noise from its own
    stream, so the data does not depend on how many workers there are. Returns the trajectories
    (env by env) and return statistics over the episodes that ended by themselves (the pieces cut
    by the budget would drag the mean down).
    """
    n_envs = max(1, min(n_envs, transitions))
    budgets = np.full(n_envs, transitions // n_envs, dtype=np.int64)
    budgets[: transitions % n_envs] += 1
    workers = max(1, min(workers, n_envs))
    groups = [g for g in np.array_split(np.arange(n_envs), workers) if g.size]
    payload = actor_payload(actor)
    with _progress(transitions, desc, progress) as bar:
        if len(groups) == 1:
            results = [_rollout_group(task, payload, groups[0], budgets[groups[0]], seed, bar.update)]
        else:
            results = _rollout_processes(task, payload, groups, budgets, seed, bar)
    trajs, complete = [], []
    for group_result in results:
        for cols in group_result:
            for _, traj, cut in _split_stream(cols):
                trajs.append(traj)
                if not cut:
                    complete.append(traj.total_return)
    stats = {"episodes": len(complete), "cut_pieces": len(trajs) - len(complete),
             "return_mean": float(np.mean(complete)) if complete else None,
             "return_min": float(np.min(complete)) if complete else None,
             "return_max": float(np.max(complete)) if complete else None}
    return trajs, stats


def _rollout_group(task: Task, payload: dict, env_ids: np.ndarray, budgets: np.ndarray, seed: int,
                   on_steps=None) -> list[dict[str, np.ndarray]]:
    """Run envs ``env_ids`` for their budgets; one dict of per-step columns per env."""
    policy = NumpyActor(load_actor(payload))
    envs = _env_batch(task, [_seed(seed, int(i)) for i in env_ids])
    noise_rngs = [np.random.default_rng(_seed(seed, _PURPOSE["policy"], int(i))) for i in env_ids]
    n = len(env_ids)
    width = {"obs": envs.obs_dim, "actions": envs.act_dim, "next_obs": envs.obs_dim, "qpos": envs.nq,
             "qvel": envs.nv, "sim_states": envs.state_dim}
    cap = int(budgets.max())
    store = {k: np.empty((n, cap, w), dtype=np.float64 if k in ("qpos", "qvel", "sim_states") else np.float32)
             for k, w in width.items()}
    store.update(rewards=np.empty((n, cap), np.float32), terminals=np.zeros((n, cap), bool),
                 timeouts=np.zeros((n, cap), bool))
    count = np.zeros(n, dtype=np.int64)
    while True:
        rows = np.flatnonzero(count < budgets)
        if rows.size == 0:
            break
        mean, log_std = policy(envs.obs[rows])
        noise = np.stack([noise_rngs[r].standard_normal(envs.act_dim) for r in rows])
        actions = np.tanh(mean + np.exp(log_std) * noise).astype(np.float32)
        out = envs.step(actions, rows, record=True)
        idx = count[rows]
        for k, arr in store.items():
            arr[rows, idx] = actions if k == "actions" else getattr(out, k)
        count[rows] += 1
        if on_steps is not None:
            on_steps(int(rows.size))
    return [{k: arr[j, : budgets[j]] for k, arr in store.items()} for j in range(n)]


def _rollout_worker(task, payload, env_ids, budgets, seed, counter, queue) -> None:
    torch.set_num_threads(1)  # one core per worker; tiny matmuls only lose from threading

    def on_steps(k: int) -> None:
        counter.value += k  # read approximately by the parent's progress bar; no lock needed

    try:
        queue.put(("ok", env_ids[0], _rollout_group(task, payload, env_ids, budgets, seed, on_steps)))
    except BaseException:  # report, so the parent raises instead of waiting forever
        import traceback

        queue.put(("error", env_ids[0], traceback.format_exc()))


def _rollout_processes(task, payload, groups, budgets, seed, bar) -> list:
    import multiprocessing as mp
    import queue as queue_mod

    # spawn, not fork: the parent may hold a CUDA context (SAC), which a forked child must not inherit.
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0, lock=False)
    q = ctx.Queue()
    procs = [ctx.Process(target=_rollout_worker, args=(task, payload, g, budgets[g], seed, counter, q), daemon=True)
             for g in groups]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        while len(results) < len(procs):
            try:
                status, first, value = q.get(timeout=0.5)
            except queue_mod.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a rollout worker died without reporting (out of memory?)") from None
            else:
                if status == "error":
                    raise RuntimeError(f"rollout worker for envs from {first} failed:\n{value}")
                results[int(first)] = value
            bar.update(counter.value - bar.n)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return [results[int(g[0])] for g in groups]


def generated_path(exp: Any, task: Task) -> Path:
    return data_root(exp) / f"{task.name}.hdf5"


def generate_task_dataset(exp: Any, task: Task, force: bool = False) -> Path:
    """Make ``<data_root>/<task>.hdf5`` by the D4RL recipe (training the behaviour run if needed).

    An existing file made with the same settings is kept; one made with other settings is an error
    (delete it, or go back to its settings), so a changed config never mixes old and new data.
    """
    if not task.family.generatable:
        from dtrl.envs.robotics import dataset_hint

        raise DataError(dataset_hint(task))
    path = generated_path(exp, task)
    gen = exp.data.generator
    if path.exists() and not force:
        _check_settings(read_metadata(path).get("generator"), gen, DATASET_KEYS, path)
        return path
    if task.quality not in (*QUALITY_POLICIES, "medium-replay"):
        raise DataError(f"{task.name}: the generator knows no recipe for quality '{task.quality}'")
    if exp.threads > 0:
        torch.set_num_threads(exp.threads)
    fam = task.family
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"task": task.name, "quality": task.quality, "env_id": task.env_id, "seed": gen.seed,
                            "generator": _settings(gen, DATASET_KEYS), "format": "dtrl-generated (D4RL recipe)"}
    if task.quality == "random":
        # The random policy is SAC's initial actor: no training needed for it.
        obs_dim, act_dim = _dims(task)
        behaviour = None
        policies = {"random": initial_actor(obs_dim, act_dim, gen)}
        info = {"random": {"sac_steps": 0}}
    else:
        needs_expert = task.quality in ("expert", "medium-expert")
        behaviour = train_behaviour(exp, fam.name, until="expert" if needs_expert else "medium")
        bdir = behaviour_dir(exp, fam.name)
        meta["behaviour"] = {"dir": str(bdir), "status": behaviour["status"], "medium": behaviour["medium"],
                             "expert": behaviour["expert"], "random": behaviour["random"],
                             "warnings": behaviour["warnings"]}
        meta["warnings"] = list(behaviour["warnings"])
        policies, info = {}, {}
        for name, _ in QUALITY_POLICIES.get(task.quality, []):
            payload = torch_load(bdir / f"{name}.pt")
            policies[name] = load_actor(payload)
            info[name] = {"sac_steps": payload["info"]["sac_steps"], "eval_return": payload["info"]["eval_return"]}

    if task.quality == "medium-replay":
        replay = read_d4rl(behaviour_dir(exp, fam.name) / "medium_replay.hdf5")
        trajs = replay.trajectories
        meta["policies"] = [{"policy": "medium-replay", "sac_steps": behaviour["medium"]["sac_steps"],
                             "transitions": replay.num_transitions}]
    else:
        trajs, meta["policies"] = [], []
        shares = QUALITY_POLICIES[task.quality]
        remaining = gen.transitions
        for k, (name, share) in enumerate(shares):
            n = remaining if k == len(shares) - 1 else int(round(gen.transitions * share))
            remaining -= n
            part, stats = rollout_policy(task, policies[name], n, gen.rollout_envs,
                                         _seed(gen.seed, _PURPOSE[name]), workers=_workers(gen, n),
                                         progress=gen.progress, desc=f"{task.name} ({name})")
            meta["policies"].append({"policy": name, "transitions": n, **info[name],
                                     **{f"dataset_{k}": v for k, v in stats.items()}})
            trajs.extend(part)
    meta["wall_time_s"] = time.perf_counter() - t0
    dataset = TrajectoryDataset(trajs, metadata=meta, source=str(path))
    dataset.validate()
    write_d4rl(path, dataset)
    return path


def _workers(gen: Any, transitions: int) -> int:
    if gen.rollout_workers > 0:
        return gen.rollout_workers
    # A worker process costs a few seconds to start (torch, MuJoCo), worth it from ~50k steps each.
    return max(1, min(gen.rollout_envs, os.cpu_count() or 1, transitions // 50_000))


def _dims(task: Task) -> tuple[int, int]:
    from dtrl.envs.make import env_dims

    return env_dims(task)
