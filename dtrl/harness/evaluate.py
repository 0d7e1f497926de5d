"""Evaluation: N episodes at the evaluation RTG with the mean action, batched over envs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dtrl.models.dt import DecisionTransformer
from dtrl.harness.rollout import RolloutEngine, collect_episodes
from dtrl.tasks import Task, get_task


def evaluate_dt(model: DecisionTransformer, task: Task, episodes: int, seed: int = 0, rtg: float | None = None,
                context_len: int | None = None, n_envs: int = 0, device: torch.device | str | None = None,
                engine: RolloutEngine | None = None) -> np.ndarray:
    """Raw returns of ``episodes`` deterministic (mean-action) episodes; env seeds seed, seed+1, ...

    ``context_len`` defaults to the context the backbone acts with (the DT: model.eval_context_len, ODT's 5). Pass an ``engine`` to reuse envs
    across calls (online methods evaluate often).
    """
    return evaluate_dt_episodes(model, task, episodes, seed, rtg, context_len, n_envs, device, engine)[0]


def evaluate_dt_episodes(model: DecisionTransformer, task: Task, episodes: int, seed: int = 0,
                         rtg: float | None = None, context_len: int | None = None, n_envs: int = 0,
                         device: torch.device | str | None = None,
                         engine: RolloutEngine | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(returns, lengths, goal steps) of the evaluation episodes; see :func:`evaluate_dt`. Goal steps:
    per episode, the steps whose ``info["success"]`` was true (what Adroit's success rate counts)."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    if engine is None:
        engine = RolloutEngine(task, n_envs or episodes, model.cfg.context_len, device, seed=seed)
    trajs = collect_episodes(engine, model, episodes, task.eval_rtg if rtg is None else rtg,
                             seeds=[seed + k for k in range(episodes)], sample=False,
                             context_len=model.act_context_len if context_len is None else context_len)
    return (np.array([t.total_return for t in trajs], dtype=np.float64),
            np.array([len(t) for t in trajs], dtype=np.int64),
            np.array([int(t.goal.sum()) for t in trajs], dtype=np.int64))


def evaluate_checkpoint(exp, checkpoint: Path, task_name: str, episodes: int | None = None, seed: int = 0,
                        rtg: float | None = None) -> tuple[np.ndarray, int]:
    """Raw returns of the DT in ``checkpoint`` under the final evaluation of run seed ``seed``: the env
    seeds, episode count (``eval.final_episodes``), RTG and context the online harness scores a run
    with. A run's last checkpoint.pt (or, for the offline DT, the pretrained model.pt) therefore
    returns exactly the ``final_returns`` of its summary.json when given the run's seed and config.
    Returns (returns, first env seed)."""
    from dtrl.models.checkpoint import check_dims, dt_from_payload
    from dtrl.config.device import resolve_device
    from dtrl.envs.make import env_dims
    from dtrl.util.io import InputError, torch_load
    from dtrl.harness.online import FINAL_EVAL_INDEX, eval_seed

    task = get_task(task_name)
    exp = exp.for_task(task_name)  # its eval overrides
    device = resolve_device(exp.device)
    ckpt = torch_load(checkpoint, fix="pass an intact pretrain model.pt or a DT method's run checkpoint.pt")
    payload = (ckpt.get("dt") or (ckpt.get("method") or {}).get("dt")) if isinstance(ckpt, dict) else None
    if payload is None:
        raise InputError(f"{checkpoint} holds no Decision Transformer ('dt' entry); pass a pretrain model.pt "
                         "or a DT method's run checkpoint.pt")
    try:
        model = dt_from_payload(payload, device)
    except (InputError, KeyError, TypeError) as e:
        raise InputError(f"{checkpoint}: not a usable DT ({e}); pass an intact model.pt or checkpoint.pt") from None
    check_dims(model, task, *env_dims(task), checkpoint)
    first = eval_seed(exp.eval, seed, FINAL_EVAL_INDEX)
    returns = evaluate_dt(model, task, episodes or exp.eval.final_episodes, seed=first,
                          rtg=rtg if rtg is not None else exp.eval.rtg, n_envs=exp.eval.n_envs, device=device)
    return returns, first


def cmd_evaluate(exp, checkpoint: Path, task_name: str, episodes: int | None, seed: int, rtg: float | None) -> int:
    import math

    from dtrl.config import ConfigError

    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes is {episodes}; give at least 1 episode (default: eval.final_episodes)")
    if rtg is not None and not math.isfinite(rtg):
        raise ConfigError(f"--rtg is {rtg}; give a finite return-to-go target (default: eval.rtg, else the task's)")
    returns, first = evaluate_checkpoint(exp, checkpoint, task_name, episodes, seed, rtg)
    norm = get_task(task_name).normalize(returns)
    n = len(returns)
    print(f"{task_name}: return {returns.mean():.1f} +- {returns.std():.1f}  normalised {norm.mean():.2f} "
          f"+- {norm.std():.2f}  ({n} episodes, env seeds {first}..{first + n - 1}: the final evaluation of "
          f"run seed {seed})")
    return 0
