"""Where a task's dataset comes from: a configured D4RL file or Minari id, else the generated file.

``load_task_dataset`` is what pretraining and the online methods call; it always returns a
validated :class:`TrajectoryDataset` whose sizes fit the task's environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtrl.data.d4rl_hdf5 import read_d4rl
from dtrl.data.generate import data_root, generated_path
from dtrl.data.trajectories import DataError, TrajectoryDataset

__all__ = ["load_task_dataset", "dataset_summary_path", "generated_path", "data_root", "describe_source"]


def dataset_summary_path(exp: Any, task: Any) -> Path:
    """``<exp.results>/data/<task>.json``: the summary `dtrl data TASK` writes."""
    return Path(exp.results) / "data" / f"{task.name}.json"


def describe_source(exp: Any, task: Any) -> str:
    src = exp.data.sources.get(task.name)
    if src is not None and src.d4rl:
        return f"d4rl file {src.d4rl}"
    if src is not None and src.minari:
        return f"minari dataset {src.minari}"
    return f"generated file {generated_path(exp, task)}"


def load_task_dataset(exp: Any, task: Any, reference_keeps_tail: bool = False) -> TrajectoryDataset:
    """The task's dataset, validated against its environment's observation and action sizes.

    ``reference_keeps_tail``: the calling method's reference loader keeps a D4RL file's unflagged
    trailing piece (IQL); ``data.unflagged_tail`` other than 'reference' overrides it.
    """
    src = exp.data.sources.get(task.name)
    mode = exp.data.unflagged_tail
    keep_tail = reference_keeps_tail if mode == "reference" else mode == "keep"
    if src is not None and src.d4rl:
        return read_d4rl(src.d4rl, task, keep_unflagged_tail=keep_tail)
    if src is not None and src.minari:
        from dtrl.data.minari_io import read_minari

        return read_minari(src.minari, download=src.minari_download, task=task)
    path = generated_path(exp, task)
    if not task.family.generatable:
        from dtrl.envs.robotics import dataset_hint

        raise DataError(dataset_hint(task))
    if not path.exists():
        raise DataError(f"{task.name}: no dataset at {path}. Run `dtrl data {task.name}` (same --config/--set) to "
                        f"generate it, or set data.sources.{task.name}.d4rl or .minari")
    return read_d4rl(path, task, keep_unflagged_tail=keep_tail)
