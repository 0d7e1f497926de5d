"""D4RL's HDF5 dataset format: read any D4RL file, write dtrl's generated sets in the same format.

Layout (flat arrays over all transitions, episodes one after another)::

    observations (N, obs_dim)  actions (N, act_dim)  rewards (N,)  terminals (N,)  timeouts (N,)
    next_observations (N, obs_dim)          optional
    infos/qpos (N, nq)  infos/qvel (N, nv)  optional, the simulator state before each step
    infos/sim_state (N, S)                  dtrl's own: dtrl.envs.make.get_sim_state before each step

Episodes end where ``terminals | timeouts``. Steps after the last such flag (an unflagged trailing
piece, an episode the file cuts) are left out by default, as D4RL's ``sequence_dataset`` does
(Farama-Foundation/D4RL @89141a6, ``d4rl/__init__.py:180-191``: a trajectory is yielded only at a
terminal or timeout) and ODT's data script (online-dt ``data/download_d4rl_gym_datasets.py:32-53``;
RL_as_Vitamin @de8be0a has the same loop at lines 32-54, and for Adroit in
``download_d4rl_advanced.py:34-57``). ``keep_unflagged_tail=True`` (``data.unflagged_tail``) keeps
it as one more trajectory, as IQL's loader does (implicit_q_learning @09d7002 ``dataset_utils.py:92``:
the file's last step always ends a trajectory). What was left out is listed in the dataset's
``metadata["conversions"]``, which `dtrl data` copies into the summary. dtrl's writer flags every
piece it writes, so its own files lose nothing. AntMaze files (D4RL's antmaze-*-v2) also hold
``infos/goal`` (N, 2); read for an AntMaze task it is appended to the 29-d observation, the layout
of dtrl's AntMaze env (:func:`dtrl.envs.robotics.flatten_goal_obs`), and a file without it is an error. dtrl writes its metadata as a JSON string in the root
attribute ``dtrl_metadata``; files from D4RL itself have none and read back with ``{}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dtrl.data.trajectories import DataError, TrajectoryDataset, split_episodes
from dtrl.util.io import _json_default

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
# HDF5 path in the file -> name in split_episodes' ``extra`` / Trajectory field.
OPTIONAL_KEYS = {
    "next_observations": "next_observations",
    "infos/qpos": "qpos",
    "infos/qvel": "qvel",
    "infos/sim_state": "sim_states",
}
METADATA_ATTR = "dtrl_metadata"


def read_d4rl(path: str | Path, task: Any = None, keep_unflagged_tail: bool = False) -> TrajectoryDataset:
    """Read a D4RL HDF5 file into trajectories; with ``task``, also check it fits the task's env.

    Every problem (missing file or key, unequal lengths, NaN, wrong observation/action size for
    the task) raises one :class:`DataError` that names the file. The steps after the last terminal or
    timeout are dropped unless ``keep_unflagged_tail`` (module notes).
    """
    import h5py

    path = Path(path)
    src = str(path)
    if not path.exists():
        raise DataError(f"{src}: the dataset file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{src}: not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise DataError(f"{src}: missing key(s) {', '.join(missing)}; a D4RL file needs "
                            f"{', '.join(REQUIRED_KEYS)} (found: {', '.join(sorted(_all_keys(f))) or 'nothing'})")
        arrays = {k: _read_numeric(f, k, src) for k in REQUIRED_KEYS}
        extra = {name: _read_numeric(f, key, src) for key, name in OPTIONAL_KEYS.items() if key in f}
        metadata = _read_metadata(f, src)
        goal = _read_goal(f, src, task)
    if goal is not None and arrays["observations"].ndim == 2:
        if goal.ndim != 2 or goal.shape != (arrays["observations"].shape[0], 2):
            raise DataError(f"{src}: 'infos/goal' has shape {goal.shape}, expected ({arrays['observations'].shape[0]}, 2)")
        arrays["observations"] = np.concatenate([arrays["observations"], goal], axis=1)
        if "next_observations" in extra:
            extra["next_observations"] = np.concatenate([extra["next_observations"], goal], axis=1)

    for name in ("observations", "actions", *extra):
        arr = arrays.get(name, extra.get(name))
        if arr.ndim != 2:
            raise DataError(f"{src}: '{name}' must be 2-D (N, dim) but has shape {arr.shape}")
    for name in ("rewards", "terminals", "timeouts"):
        arr = arrays[name]
        if arr.ndim == 2 and arr.shape[1] == 1:  # some writers store (N, 1) columns
            arrays[name] = arr[:, 0]
        elif arr.ndim != 1:
            raise DataError(f"{src}: '{name}' must be 1-D (N,) but has shape {arr.shape}")
    if arrays["rewards"].shape[0] == 0:
        raise DataError(f"{src}: the file holds no transitions")

    ends = (arrays["terminals"] != 0) | (arrays["timeouts"] != 0)
    trajs = split_episodes(arrays["observations"], arrays["actions"], arrays["rewards"],
                           arrays["terminals"] != 0, arrays["timeouts"] != 0, source=src, extra=extra,
                           keep_tail=keep_unflagged_tail)
    tail = int(len(ends) - (np.flatnonzero(ends)[-1] + 1 if ends.any() else 0))
    if tail and not keep_unflagged_tail:
        if not trajs:
            raise DataError(f"{src}: no step is flagged terminal or timeout, so the whole file is one unflagged "
                            "trailing piece, which D4RL's sequence_dataset drops; set data.unflagged_tail: keep "
                            "to read it as one trajectory")
        metadata.setdefault("conversions", []).append(
            f"dropped the unflagged trailing piece: the last {tail} transitions follow the last terminal/timeout "
            "(as D4RL's sequence_dataset; data.unflagged_tail: keep keeps them)")
    dataset = TrajectoryDataset(trajs, metadata=metadata, source=src)
    obs_dim = act_dim = None
    if task is not None:
        from dtrl.envs.make import env_dims

        obs_dim, act_dim = env_dims(task)
    return dataset.validate(obs_dim, act_dim)


def _read_goal(f, src: str, task: Any) -> np.ndarray | None:
    from dtrl.envs.robotics import ANTMAZE

    if task is None or task.family.suite != ANTMAZE:
        return None
    if "infos/goal" not in f:
        raise DataError(f"{src}: an AntMaze file needs 'infos/goal' (N, 2), the goal of each step, as D4RL's "
                        f"antmaze files have; task {task.name} observes it")
    return _read_numeric(f, "infos/goal", src)


def write_d4rl(path: str | Path, dataset: TrajectoryDataset) -> Path:
    """Write ``dataset`` as a D4RL HDF5 file, atomically (a reader sees the old file or the new one).

    Optional arrays (next_observations, qpos, qvel, sim_states) are written when every trajectory
    has them. A trajectory that ends with neither flag (an episode piece, e.g. cut by a data budget)
    gets ``timeouts`` set on its last step, because D4RL readers split episodes only at
    terminals | timeouts: one followed by another would be glued to it, and the last one would be
    dropped as an unflagged trailing piece.
    """
    import h5py

    from dtrl.util.io import _atomic  # tmp file in the same directory + os.replace

    trajs = list(dataset.trajectories)
    if not trajs:
        raise DataError(f"{path}: refusing to write a dataset with no trajectories")

    def cat(name: str, dtype) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(t, name), dtype=dtype) for t in trajs], axis=0)

    timeouts = []
    for t in trajs:
        tout = np.asarray(t.timeouts, dtype=bool).copy()
        if not (t.terminals[-1] or tout[-1]):
            tout[-1] = True
        timeouts.append(tout)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=cat("observations", np.float32))
            f.create_dataset("actions", data=cat("actions", np.float32))
            f.create_dataset("rewards", data=cat("rewards", np.float32))
            f.create_dataset("terminals", data=cat("terminals", bool))
            f.create_dataset("timeouts", data=np.concatenate(timeouts))
            for key, name in OPTIONAL_KEYS.items():
                if all(getattr(t, name) is not None for t in trajs):
                    dtype = np.float32 if name == "next_observations" else np.float64
                    f.create_dataset(key, data=cat(name, dtype))
            f.attrs[METADATA_ATTR] = json.dumps(dataset.metadata, default=_json_default, sort_keys=True)

    return _atomic(path, write)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the dtrl metadata of a file (cheap: no arrays are read)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _read_metadata(f, str(path))
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None


def _read_metadata(f, src: str) -> dict[str, Any]:
    raw = f.attrs.get(METADATA_ATTR)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{src}: root attribute '{METADATA_ATTR}' is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{src}: root attribute '{METADATA_ATTR}' must hold a JSON object")
    return meta


def _read_numeric(f, key: str, src: str) -> np.ndarray:
    import h5py

    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise DataError(f"{src}: '{key}' is a group, expected an array")
    arr = node[()]
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(f"{src}: '{key}' must be a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    return arr


def _all_keys(f) -> list[str]:
    import h5py

    keys: list[str] = []
    f.visititems(lambda name, node: keys.append(name) if isinstance(node, h5py.Dataset) else None)
    return keys

