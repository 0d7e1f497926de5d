"""D4RL HDF5 and Minari readers: exact on-disk formats written here, every bad input one DataError."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from dtrl.data.d4rl_hdf5 import read_d4rl, read_metadata, write_d4rl
from dtrl.data.trajectories import DataError, Trajectory, TrajectoryDataset
from dtrl.tasks import get_task

HOPPER = get_task("hopper-medium")  # Hopper-v5: 11-d observations, 3-d actions, nq 6, nv 6
OBS, ACT, NQ, NV = 11, 3, 6, 6


def d4rl_arrays(dtype=np.float32, n=25, seed=0):
    """Flat D4RL arrays: an episode ending in a terminal, one in a timeout, and a trailing cut piece."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    terminals[6] = True  # episode 0: rows 0..6
    timeouts[16] = True  # episode 1: rows 7..16; rows 17..24 end with neither flag (file cut)
    return {
        "observations": rng.normal(size=(n, OBS)).astype(dtype),
        "actions": rng.uniform(-1, 1, size=(n, ACT)).astype(dtype),
        "rewards": rng.normal(size=n).astype(dtype),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, NQ)),
        "infos/qvel": rng.normal(size=(n, NV)),
    }


def write_h5(path: Path, arrays: dict) -> Path:
    with h5py.File(path, "w") as f:  # D4RL's own layout: flat datasets, infos/ as a group
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr)
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_infos", [True, False])
def test_read_d4rl_native_file(tmp_path, dtype, with_infos):
    arrays = d4rl_arrays(dtype)
    if not with_infos:
        arrays = {k: v for k, v in arrays.items() if not k.startswith("infos/")}
    path = write_h5(tmp_path / "hopper-medium-v2.hdf5", arrays)
    ds = read_d4rl(path, HOPPER, keep_unflagged_tail=True)
    assert [len(t) for t in ds] == [7, 10, 8]
    assert ds.num_transitions == 25 and ds.source == str(path) and ds.metadata == {}
    t0, t1, t2 = ds.trajectories
    assert t0.terminals[-1] and not t0.timeouts.any() and t0.terminals.sum() == 1
    assert t1.timeouts[-1] and not t1.terminals.any()
    assert not t2.terminals.any() and not t2.timeouts.any()
    np.testing.assert_array_equal(t1.observations, arrays["observations"][7:17].astype(np.float32))
    np.testing.assert_array_equal(t2.rewards, arrays["rewards"][17:].astype(np.float32))
    assert t0.observations.dtype == np.float32 and t0.actions.dtype == np.float32
    if with_infos:
        np.testing.assert_array_equal(t1.qpos, arrays["infos/qpos"][7:17])
        assert t1.qvel.shape == (10, NV)
    else:
        assert t0.qpos is None and t0.qvel is None
    assert t0.sim_states is None


def test_read_d4rl_drops_the_unflagged_tail_as_d4rls_sequence_dataset(tmp_path):
    """D4RL @89141a6 d4rl/__init__.py:180-191 yields a trajectory only at a terminal or timeout."""
    arrays = d4rl_arrays()
    path = write_h5(tmp_path / "hopper-medium-v2.hdf5", arrays)
    ds = read_d4rl(path, HOPPER)
    assert [len(t) for t in ds] == [7, 10] and ds.num_transitions == 17
    np.testing.assert_array_equal(ds[1].rewards, arrays["rewards"][7:17].astype(np.float32))
    [note] = ds.metadata["conversions"]
    assert "last 8 transitions" in note and "unflagged_tail: keep" in note
    flagged = dict(arrays, timeouts=arrays["timeouts"].copy())
    flagged["timeouts"][-1] = True  # nothing after the last flag: nothing dropped, nothing noted
    ds = read_d4rl(write_h5(tmp_path / "flagged.hdf5", flagged), HOPPER)
    assert [len(t) for t in ds] == [7, 10, 8] and "conversions" not in ds.metadata
    unflagged = dict(arrays, terminals=np.zeros(25, bool), timeouts=np.zeros(25, bool))
    path = write_h5(tmp_path / "unflagged.hdf5", unflagged)
    with pytest.raises(DataError, match="no step is flagged.*unflagged_tail: keep"):
        read_d4rl(path, HOPPER)
    assert [len(t) for t in read_d4rl(path, HOPPER, keep_unflagged_tail=True)] == [25]


def test_unflagged_tail_follows_each_methods_reference_unless_forced(tmp_path):
    from dtrl.data.sources import load_task_dataset
    from dtrl.config.experiment import load_config

    path = write_h5(tmp_path / "h.hdf5", d4rl_arrays())
    sources = {"sources": {"hopper-medium": {"d4rl": str(path)}}}
    exp = load_config(overrides={"results": str(tmp_path / "res"), "data": sources})
    assert exp.data.unflagged_tail == "reference"
    assert load_task_dataset(exp, HOPPER).num_transitions == 17  # the DT methods' loaders (ODT, D4RL)
    assert load_task_dataset(exp, HOPPER, reference_keeps_tail=True).num_transitions == 25  # IQL's
    for mode, n in (("keep", 25), ("drop", 17)):
        exp = load_config(overrides={"results": str(tmp_path / "res"), "data": {**sources, "unflagged_tail": mode}})
        assert [load_task_dataset(exp, HOPPER, keeps).num_transitions for keeps in (False, True)] == [n, n]
    from baselines.iql import IQL
    from baselines.odt import ODT

    assert IQL.reference_keeps_unflagged_tail and not getattr(ODT, "reference_keeps_unflagged_tail", False)


def test_read_d4rl_column_rewards_and_float_flags(tmp_path):
    arrays = d4rl_arrays()
    arrays["rewards"] = arrays["rewards"].reshape(-1, 1)  # some writers store (N, 1)
    arrays["terminals"] = arrays["terminals"].astype(np.float32)  # old files store flags as floats
    ds = read_d4rl(write_h5(tmp_path / "x.hdf5", arrays), HOPPER, keep_unflagged_tail=True)
    assert [len(t) for t in ds] == [7, 10, 8]


def _dataset_with_everything(rng, cut_middle=False):
    trajs = []
    for length, end in ((5, "terminal"), (4, "timeout"), (3, "cut" if cut_middle else "timeout"), (6, "none")):
        term = np.zeros(length, bool)
        tout = np.zeros(length, bool)
        if end == "terminal":
            term[-1] = True
        elif end == "timeout":
            tout[-1] = True
        trajs.append(Trajectory(
            observations=rng.normal(size=(length, OBS)).astype(np.float32),
            actions=rng.uniform(-1, 1, (length, ACT)).astype(np.float32),
            rewards=rng.normal(size=length).astype(np.float32), terminals=term, timeouts=tout,
            qpos=rng.normal(size=(length, NQ)), qvel=rng.normal(size=(length, NV)),
            sim_states=rng.normal(size=(length, 30)),
            next_observations=rng.normal(size=(length, OBS)).astype(np.float32)))
    return TrajectoryDataset(trajs, metadata={"policy": "medium", "sac_steps": 1234, "nested": {"a": [1, 2]}})


def test_write_read_round_trip(tmp_path):
    ds = _dataset_with_everything(np.random.default_rng(1))
    path = write_d4rl(tmp_path / "sub" / "hopper-medium.hdf5", ds)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # the temp file was renamed
    back = read_d4rl(path, HOPPER)
    assert back.metadata == ds.metadata == read_metadata(path)
    assert len(back) == len(ds)
    for a, b in zip(ds, back):
        for name in ("observations", "actions", "rewards", "terminals", "qpos", "qvel", "sim_states",
                     "next_observations"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        np.testing.assert_array_equal(a.timeouts[:-1], b.timeouts[:-1])
    # The last piece ended with neither flag: written as a timeout, so no D4RL reader drops it.
    assert [bool(t.timeouts[-1]) for t in back] == [False, True, True, True] and not ds[-1].timeouts[-1]
    with h5py.File(path) as f:  # plain D4RL keys, readable by any D4RL loader
        assert {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations"} <= set(f)
        assert set(f["infos"]) == {"qpos", "qvel", "sim_state"}
        assert f["terminals"].dtype == bool and f["observations"].dtype == np.float32


def test_write_marks_cut_piece_so_it_stays_separate(tmp_path):
    ds = _dataset_with_everything(np.random.default_rng(2), cut_middle=True)
    back = read_d4rl(write_d4rl(tmp_path / "c.hdf5", ds))
    assert [len(t) for t in back] == [5, 4, 3, 6]  # not glued to the next episode
    assert back[2].timeouts[-1] and not back[2].terminals.any()
    assert back[3].timeouts[-1] and "conversions" not in back.metadata  # the last piece too: nothing dropped


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "keep.hdf5"
    write_d4rl(path, _dataset_with_everything(np.random.default_rng(3)))
    before = path.read_bytes()
    bad = TrajectoryDataset(_dataset_with_everything(np.random.default_rng(4)).trajectories,
                            metadata={"x": object()})  # not JSON-serialisable: fails mid-write
    with pytest.raises(TypeError):
        write_d4rl(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.hdf5"]


def _bad_cases():
    def drop(key):
        return lambda a: {k: v for k, v in a.items() if k != key}

    def short_actions(a):
        a["actions"] = a["actions"][:-2]
        return a

    def nan_obs(a):
        a["observations"][3, 2] = np.nan
        return a

    def nan_rewards(a):
        a["rewards"][12] = np.inf
        return a

    def wide_obs(a):
        a["observations"] = np.concatenate([a["observations"], a["observations"][:, :2]], 1)
        return a

    def narrow_act(a):
        a["actions"] = a["actions"][:, :2]
        return a

    def short_qpos(a):
        a["infos/qpos"] = a["infos/qpos"][:10]
        return a

    def string_rewards(a):
        a["rewards"] = np.array([b"x"] * 25)
        return a

    return [
        ("missing observations", drop("observations"), r"missing key\(s\) observations"),
        ("missing timeouts", drop("timeouts"), r"missing key\(s\) timeouts"),
        ("length mismatch", short_actions, r"'actions' has 23 rows but 'rewards' has 25"),
        ("info length mismatch", short_qpos, r"'qpos' has 10 rows but 'rewards' has 25"),
        ("nan observation", nan_obs, r"'observations' contains NaN or inf"),
        ("inf reward", nan_rewards, r"'rewards' contains NaN or inf"),
        ("obs dim", wide_obs, r"observations have 13 dims but the env expects 11"),
        ("act dim", narrow_act, r"actions have 2 dims but the env expects 3"),
        ("non-numeric", string_rewards, r"'rewards' must be a numeric array"),
    ]


@pytest.mark.parametrize("name,mutate,pattern", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_d4rl_file_raises_one_data_error(tmp_path, name, mutate, pattern):
    path = write_h5(tmp_path / "bad.hdf5", mutate(d4rl_arrays()))
    with pytest.raises(DataError, match=pattern) as info:
        read_d4rl(path, HOPPER)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        read_d4rl(tmp_path / "nope.hdf5", HOPPER)
    assert "nope.hdf5" in str(info.value)
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file") as info:
        read_d4rl(junk)
    assert str(junk) in str(info.value)
    empty = write_h5(tmp_path / "empty.hdf5", {k: v[:0] for k, v in d4rl_arrays().items()})
    with pytest.raises(DataError, match="no transitions"):
        read_d4rl(empty)


# -- Minari ----------------------------------------------------------------------------------------------
def _write_minari(dataset_id: str, episodes: list[dict], with_qpos: bool):
    minari = pytest.importorskip("minari")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = []
    for i, ep in enumerate(episodes):
        infos = {"qpos": ep["qpos"], "qvel": ep["qvel"]} if with_qpos else {}
        buffers.append(EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"],
                                     rewards=ep["rewards"], terminations=ep["terminations"],
                                     truncations=ep["truncations"], infos=infos))
    return minari.create_dataset_from_buffers(dataset_id, buffers, env="Hopper-v5", eval_env="Hopper-v5",
                                              algorithm_name="test", author="dtrl tests",
                                              author_email="tests@dtrl.invalid", description="reader test data",
                                              code_permalink="tests/test_data_readers.py")


def _minari_episodes(rng):
    eps = []
    for T, term in ((6, True), (9, False)):
        terminations = np.zeros(T, bool)
        truncations = np.zeros(T, bool)
        (terminations if term else truncations)[-1] = True
        eps.append({"observations": rng.normal(size=(T + 1, OBS)), "actions": rng.uniform(-1, 1, (T, ACT)),
                    "rewards": rng.normal(size=T), "terminations": terminations, "truncations": truncations,
                    "qpos": rng.normal(size=(T + 1, NQ)), "qvel": rng.normal(size=(T + 1, NV))})
    return eps


@pytest.mark.parametrize("with_qpos", [True, False])
def test_minari_reader_on_real_minari_dataset(tmp_path, monkeypatch, with_qpos):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from dtrl.data.minari_io import read_minari

    eps = _minari_episodes(np.random.default_rng(5))
    _write_minari("mujoco/hopper/test-v0", eps, with_qpos)
    assert (tmp_path / "minari" / "mujoco" / "hopper" / "test-v0" / "data").is_dir()  # Minari's own layout
    ds = read_minari("mujoco/hopper/test-v0", task=HOPPER)
    assert [len(t) for t in ds] == [6, 9]
    assert ds.metadata["env_id"] == "Hopper-v5" and ds.metadata["minari_total_steps"] == 15
    for ep, t in zip(eps, ds):
        T = len(ep["rewards"])
        np.testing.assert_array_equal(t.observations, ep["observations"][:T].astype(np.float32))
        np.testing.assert_array_equal(t.next_observations, ep["observations"][1:].astype(np.float32))
        np.testing.assert_array_equal(t.actions, ep["actions"].astype(np.float32))
        np.testing.assert_array_equal(t.rewards, ep["rewards"].astype(np.float32))
        np.testing.assert_array_equal(t.terminals, ep["terminations"])
        np.testing.assert_array_equal(t.timeouts, ep["truncations"])
        if with_qpos:
            np.testing.assert_array_equal(t.qpos, ep["qpos"][:T])
        else:
            assert t.qpos is None


def test_minari_missing_dataset_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    from dtrl.data.minari_io import read_minari

    with pytest.raises(DataError, match="not present under .*MINARI_DATASETS_PATH.*minari_download"):
        read_minari("mujoco/hopper/medium-v0", task=HOPPER)


def test_minari_wrong_env_size(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from dtrl.data.minari_io import read_minari

    _write_minari("mujoco/hopper/test-v0", _minari_episodes(np.random.default_rng(6)), False)
    with pytest.raises(DataError, match="observations have 11 dims but the env expects 4"), \
            pytest.warns(UserWarning, match="collected on Hopper-v5"):
        read_minari("mujoco/hopper/test-v0", task=get_task("pendulum-medium"))


# -- sources -------------------------------------------------------------------------------------------
def test_sources_pick_configured_file_or_explain(tmp_path):
    from dtrl.config import ConfigError
    from dtrl.data.sources import dataset_summary_path, generated_path, load_task_dataset
    from dtrl.config.experiment import load_config

    path = write_h5(tmp_path / "h.hdf5", d4rl_arrays())
    exp = load_config(overrides={"results": str(tmp_path / "res"),
                                 "data": {"sources": {"hopper-medium": {"d4rl": str(path)}}}})
    assert load_task_dataset(exp, HOPPER, reference_keeps_tail=True).num_transitions == 25
    other = get_task("hopper-expert")
    assert generated_path(exp, other) == tmp_path / "res" / "data" / "hopper-expert.hdf5"
    assert dataset_summary_path(exp, other) == tmp_path / "res" / "data" / "hopper-expert.json"
    with pytest.raises(DataError, match="dtrl data hopper-expert"):
        load_task_dataset(exp, other)
    exp2 = load_config(overrides={"results": str(tmp_path / "res"), "data": {"root": str(tmp_path / "elsewhere")}})
    assert generated_path(exp2, other) == tmp_path / "elsewhere" / "hopper-expert.hdf5"
    with pytest.raises(ConfigError, match="not both"):
        load_config(overrides={"data": {"sources": {"hopper-medium": {"d4rl": "a", "minari": "b"}}}})


def test_cmd_data_on_configured_source_writes_summary(tmp_path, capsys):
    from dtrl.cli import main
    from dtrl.util.io import read_json

    path = write_h5(tmp_path / "h.hdf5", d4rl_arrays())
    rc = main(["data", "hopper-medium", "--set", f"results={tmp_path / 'res'}",
               "--set", "data.sources={hopper-medium: {d4rl: " + str(path) + "}}"])
    assert rc == 0
    summary = read_json(tmp_path / "res" / "data" / "hopper-medium.json")
    assert summary["episodes"] == 2 and summary["transitions"] == 17 and "normalized_mean" in summary
    assert "last 8 transitions" in summary["conversions"][0]  # the dropped unflagged tail, said
    out = capsys.readouterr().out
    assert "2 episodes, 17 transitions" in out and "normalised mean" in out and "converted: dropped" in out
    bad = write_h5(tmp_path / "bad.hdf5", {k: v for k, v in d4rl_arrays().items() if k != "actions"})
    rc = main(["data", "hopper-medium", "--set", f"results={tmp_path / 'res'}",
               "--set", "data.sources={hopper-medium: {d4rl: " + str(bad) + "}}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing key(s) actions" in err and len(err.strip().splitlines()) == 1
    assert os.path.exists(tmp_path / "res" / "data" / "hopper-medium.json")


def test_cmd_data_prints_d4rls_row_and_warns_on_a_far_off_dataset(tmp_path, capsys):
    from dtrl.cli import main
    from dtrl.util.io import read_json
    from dtrl.reference import d4rl_dataset_stats

    ref = d4rl_dataset_stats("hopper-medium-v2")
    assert (ref.size, ref.normalized_mean, ref.normalized_std) == (999906, 44.32, 12.27) and "Yan" in ref.source
    assert d4rl_dataset_stats("pendulum-medium") is None and d4rl_dataset_stats(None) is None
    task = get_task("hopper-medium")

    def run(arrays, name):
        path = write_h5(tmp_path / f"{name}.hdf5", arrays)
        rc = main(["data", "hopper-medium", "--set", f"results={tmp_path / name}",
                   "--set", "data.sources={hopper-medium: {d4rl: " + str(path) + "}}"])
        assert rc == 0
        out, err = capsys.readouterr()
        return out, err, read_json(tmp_path / name / "data" / "hopper-medium.json")

    # random rewards: episode returns near 0, i.e. about 0.6 normalised, far below 44.32 +- 12.27
    out, err, s = run(d4rl_arrays(), "far")
    assert "D4RL hopper-medium-v2: 999906 transitions, normalised return 44.32 ± 12.27" in out
    assert f"ours {s['transitions']} transitions, {s['normalized_mean']:.2f} ± {s['normalized_std']:.2f}" in out
    assert "below D4RL's hopper-medium-v2 (44.32 ± 12.27), more than its std" in err
    assert s["d4rl_reference"]["normalized_mean"] == 44.32 and any("more than its std" in w for w in s["warnings"])

    # every episode (rows 0-6, 7-16 and, where kept, the unflagged piece 17-24) returns D4RL's mean + 10
    # normalised: within its std
    arrays = d4rl_arrays()
    target = task.ref_min_score + (44.32 + 10.0) / 100 * (task.ref_max_score - task.ref_min_score)
    for lo, hi in ((0, 7), (7, 17), (17, 25)):
        arrays["rewards"][lo:hi] = target / (hi - lo)
    out, err, s = run(arrays, "near")
    assert s["normalized_mean"] == pytest.approx(54.32, abs=1e-3) and s["normalized_std"] == pytest.approx(0, abs=1e-3)
    assert "D4RL hopper-medium-v2" in out and "more than its std" not in err and not s.get("warnings")
