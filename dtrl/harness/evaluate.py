"""Evaluation: N episodes at the evaluation RTG with the mean action, batched over envs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class CheckpointScore:
    returns: np.ndarray  # raw returns of the episodes
    first_env_seed: int  # episodes used env seeds first_env_seed, first_env_seed + 1, ...
    seed: int  # the run seed whose final evaluation this is
    seed_from: str  # where the run seed came from: "--seed", "the checkpoint" or "default"
    lengths: np.ndarray  # steps of each episode (shorter than the time limit: it ended at a terminal)


def checkpoint_seed(ckpt: Any) -> int | None:
    """The run seed a checkpoint records: a pretrain model.pt's ``seed``, a run checkpoint's config."""
    if not isinstance(ckpt, dict):
        return None
    seed = ckpt.get("seed", (ckpt.get("config") or {}).get("seed"))
    return seed if isinstance(seed, int) else None


def evaluate_checkpoint(exp, checkpoint: Path, task_name: str, episodes: int | None = None, seed: int | None = None,
                        rtg: float | None = None) -> CheckpointScore:
    """Score the policy in ``checkpoint`` under the final evaluation of run seed ``seed`` (None: the seed
    the checkpoint records, else 0): the env seeds, episode count (``eval.final_episodes``), RTG and
    context the online harness scores a run with. A run's last checkpoint.pt (or, for the offline DT,
    the pretrained model.pt) therefore returns exactly the ``final_returns`` of its summary.json when
    given the run's config. A DT (a pretrain model.pt, a DT method's checkpoint.pt) is evaluated with the
    mean action at the RTG; another method's checkpoint.pt (IQL) with the policy its class rebuilds
    from the checkpoint (:meth:`dtrl.harness.online.OnlineMethod.checkpoint_policy`)."""
    from dtrl.config.device import resolve_device
    from dtrl.util.io import InputError, torch_load
    from dtrl.harness.online import FINAL_EVAL_INDEX, eval_seed

    task = get_task(task_name)
    exp = exp.for_task(task_name)  # its eval overrides
    device = resolve_device(exp.device)
    ckpt = torch_load(checkpoint, fix="pass an intact pretrain model.pt or a run's checkpoint.pt")
    recorded = checkpoint_seed(ckpt)
    seed, seed_from = ((seed, "--seed") if seed is not None else (recorded, "the checkpoint") if recorded is not None
                       else (0, "default"))
    first = eval_seed(exp.eval, seed, FINAL_EVAL_INDEX)
    episodes = episodes or exp.eval.final_episodes
    payload = (ckpt.get("dt") or (ckpt.get("method") or {}).get("dt")) if isinstance(ckpt, dict) else None
    if payload is not None:
        model = _dt(payload, checkpoint, task, device)
        returns, lengths, _ = evaluate_dt_episodes(model, task, episodes, seed=first,
                                                   rtg=rtg if rtg is not None else exp.eval.rtg,
                                                   n_envs=exp.eval.n_envs, device=device)
    else:
        if rtg is not None:
            raise InputError(f"{checkpoint} holds no Decision Transformer, so --rtg does not apply")
        from dtrl.envs.vec import evaluate_policy

        returns, lengths, _ = evaluate_policy(_method_policy(ckpt, checkpoint, task, device), task, episodes,
                                              seed=first, n_envs=exp.eval.n_envs)
    return CheckpointScore(returns, first, seed, seed_from, lengths)


def _dt(payload: dict, checkpoint: Path, task: Task, device: torch.device) -> DecisionTransformer:
    from dtrl.models.checkpoint import check_dims, dt_from_payload
    from dtrl.envs.make import env_dims
    from dtrl.util.io import InputError

    try:
        model = dt_from_payload(payload, device)
    except (InputError, KeyError, TypeError) as e:
        raise InputError(f"{checkpoint}: not a usable DT ({e}); pass an intact model.pt or checkpoint.pt") from None
    check_dims(model, task, *env_dims(task), checkpoint)
    return model


def _method_policy(ckpt: Any, checkpoint: Path, task: Task, device: torch.device):
    """The evaluation policy of a run checkpoint without a DT, rebuilt by the class of the algorithm and
    with the parameters its config records."""
    from dtrl.config import ConfigError, from_dict
    from dtrl.envs.make import env_dims
    from dtrl.util.io import InputError
    from dtrl.config.registry import get_algorithm

    run = (ckpt.get("config") or {}) if isinstance(ckpt, dict) else {}
    if not isinstance(ckpt, dict) or "method" not in ckpt or not run.get("algo"):
        raise InputError(f"{checkpoint} is neither a pretrain model.pt nor a run's checkpoint.pt (no 'dt' entry, no "
                         "method state and algorithm); pass one of those")
    try:
        cls = get_algorithm(run["algo"])
        params = from_dict(cls.Config, run.get("params") or {}, f"methods.{run.get('method', run['algo'])}")
    except (ConfigError, KeyError) as e:
        raise InputError(f"{checkpoint}: its recorded method does not load ({e})") from None
    try:
        policy = cls.checkpoint_policy(ckpt["method"], params, *env_dims(task), device)
    except (KeyError, RuntimeError) as e:  # another task's networks, or a state the class does not know
        raise InputError(f"{checkpoint}: its {run['algo']} policy does not fit {task.name} ({' '.join(str(e).split())[:200]})") from None
    if policy is None:
        raise InputError(f"{checkpoint}: a {run['algo']} checkpoint holds no policy `dtrl evaluate` can rebuild")
    return policy


def cmd_evaluate(exp, checkpoint: Path, task_name: str, episodes: int | None, seed: int | None,
                 rtg: float | None) -> int:
    import math

    from dtrl.config import ConfigError

    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes is {episodes}; give at least 1 episode (default: eval.final_episodes)")
    if rtg is not None and not math.isfinite(rtg):
        raise ConfigError(f"--rtg is {rtg}; give a finite return-to-go target (default: eval.rtg, else the task's)")
    res = evaluate_checkpoint(exp, checkpoint, task_name, episodes, seed, rtg)
    returns, first = res.returns, res.first_env_seed
    why = {"--seed": "as --seed says", "the checkpoint": "recorded in the checkpoint; --seed N for another",
           "default": "the checkpoint records none; --seed N for another"}[res.seed_from]
    n = len(returns)
    print(f"run seed {res.seed} ({why}): its final evaluation, {n} episodes on env seeds {first}..{first + n - 1}")
    norm = get_task(task_name).normalize(returns)
    print(f"{task_name}: return {returns.mean():.1f} +- {returns.std():.1f}  normalised {norm.mean():.2f} "
          f"+- {norm.std():.2f}  ({n} episodes)")
    # How long the policy stays up and how fast it earns: a faster gait that falls sooner can score
    # below a slow one that lasts (docs/grpo-tuning.md), which the return alone does not show.
    lengths = res.lengths
    print(f"  episode length {lengths.mean():.1f} +- {lengths.std():.1f} (min {lengths.min()}, max {lengths.max()}; "
          f"time limit {get_task(task_name).max_episode_steps}); return per step {returns.sum() / lengths.sum():.3f}")
    return 0
