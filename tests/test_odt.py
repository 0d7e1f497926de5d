"""ODT (`--method odt`): replay buffer, hindsight relabeling, optimizer continuation, harness run, resume."""

import csv
import json

import numpy as np
import pytest
import torch

from baselines.common import ODTConfig, TrajectoryReplay, min_env_steps_per_iteration, transition_arrays
from baselines.odt import ODT
from dtrl.config import from_dict
from dtrl.data.d4rl_hdf5 import write_d4rl
from dtrl.data.trajectories import Trajectory, TrajectoryDataset
from dtrl.config.experiment import load_config
from dtrl.workflow.finetune import finetune
from dtrl.config import ConfigError
from dtrl.util.logger import CORE_COLUMNS, SUMMARY_KEYS
from dtrl.models.losses import dt_supervised_loss
from dtrl.harness.online import build_context
from dtrl.config.online import EvalConfig
from dtrl.harness.rollout import RolloutEngine, collect_episodes
from dtrl.tasks import get_task

from helpers import tiny_dt, write_pretrained

TASK = "hopper-medium"
# Small but complete: a handful of updates per iteration, a short fresh warmup.
FAST = {"updates_per_iteration": 4, "batch_size": 16, "warmup_updates": 10}


def offline_dataset(task_name: str = TASK, n: int = 12) -> TrajectoryDataset:
    """Short episodes of a tiny random DT (hopper falls within a few dozen steps)."""
    model = tiny_dt(task_name, seed=1)
    eng = RolloutEngine(get_task(task_name), n, model.cfg.context_len, seed=0)
    return TrajectoryDataset(collect_episodes(eng, model, n, 100.0, seeds=range(n)))


def experiment(tmp_path, method: str, params: dict, env_steps: int = 120, task_name: str = TASK):
    """An experiment whose dataset is a D4RL file in tmp_path and whose pretrained DTs are tiny_dt's
    (stochastic under pretrain/, deterministic under pretrain_det/)."""
    data = tmp_path / "data.hdf5"
    if not data.exists():
        write_d4rl(data, offline_dataset(task_name))
    for pdir, head in (("pretrain", "gaussian"), ("pretrain_det", "deterministic")):
        model_pt = tmp_path / f"{pdir}/{task_name}/seed0/model.pt"
        if not model_pt.exists():
            write_pretrained(model_pt, tiny_dt(task_name, action_head=head))
    return load_config(None, {
        "results": str(tmp_path), "device": "cpu", "grid": {"methods": [method], "tasks": [task_name]},
        "data": {"sources": {task_name: {"d4rl": str(data)}}},
        "eval": {"episodes": 2, "final_episodes": 2},
        "online": {"env_steps": env_steps, "eval_every_env_steps": 60, "progress": False},
        "methods": {method: params}})


def method_instance(cls, tmp_path, dataset=None, **params):
    """A method built directly (no harness), with an in-memory dataset and the DT head the method finetunes."""
    path = write_pretrained(tmp_path / "model.pt", tiny_dt(action_head=cls.pretrained_head))
    ctx = build_context(get_task(TASK), 0, torch.device("cpu"), dataset or offline_dataset(), path,
                        tmp_path / "run", EvalConfig(episodes=1, final_episodes=1))
    return cls(from_dict(cls.Config, {**FAST, **params}), ctx)


def _traj(ret: float, n: int = 3, tag: float = 0.0) -> Trajectory:
    r = np.full(n, ret / n, np.float32)
    obs = np.full((n, 2), tag, np.float32)
    return Trajectory(obs, np.zeros((n, 1), np.float32), r, np.zeros(n, bool), np.eye(1, n, n - 1, dtype=bool)[0])


# -- the replay buffer ---------------------------------------------------------------------------------

def test_buffer_keeps_top_trajectories_and_evicts_fifo_worst_seed_first():
    ds = TrajectoryDataset([_traj(r, tag=r) for r in (5.0, 1.0, 9.0, 3.0, 7.0)])
    buf = TrajectoryReplay(3, 4, ds.top_k(3), rng=np.random.default_rng(0))

    def tags():
        return [float(t.observations[0, 0]) for t in buf.trajectories]

    def sampled_tags():  # what the sampler holds, in storage order
        b = buf.sampler.contexts(np.arange(buf.num_transitions))
        return sorted(set(b.states[:, -1, 0].tolist()))

    assert tags() == [5.0, 7.0, 9.0]  # the best three, worst first
    assert buf.seeds_left == 3 and buf.num_transitions == 9
    buf.add(_traj(0.0, n=2, tag=100.0))
    assert tags() == [7.0, 9.0, 100.0] and buf.seeds_left == 2
    assert sampled_tags() == [7.0, 9.0, 100.0] and buf.num_transitions == 8
    for tag in (101.0, 102.0, 103.0):
        buf.add(_traj(0.0, n=2, tag=tag))
    assert tags() == [101.0, 102.0, 103.0] and buf.seeds_left == 0
    assert sampled_tags() == [101.0, 102.0, 103.0]

    # state round trip: a fresh buffer from the same seeds + the saved state holds the same contents
    again = TrajectoryReplay(3, 4, ds.top_k(3), rng=np.random.default_rng(0))
    again.load_state_dict(buf.state_dict())
    assert [float(t.observations[0, 0]) for t in again.trajectories] == tags()
    assert again.evicted == buf.evicted == 4 and again.num_transitions == buf.num_transitions


def test_buffer_with_fewer_offline_trajectories_than_capacity_grows():
    ds = TrajectoryDataset([_traj(r, tag=r) for r in (1.0, 2.0)])
    buf = TrajectoryReplay(4, 2, ds.top_k(4))
    for tag in (10.0, 11.0, 12.0):
        buf.add(_traj(0.0, tag=tag))
    assert [float(t.observations[0, 0]) for t in buf.trajectories] == [2.0, 10.0, 11.0, 12.0]  # full at 4: 1.0 went


def test_transition_arrays_mark_what_can_bootstrap():
    t = _traj(3.0, n=3)  # ends with a timeout, no next observation: its last step has no TD target
    a = transition_arrays(t)
    assert a["td_ok"].tolist() == [True, True, False]
    assert np.array_equal(a["next_obs"][:2], t.observations[1:])
    t.next_observations = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert transition_arrays(t)["td_ok"].all() and np.array_equal(transition_arrays(t)["next_obs"][-1], [4, 5])
    t.next_observations, t.terminals[-1], t.timeouts[-1] = None, True, False
    a = transition_arrays(t)
    assert a["td_ok"].all() and a["terminal"].tolist() == [0, 0, 1]


# -- exploration and relabeling ------------------------------------------------------------------------

def test_exploration_is_relabeled_with_the_achieved_return_to_go(tmp_path):
    odt = method_instance(ODT, tmp_path, updates_per_iteration=0)
    assert odt.online_rtg == get_task(TASK).online_rtg == 7200
    assert odt.rollout_context == odt.model.cfg.eval_context_len
    n_before = odt.buffer.num_transitions
    diag = odt.train_iteration()
    new = odt.buffer.trajectories[-1]
    T = len(new)
    assert diag["explore_length"] == T and odt.ctx.counters.env_steps == T
    assert np.isclose(diag["explore_return"], new.total_return)
    # The contexts starting at each step of the new trajectory (ODT's windows: left-padded where they
    # run past its end) carry its achieved returns-to-go ...
    assert odt.buffer.sampler.anchor == "start"
    b = odt.buffer.sampler.contexts(np.arange(n_before, n_before + T))
    first = b.rtg[torch.arange(T), (~b.mask).sum(1)].numpy()
    achieved = np.cumsum(new.rewards[::-1].astype(np.float64))[::-1]
    np.testing.assert_allclose(first, achieved, rtol=1e-5)
    # ... not the tokens the policy was fed (7200 decremented by the rewards).
    fed = 7200.0 - np.concatenate([[0.0], np.cumsum(new.rewards[:-1])])
    assert np.all(np.abs(first - fed) > 1000)
    assert np.isclose(diag["relabel_gap"], 7200.0 - new.total_return)
    # the stored episode ends where the env ended it, with its final observation recorded
    assert new.terminals[-1] or new.timeouts[-1]
    assert new.next_observations is not None and np.array_equal(new.next_observations[:-1], new.observations[1:])


def test_updates_are_counted_and_the_loss_reaches_only_its_parameters(tmp_path):
    odt = method_instance(ODT, tmp_path, updates_per_iteration=3)
    diag = odt.train_iteration()
    c = odt.ctx.counters
    assert c.policy_updates == c.grad_updates == 3 and c.critic_updates == 0 and odt.trainer.updates == 3
    for k in ("loss", "nll", "entropy", "temperature", "loss_temperature", "grad_norm"):
        assert np.isfinite(diag[k]), k
    # gradient isolation of ODT's two losses on a buffer batch
    m = odt.model
    b = odt.buffer.sample(8)
    terms = dt_supervised_loss(m(b.states, b.actions, b.rtg, b.timesteps, b.mask), b.actions, b.mask,
                               m.log_temperature, m.target_entropy)
    policy = m.policy_parameters()
    g = torch.autograd.grad(terms["loss"], policy + [m.log_temperature], allow_unused=True)
    assert g[-1] is None or torch.all(g[-1] == 0)
    assert any(x is not None and x.abs().sum() > 0 for x in g[:-1])
    g = torch.autograd.grad(terms["loss_temperature"], policy + [m.log_temperature], allow_unused=True)
    assert all(x is None for x in g[:-1]) and g[-1] is not None and g[-1] != 0


def test_an_iteration_collects_at_least_the_minimum_env_steps(tmp_path):
    # the tiny random DT falls within a few dozen steps, so 150 steps take several episodes
    odt = method_instance(ODT, tmp_path, updates_per_iteration=1, min_env_steps_per_iteration=150)
    assert odt.min_env_steps == 150
    n_traj = len(odt.buffer.trajectories)
    diag = odt.train_iteration()
    steps = odt.ctx.counters.env_steps
    assert steps >= 150 and diag["explore_episodes"] > 1
    assert diag["explore_length"] * diag["explore_episodes"] == steps
    new = list(odt.buffer.trajectories)[n_traj:]  # every episode of the iteration went into the buffer
    assert len(new) == diag["explore_episodes"] and sum(len(t) for t in new) == steps
    assert steps - len(new[-1]) < 150  # it stopped at the episode that reached the minimum
    assert odt.ctx.counters.policy_updates == 1  # one iteration's updates for all of them


def test_random_datasets_default_to_1000_env_steps_per_iteration():
    cfg = ODTConfig()
    assert cfg.min_env_steps_per_iteration is None
    for task in ("hopper-random", "halfcheetah-random", "walker2d-random", "ant-random", "pendulum-random"):
        assert min_env_steps_per_iteration(cfg, get_task(task)) == 1000, task
    for task in ("hopper-medium", "hopper-medium-replay", "pendulum-expert"):
        assert min_env_steps_per_iteration(cfg, get_task(task)) == 0, task
    assert min_env_steps_per_iteration(from_dict(ODTConfig, {"min_env_steps_per_iteration": 0}),
                                       get_task("hopper-random")) == 0
    with pytest.raises(ConfigError, match="min_env_steps_per_iteration"):
        from_dict(ODTConfig, {"min_env_steps_per_iteration": -1})


def test_odt_refuses_a_deterministic_dt(tmp_path):
    path = write_pretrained(tmp_path / "det.pt", tiny_dt(action_head="deterministic"))
    ctx = build_context(get_task(TASK), 0, torch.device("cpu"), offline_dataset(), path, tmp_path / "run",
                        EvalConfig())
    with pytest.raises(ConfigError, match="gaussian action head.*deterministic"):
        ODT(from_dict(ODTConfig, FAST), ctx)


def test_online_phase_continues_the_pretraining_optimizer(tmp_path):
    from dtrl.harness.pretrain import SupervisedTrainer

    model = tiny_dt()
    ds = offline_dataset()
    pre = SupervisedTrainer(model, warmup_updates=10)
    buf = TrajectoryReplay(100, model.cfg.context_len, ds.top_k(100))
    for _ in range(4):
        pre.update(buf.sample(8))
    path = tmp_path / "model.pt"
    from dtrl.models.checkpoint import dt_payload
    from dtrl.util.io import atomic_torch_save

    atomic_torch_save(path, {"dt": dt_payload(model), "trainer": pre.state_dict(), "updates": 4,
                             "config": {"pretrain": {"optimizer": "lamb"}}})
    ctx = build_context(get_task(TASK), 0, torch.device("cpu"), ds, path, tmp_path / "run", EvalConfig())
    odt = ODT(from_dict(ODTConfig, {**FAST, "lr": 2e-4}), ctx)
    assert odt.pretrain_updates == 4
    # warmup continues at step 4 of 10, at the online config's peak rate
    assert odt.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 5 / 10)
    assert odt.trainer.optimizer.param_groups[0]["weight_decay"] == 5e-4
    p = odt.trainer.policy_params[0]
    assert torch.equal(odt.trainer.optimizer.state[p]["exp_avg"], pre.optimizer.state[pre.policy_params[0]]["exp_avg"])
    fresh = ODT(from_dict(ODTConfig, {**FAST, "continue_pretrain_optimizer": False}),
                build_context(get_task(TASK), 0, torch.device("cpu"), ds, path, tmp_path / "run2", EvalConfig()))
    assert fresh.pretrain_updates == 0 and not fresh.trainer.optimizer.state


def test_defaults_are_odts_published_values():
    c = ODTConfig()
    assert (c.batch_size, c.updates_per_iteration, c.rollouts_per_iteration, c.buffer_size) == (256, 300, 1, 1000)
    assert (c.lr, c.weight_decay, c.warmup_updates, c.grad_clip, c.dropout) == (1e-4, 5e-4, 10_000, 0.25, 0.1)
    assert c.optimizer == "lamb" and c.online_rtg is None and c.rollout_context_len == 0
    import dataclasses

    assert all(f.metadata.get("doc") for f in dataclasses.fields(ODTConfig))


def test_online_updates_use_pretrainings_precision_and_compile_switches():
    """ODT (and ODT+TD3, which inherits the fields) autocast and compile as pretraining does by default,
    through the same code (dtrl.harness.pretrain.CompiledLoss / autocast)."""
    from dtrl.config.pretrain import PretrainConfig

    c, p = ODTConfig(), PretrainConfig()
    assert (c.amp, c.compile) == (p.amp, p.compile) == ("bf16", "reduce-overhead")
    assert c.sampler == "device"


def test_compiled_loss_is_eager_on_cpu_and_checks_its_mode():
    from dtrl.harness.pretrain import CompiledLoss, amp_dtype_of, autocast

    fn = lambda x: x + 1  # noqa: E731
    c = CompiledLoss(fn, "reduce-overhead", "cpu")
    assert c.mode == "off" and c.fn is fn and not c.unproven and c(lambda f: f(1)) == 2
    with pytest.raises(ValueError, match="compile"):
        CompiledLoss(fn, "max-autotune", "cpu")
    assert amp_dtype_of("bf16") == torch.bfloat16 and amp_dtype_of("off") is None
    with autocast("cpu", torch.bfloat16):  # CPU always runs in fp32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("sampler", ["device", "host"])
def test_the_buffer_draws_windows_where_configured_and_resumes_its_stream(tmp_path, sampler):
    odt = method_instance(ODT, tmp_path, sampler=sampler)
    gen = odt.buffer.sampler.generator
    assert (gen is not None) == (sampler == "device")
    np_state = odt.ctx.np_rng.bit_generator.state
    state = odt.buffer.state_dict()
    first = odt.buffer.sample(16)
    # the device sampler leaves the run's numpy generator (exploration seeds) alone; the host one draws from it
    assert (odt.ctx.np_rng.bit_generator.state == np_state) == (sampler == "device")
    fresh = method_instance(ODT, tmp_path / "again", sampler=sampler)
    fresh.buffer.load_state_dict(state)
    fresh.ctx.np_rng.bit_generator.state = np_state  # the harness restores the numpy generator itself
    again = fresh.buffer.sample(16)
    assert torch.equal(first.states, again.states) and torch.equal(first.mask, again.mask)


def test_mean_terms_sum_on_the_device_and_name_the_first_broken_term():
    from baselines.common import MeanTerms
    from dtrl.util.guard import DivergenceError

    acc = MeanTerms()
    vals = [{"a": torch.tensor(1.5), "b": torch.tensor(2.0, dtype=torch.float64)},
            {"a": torch.tensor(2.5), "b": torch.tensor(-1.0)}]
    for v in vals:
        acc.add(v)
    assert acc.means() == {"a": 2.0, "b": 0.5} and acc.means("x_") == {"x_a": 2.0, "x_b": 0.5}
    acc.check({"a": "lr", "b": "lr"}, "here")  # all finite
    acc.add({"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))})
    acc.add({"a": torch.tensor(float("inf")), "b": torch.tensor(1.0)})
    with pytest.raises(DivergenceError, match="non-finite b, a") as e:
        acc.check({"a": "lr", "b": "temperature_lr"}, "here")
    assert e.value.key == "temperature_lr" and e.value.finite_updates == 2
    with pytest.raises(ValueError, match="terms"):
        acc.add({"a": torch.tensor(1.0)})
    assert MeanTerms().means() == {}


# -- under the harness -----------------------------------------------------------------------------------

def test_odt_run_writes_documented_outputs(tmp_path):
    exp = experiment(tmp_path, "odt", FAST)
    s = finetune(exp, "odt", TASK, 0)
    run = tmp_path / "runs/odt" / TASK / "seed0"
    assert set(SUMMARY_KEYS) <= set(json.loads((run / "summary.json").read_text()))
    assert s["env_steps"] >= 120 and s["policy_updates"] == s["grad_updates"] == 4 * s["iterations"]
    assert s["critic_updates"] == 0
    rows = list(csv.DictReader(open(run / "progress.csv")))
    assert list(rows[0])[:len(CORE_COLUMNS)] == CORE_COLUMNS
    for col in ("nll", "entropy", "temperature", "loss_temperature", "grad_norm", "explore_return",
                "buffer_trajectories", "buffer_transitions", "relabel_gap", "lr"):
        assert rows[0][col] != "", col
    assert int(rows[-2]["buffer_trajectories"]) == 12 + s["iterations"]  # 12 offline + one per iteration


def assert_resumes_to_the_same_result(tmp_path, method: str, params: dict, capsys) -> None:
    """A run stopped early and resumed with the full budget ends exactly where an uninterrupted run ends."""
    full = finetune(experiment(tmp_path / "a", method, params, env_steps=250), method, TASK, 0)
    # Stop the second run after its first iteration, however long the untrained policy's first episode is.
    first = int(next(csv.DictReader(open(tmp_path / "a/runs" / method / TASK / "seed0/progress.csv")))["env_steps"])
    part = finetune(experiment(tmp_path / "b", method, params, env_steps=first), method, TASK, 0)
    assert 0 < part["iterations"] < full["iterations"]
    (tmp_path / "b/runs" / method / TASK / "seed0/summary.json").unlink()  # as if killed after its checkpoint
    capsys.readouterr()
    resumed = finetune(experiment(tmp_path / "b", method, params, env_steps=250), method, TASK, 0,
                       allow_config_change=True)  # the longer budget is a config change
    assert f"at iteration {part['iterations']}" in capsys.readouterr().err
    for k in ("iterations", "env_steps", "policy_updates", "critic_updates", "step_counts", "final_returns"):
        assert resumed[k] == full[k], k
    a = list(csv.DictReader(open(tmp_path / "a/runs" / method / TASK / "seed0/progress.csv")))
    b = list(csv.DictReader(open(tmp_path / "b/runs" / method / TASK / "seed0/progress.csv")))
    for col in ("explore_return", "loss", "grad_norm"):
        assert [r[col] for r in a] == [r[col] for r in b], col


def test_odt_resumes_to_the_same_result(tmp_path, capsys):
    assert_resumes_to_the_same_result(tmp_path, "odt", FAST, capsys)
