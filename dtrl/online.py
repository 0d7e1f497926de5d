"""The online harness every method runs under: budgets, evaluation, logging, checkpoints, resume.

A method is a class with a typed ``Config`` dataclass that implements :class:`OnlineMethod`. The
harness owns the loop, so every method counts env steps and gradient updates the same way, writes
the same ``progress.csv`` and ``summary.json``, and resumes from ``checkpoint.pt`` after a kill.

Run directory layout (``out_dir``)::

    progress.csv    one row per iteration (dtrl.logger.CORE_COLUMNS first, then diagnostics)
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

from dtrl.config import to_dict
from dtrl.data.trajectories import TrajectoryDataset
from dtrl.device import resolve_device  # noqa: F401 - re-exported: dtrl.online.resolve_device
from dtrl.io import atomic_torch_save, read_json, torch_load
from dtrl.logger import RunLogger, Throughput, write_summary
from dtrl.online_config import EvalConfig, OnlineConfig
from dtrl.tasks import Task


@dataclass
class Counters:
    env_steps: int = 0  # training env steps (exploration + scoring); the budget counts these
    env_steps_eval: int = 0  # evaluation env steps, reported apart
    grad_updates: int = 0
    iterations: int = 0
    wall_time: float = 0.0  # seconds spent in this run, summed over resumes
    extra: dict[str, int] = field(default_factory=dict)  # method-specific step counts, e.g. sampled vs scoring

    def add(self, name: str, n: int) -> None:
        self.extra[name] = self.extra.get(name, 0) + int(n)


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

    def __init__(self, cfg: Any, ctx: RunContext):
        self.cfg, self.ctx = cfg, ctx

    def train_iteration(self) -> dict[str, float]:
        """One online iteration: collect env steps, make updates, advance ``ctx.counters``; return diagnostics."""
        raise NotImplementedError

    def evaluate(self, episodes: int, seed: int) -> np.ndarray:
        """Raw returns of ``episodes`` evaluation episodes of the current policy (deterministic actions)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def finished(self) -> bool:
        """True if the method has nothing more to do regardless of budget (the offline DT)."""
        return False


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


def run_online(method: OnlineMethod, ctx: RunContext, online: OnlineConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """Drive ``method`` to its budget; resume from ``out_dir/checkpoint.pt`` if present.

    ``meta`` holds method/algo/task/seed names for the summary. Returns the summary dict.
    """
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    summary_path, ckpt_path = out / "summary.json", out / "checkpoint.pt"
    if summary_path.exists():
        return read_json(summary_path)
    logger = RunLogger(out / "progress.csv")
    c = ctx.counters
    if ckpt_path.exists():
        state = torch_load(ckpt_path)
        method.load_state_dict(state["method"])
        for k, v in state["counters"].items():
            setattr(c, k, v)
        _set_rng_state(state["rng"], ctx.np_rng)
        logger.truncate_after(c.iterations)
        next_eval = state["next_eval"]
        print(f"[dtrl] resumed {out} at iteration {c.iterations}, {c.env_steps} env steps", file=sys.stderr)
    else:
        logger.rows = []
        next_eval = 0

    def evaluate(episodes: int, index: int) -> np.ndarray:
        returns = method.evaluate(episodes, eval_seed(ctx.eval_cfg, ctx.seed, index))
        return np.asarray(returns, dtype=np.float64)

    def save_checkpoint() -> None:
        atomic_torch_save(ckpt_path, {
            "method": method.state_dict(),
            "counters": {k: getattr(c, k) for k in ("env_steps", "env_steps_eval", "grad_updates", "iterations",
                                                      "wall_time", "extra")},
            "rng": _rng_state(ctx.np_rng),
            "next_eval": next_eval,
        })

    rate = Throughput()
    rate.steps, rate.updates = c.env_steps, c.grad_updates
    t_start = time.perf_counter() - c.wall_time
    bar = _progress(online, c.env_steps)
    last_norm = float("nan")
    while not method.finished() and c.env_steps < online.env_steps and \
            (online.max_iterations == 0 or c.iterations < online.max_iterations):
        steps_before = c.env_steps
        diag = method.train_iteration()
        if c.env_steps == steps_before and c.grad_updates == 0:
            raise RuntimeError(f"{type(method).__name__}.train_iteration took no env step and no update; "
                               "the run would never end")
        c.iterations += 1
        c.wall_time = time.perf_counter() - t_start
        sps, ups = rate.rates(c.env_steps, c.grad_updates)
        row = {"iteration": c.iterations, "env_steps": c.env_steps, "env_steps_eval": c.env_steps_eval,
               "grad_updates": c.grad_updates, "wall_time": round(c.wall_time, 3),
               "env_steps_per_s": sps, "updates_per_s": ups, **{f"steps_{k}": v for k, v in c.extra.items()},
               **diag}
        if c.env_steps >= next_eval:
            r = evaluate(ctx.eval_cfg.episodes, c.iterations)
            last_norm = float(np.mean(ctx.task.normalize(r)))
            row.update(eval_return=float(r.mean()), eval_norm_return=last_norm)
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

    r = evaluate(ctx.eval_cfg.final_episodes, FINAL_EVAL_INDEX)
    norm = ctx.task.normalize(r)
    c.wall_time = time.perf_counter() - t_start
    logger.log({"iteration": c.iterations, "env_steps": c.env_steps, "env_steps_eval": c.env_steps_eval,
                "grad_updates": c.grad_updates, "wall_time": round(c.wall_time, 3),
                "eval_return": float(r.mean()), "eval_norm_return": float(np.mean(norm)), "final": 1})
    summary = {
        **meta,
        "final_return": float(r.mean()),
        "final_norm_return": float(np.mean(norm)),
        "final_norm_return_std": float(np.std(norm)),
        "final_returns": r.tolist(),
        "eval_episodes": int(len(r)),
        "env_steps": c.env_steps,
        "env_steps_eval": c.env_steps_eval,
        "grad_updates": c.grad_updates,
        "wall_time": c.wall_time,
        "iterations": c.iterations,
        "step_counts": dict(c.extra),
        "budget_env_steps": online.env_steps,
    }
    write_summary(summary_path, summary)
    return summary


def _progress(online: OnlineConfig, start: int):
    if not online.progress or online.env_steps <= 0:
        return None
    from tqdm import tqdm

    return tqdm(total=online.env_steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
                mininterval=2.0, desc="online")


def build_context(task: Task, seed: int, device: torch.device, dataset: TrajectoryDataset | None,
                  pretrained_path: Path | None, out_dir: Path, eval_cfg: EvalConfig) -> RunContext:
    from dtrl.envs import env_dims

    obs_dim, act_dim = env_dims(task)
    return RunContext(task=task, seed=seed, device=device, dataset=dataset, pretrained_path=pretrained_path,
                      out_dir=Path(out_dir), eval_cfg=eval_cfg, counters=Counters(), obs_dim=obs_dim,
                      act_dim=act_dim, np_rng=seed_everything(seed))


def config_snapshot(obj: Any) -> Any:
    return to_dict(obj)
