"""The online harness every method runs under: budgets, evaluation, logging, checkpoints, resume.

A method is a class with a typed ``Config`` dataclass that implements :class:`OnlineMethod`. The
harness owns the loop, so every method counts env steps and gradient updates the same way, writes
the same ``progress.csv`` and ``summary.json``, and resumes from ``checkpoint.pt`` after a kill.

Gradient updates are counted in two columns, the same way for every method: ``policy_updates``
(optimizer steps of the acting policy: the DT, or IQL's actor) and ``critic_updates`` (steps of
a critic or value function: ODT+TD3's and QGRPO's twin Q, PPO-DT's value net, IQL's Q and V;
0 for methods without). Tables and curves use ``policy_updates`` for every method;
``grad_updates`` is kept in progress.csv and summary.json as an alias of ``policy_updates``.

Run directory layout (``out_dir``)::

    progress.csv    one row per iteration (dtrl.util.logger.CORE_COLUMNS first, then diagnostics)
    checkpoint.pt   latest resumable state (method, counters, RNG), written atomically
    summary.json    written last: its presence marks the run complete
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from dtrl.config import ConfigError, to_dict
from dtrl.data.trajectories import TrajectoryDataset
from dtrl.util.guard import DivergenceError, check_parameters, check_values
from dtrl.config.device import resolve_device  # noqa: F401 - re-exported: dtrl.harness.online.resolve_device
from dtrl.util.io import atomic_torch_save, read_json, torch_load
from dtrl.util.logger import CORE_COLUMNS, CpuClock, RunLogger, Throughput, write_summary
from dtrl.config.online import EvalConfig, OnlineConfig
from dtrl.tasks import Task


@dataclass
class Counters:
    env_steps: int = 0  # training env steps (exploration + scoring); the budget counts these
    env_steps_eval: int = 0  # evaluation env steps, reported apart
    policy_updates: int = 0  # optimizer steps of the acting policy (DT or actor): the update axis
    critic_updates: int = 0  # optimizer steps of critics / value functions
    iterations: int = 0
    wall_time: float = 0.0  # seconds spent in this run, summed over resumes
    cpu_time: float = 0.0  # process CPU-seconds spent in this run, summed over resumes (progress.csv's cpu_s)
    extra: dict[str, int] = field(default_factory=dict)  # method-specific step counts, e.g. sampled vs scoring

    def add(self, name: str, n: int) -> None:
        self.extra[name] = self.extra.get(name, 0) + int(n)

    @property
    def grad_updates(self) -> int:
        """Kept for older readers: the policy updates (not policy + critic)."""
        return self.policy_updates


@dataclass
class Evaluation:
    """What :meth:`OnlineMethod.evaluate` may return instead of bare returns: the raw returns and, per
    episode, the steps whose ``info["success"]`` was true. Adroit's success rate needs those steps (D4RL's
    rule, dtrl.envs.robotics.success_rate); AntMaze's is read off the returns, so bare returns suffice there."""

    returns: np.ndarray
    goal_steps: np.ndarray | None = None


# Keys of a run's recorded config that no resume may change: what the run is, and the DT it started from.
RESUME_FIXED = ("algo", "task", "seed", "pretrained_with")

CHECKPOINT_COUNTERS = ("env_steps", "env_steps_eval", "policy_updates", "critic_updates", "iterations",
                       "wall_time", "cpu_time", "extra")
# Counters a checkpoint of an older dtrl may lack, and what they resume from.
_COUNTER_DEFAULTS = {"cpu_time": 0.0}


@dataclass
class RunContext:
    """What a method gets from the harness."""

    task: Task
    seed: int
    device: torch.device
    dataset: TrajectoryDataset | None
    pretrained_path: Path | None
    out_dir: Path
    eval_cfg: EvalConfig
    counters: Counters
    obs_dim: int
    act_dim: int
    np_rng: np.random.Generator


class OnlineMethod:
    """Base class of online methods. Subclasses set ``Config`` and implement the four methods."""

    Config: ClassVar[type]
    needs_pretrained_dt: ClassVar[bool] = True  # False for MLP methods (IQL), which pretrain themselves
    # Config field named when a parameter goes non-finite without a loss term showing it first.
    fault_key: ClassVar[str] = "lr"
    # model.action_head of the pretrained DT it finetunes: 'deterministic' (ODT+TD3) is pretrained
    # separately, under pretrain_det/ (dtrl.harness.pretrain.HEAD_DIRS)
    pretrained_head: ClassVar[str] = "gaussian"
    # model.backbone values (dtrl.config.registry.BACKBONES) it can finetune; None = any. A config naming another
    # is refused when it loads, with backbone_refusal as the reason.
    backbones: ClassVar[tuple[str, ...] | None] = ("dt",)
    backbone_refusal: ClassVar[str] = "it is written for the DT"
    # Parameters that cannot change when a run resumes (--allow-config-change refuses them by name): they shape
    # the checkpointed state (network sizes, buffers, the optimizer's kind) or act only when a run starts.
    # Every other parameter applies from the resume on: it is read from the config, and the optimizers keep
    # the config's hyperparameters when they load a checkpoint (dtrl.models.optim.load_optimizer_state).
    resume_fixed: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg, self.ctx = cfg, ctx

    def train_iteration(self) -> dict[str, float]:
        """One online iteration: collect env steps, make updates, advance ``ctx.counters``; return diagnostics."""
        raise NotImplementedError

    def evaluate(self, episodes: int, seed: int) -> np.ndarray | Evaluation:
        """Raw returns of ``episodes`` evaluation episodes of the current policy (deterministic actions),
        or an :class:`Evaluation` that adds each episode's goal steps (without them Adroit reports no
        success rate)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def checkpoint_policy(cls, state: dict[str, Any], cfg: Any, obs_dim: int, act_dim: int,
                          device: torch.device) -> Any:
        """The evaluation policy (observations -> deterministic actions) in ``state``, this class's
        ``state_dict()`` as a run's checkpoint.pt holds it, so `dtrl evaluate` scores an MLP method's
        checkpoint as :meth:`evaluate` did. None (the default): the state holds a DT (``state["dt"]``,
        which `dtrl evaluate` rebuilds itself) or no memoryless policy."""
        return None

    def finished(self) -> bool:
        """True if the method has nothing more to do regardless of budget (the offline DT)."""
        return False

    def eval_rtg(self) -> float | None:
        """The RTG target evaluation conditions on (None: the policy takes no RTG, e.g. IQL)."""
        return None

    def eval_rtg_rule(self) -> str:
        """Where eval_rtg comes from: 'none', 'task:eval_rtg', 'eval.rtg', 'train:<which>_rtg', 'train'."""
        return "none"


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# The evaluation index of a run's final evaluation (the score in summary.json); `dtrl evaluate` uses
# the same env seeds, so a checkpoint evaluated again with the run's seed and settings scores the same.
FINAL_EVAL_INDEX = 999_999


def eval_seed(eval_cfg: EvalConfig, run_seed: int, index: int) -> int:
    return run_seed * 1000 + eval_cfg.seed_offset + index


def _rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),
        "numpy": np_rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])
    np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_online(method: OnlineMethod, ctx: RunContext, online: OnlineConfig, meta: dict[str, Any],
               config: dict[str, Any] | None = None, allow_config_change: bool = False) -> dict[str, Any]:
    """Drive ``method`` to its budget; resume from ``out_dir/checkpoint.pt`` if present.

    ``meta`` holds method/algo/task/seed names for the summary; ``config`` is the run's resolved
    config, recorded in checkpoints and the summary: resuming under another one raises ConfigError
    unless ``allow_config_change``. Returns the summary dict. A non-finite loss or parameter raises
    :class:`dtrl.util.guard.DivergenceError` after writing a ``status: diverged`` summary; the last
    checkpoint (all finite) stays.
    """
    from dtrl.harness.provenance import check_resume, code_version

    out = ctx.out_dir
    summary_path, ckpt_path = out / "summary.json", out / "checkpoint.pt"
    if summary_path.exists():
        return read_json(summary_path, fix=f"delete {out} to run it again")
    config_changes: list[dict[str, Any]] = []
    state = None
    if ckpt_path.exists():  # read (and checked) before anything is written
        state = torch_load(ckpt_path, fix=f"delete it (or {out}) to start the run over")
        if config is not None:
            fixed = RESUME_FIXED + tuple(f"params.{k}" for k in method.resume_fixed)
            diff = check_resume(state.get("config"), config, ckpt_path, allow_config_change, fixed=fixed)
            config_changes = list(state.get("config_changes", []))
            if diff:
                config_changes.append({"iteration": state["counters"]["iterations"], "changed": diff})
    out.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(out / "progress.csv")
    c = ctx.counters
    key_prefix = f"methods.{meta.get('method', '')}."
    if state is not None:
        if "policy_updates" not in state["counters"]:
            raise ConfigError(f"{ckpt_path} was written by an older dtrl that counted one mixed 'grad_updates'; "
                              f"it cannot be resumed with policy/critic update counts. Delete {out} to rerun")
        method.load_state_dict(state["method"])
        for k in CHECKPOINT_COUNTERS:
            setattr(c, k, state["counters"][k] if k in state["counters"] else _COUNTER_DEFAULTS[k])
        _set_rng_state(state["rng"], ctx.np_rng)
        logger.truncate_after(c.iterations)
        next_eval = state["next_eval"]
        print(f"[dtrl] resumed {out} at iteration {c.iterations}, {c.env_steps} env steps", file=sys.stderr)
    else:
        logger.rows = []
        next_eval = 0

    def evaluate(episodes: int, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        out = method.evaluate(episodes, eval_seed(ctx.eval_cfg, ctx.seed, index))
        goal = None
        if isinstance(out, Evaluation):
            goal = None if out.goal_steps is None else np.asarray(out.goal_steps, dtype=np.int64)
            out = out.returns
        returns = np.asarray(out, dtype=np.float64)
        check_values(returns, "evaluation returns", "", "the evaluation")  # never a NaN score
        return returns, goal

    saved = {"iteration": c.iterations if state is not None else None}  # of the checkpoint on disk

    def save_checkpoint() -> None:
        saved["iteration"] = c.iterations
        atomic_torch_save(ckpt_path, {
            "method": method.state_dict(),
            "counters": {k: getattr(c, k) for k in CHECKPOINT_COUNTERS},
            "rng": _rng_state(ctx.np_rng),
            "next_eval": next_eval,
            "config": config,
            "config_changes": config_changes,
        })

    def record(summary: dict[str, Any]) -> None:
        summary.update(config=config, code_version=code_version())
        if config_changes:
            summary["config_changes"] = config_changes
        write_summary(summary_path, summary)

    def diverged(e: DivergenceError, iteration: int) -> DivergenceError:
        if bar is not None:
            bar.close()
        e.key = e.key or method.fault_key  # a check of the policy's outputs leaves the key to the method
        kept = (f"its last checkpoint (iteration {saved['iteration']}, all finite) is kept"
                if saved["iteration"] is not None else "no checkpoint had been written")
        e.qualify(str(meta.get("method", type(method).__name__)), iteration, key_prefix, kept)
        record(diverged_summary(meta, e.record(), c, online.env_steps))
        return e

    bar = None
    try:  # a diverged starting point (a NaN pretrained DT) is caught before anything runs
        check_parameters(method, "pretrain.lr" if method.needs_pretrained_dt and state is None
                         else method.fault_key, "the starting model" if state is None else f"checkpoint {ckpt_path}")
    except DivergenceError as e:
        raise diverged(e, c.iterations) from None

    rate = Throughput()
    rate.steps, rate.updates = c.env_steps, c.policy_updates
    t_start = time.perf_counter() - c.wall_time
    cpu = CpuClock(c.cpu_time)
    bar = _progress(online, c.env_steps)
    last_norm = float("nan")
    current = c.iterations  # the iteration a DivergenceError belongs to
    try:
        while not method.finished() and c.env_steps < online.env_steps and \
                (online.max_iterations == 0 or c.iterations < online.max_iterations):
            steps_before = c.env_steps
            current = c.iterations + 1
            diag = method.train_iteration()
            check_parameters(method, method.fault_key, "the parameters after the update")
            if c.env_steps == steps_before and c.policy_updates == 0 and c.critic_updates == 0:
                raise RuntimeError(f"{type(method).__name__}.train_iteration took no env step and no update; "
                                   "the run would never end")
            clash = sorted(set(diag) & set(CORE_COLUMNS))
            if clash:
                raise RuntimeError(f"{type(method).__name__}.train_iteration returned diagnostics named like the "
                                   f"harness's columns {clash}; rename them (e.g. iter_<name>)")
            c.iterations += 1
            c.wall_time, c.cpu_time = time.perf_counter() - t_start, cpu()
            sps, ups = rate.rates(c.env_steps, c.policy_updates)
            row = {"iteration": c.iterations, "env_steps": c.env_steps, "env_steps_eval": c.env_steps_eval,
                   **update_counts(c), "wall_time": round(c.wall_time, 3), "cpu_s": round(c.cpu_time, 3),
                   "env_steps_per_s": sps, "updates_per_s": ups, **{f"steps_{k}": v for k, v in c.extra.items()},
                   **diag}
            if c.env_steps >= next_eval:
                r, goal = evaluate(ctx.eval_cfg.episodes, c.iterations)
                last_norm = float(np.mean(ctx.task.normalize(r)))
                row.update(eval_return=float(r.mean()), eval_norm_return=last_norm,
                           **_success(ctx.task, r, goal, "eval_success"),
                           eval_rtg=method.eval_rtg())
                while next_eval <= c.env_steps:
                    next_eval += online.eval_every_env_steps
            logger.log(row)
            if bar is not None:
                bar.update(c.env_steps - bar.n)
                bar.set_postfix(sps=f"{sps:.0f}", score=f"{last_norm:.1f}")
            if c.iterations % online.checkpoint_every_iterations == 0:
                save_checkpoint()
        if bar is not None:
            bar.close()
            bar = None
        current = c.iterations  # the final evaluation belongs to the last iteration
        r, goal = evaluate(ctx.eval_cfg.final_episodes, FINAL_EVAL_INDEX)
        norm = ctx.task.normalize(r)
        c.wall_time, c.cpu_time = time.perf_counter() - t_start, cpu()
        logger.log({"iteration": c.iterations, "env_steps": c.env_steps, "env_steps_eval": c.env_steps_eval,
                    **update_counts(c), "wall_time": round(c.wall_time, 3), "cpu_s": round(c.cpu_time, 3),
                    "eval_return": float(r.mean()), "eval_norm_return": float(np.mean(norm)), "final": 1,
                    **_success(ctx.task, r, goal, "eval_success"), "eval_rtg": method.eval_rtg()})
    except DivergenceError as e:
        raise diverged(e, current) from None
    summary = {
        **meta,
        "status": "completed",
        "final_return": float(r.mean()),
        "final_norm_return": float(np.mean(norm)),
        "final_norm_return_std": float(np.std(norm)),
        "final_returns": r.tolist(),
        **_success(ctx.task, r, goal, "final_success_rate"),
        "eval_episodes": int(len(r)),
        "env_steps": c.env_steps,
        "env_steps_eval": c.env_steps_eval,
        **update_counts(c),
        "wall_time": c.wall_time,
        "cpu_s": c.cpu_time,
        "iterations": c.iterations,
        "step_counts": dict(c.extra),
        "budget_env_steps": online.env_steps,
        "eval_rtg": method.eval_rtg(),  # the RTG every evaluation of this run conditioned on (null: none)
        "eval_rtg_rule": method.eval_rtg_rule(),
    }
    record(summary)
    return summary


def diverged_summary(meta: dict[str, Any], divergence: dict[str, Any], c: Counters, budget: int) -> dict[str, Any]:
    """The summary of a diverged run (``status: diverged``, no score): the run contract's keys with null scores."""
    return {**meta, "status": "diverged", "divergence": divergence, "final_return": None,
            "final_norm_return": None, "final_norm_return_std": None, "final_returns": [], "eval_episodes": 0,
            "env_steps": c.env_steps, "env_steps_eval": c.env_steps_eval, **update_counts(c),
            "wall_time": c.wall_time, "cpu_s": c.cpu_time, "iterations": c.iterations, "step_counts": dict(c.extra),
            "budget_env_steps": budget}


def _success(task: Task, returns: np.ndarray, goal_steps: np.ndarray | None, key: str) -> dict[str, float]:
    """{key: fraction of successful episodes} for tasks with a success rule (AntMaze, Adroit), else {}."""
    from dtrl.envs.robotics import success_rate

    rate = success_rate(task, returns, goal_steps)
    return {} if rate is None else {key: rate}


def update_counts(c: Counters) -> dict[str, int]:
    """The update columns of progress.csv and summary.json (see the module docstring)."""
    return {"policy_updates": c.policy_updates, "critic_updates": c.critic_updates, "grad_updates": c.grad_updates}


def _progress(online: OnlineConfig, start: int):
    if not online.progress or online.env_steps <= 0:
        return None
    from tqdm import tqdm

    return tqdm(total=online.env_steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
                mininterval=2.0, desc="online")


def build_context(task: Task, seed: int, device: torch.device, dataset: TrajectoryDataset | None,
                  pretrained_path: Path | None, out_dir: Path, eval_cfg: EvalConfig) -> RunContext:
    from dtrl.envs.make import env_dims

    obs_dim, act_dim = env_dims(task)
    return RunContext(task=task, seed=seed, device=device, dataset=dataset, pretrained_path=pretrained_path,
                      out_dir=Path(out_dir), eval_cfg=eval_cfg, counters=Counters(), obs_dim=obs_dim,
                      act_dim=act_dim, np_rng=seed_everything(seed))


def config_snapshot(obj: Any) -> Any:
    return to_dict(obj)
