"""What ODT and ODT+TD3 share: the trajectory replay buffer, exploration, the online loop and its state.

ODT's online phase (Zheng, Zhang & Grover 2022), one iteration:

1. roll out ``rollouts_per_iteration`` whole episodes with *sampled* actions, conditioned on the
   task's online RTG target (decremented by the rewards received, as at evaluation), and repeat
   until the iteration holds at least ``min_env_steps_per_iteration`` env steps (1000 on the
   random datasets, as the code behind the published ODT and ODT+TD3 numbers);
2. store them in a replay buffer of whole trajectories (capacity counted in trajectories, FIFO),
   which was seeded with the best offline trajectories;
3. make ``updates_per_iteration`` DT updates on context minibatches from the buffer. The RTG tokens of
   stored trajectories are their *achieved* returns-to-go (hindsight relabeling): the buffer keeps
   rewards, never the RTG the policy was fed, and :class:`dtrl.models.batching.ContextSampler` computes
   each trajectory's return-to-go once when it is added.

:class:`ODTFamily` is that loop; a subclass supplies the updates (``_update_many``) and may warm
something up before the first iteration (``_before_first_iteration``), change the exploration
policy (``_explorer``) and extend ``state_dict``/``load_state_dict``.

Reconstruction choices (the ODT paper and code leave these open or do them differently):

* Seeding order. ODT sorts the kept offline trajectories from worst to best and replaces from the
  front, so the *worst* seeded trajectories are evicted first; the same order is used here.
* One optimizer across phases. ODT trains offline and online with one LAMB optimizer and one
  warmup schedule. ``continue_pretrain_optimizer`` loads the pretraining optimizer state stored in
  ``model.pt`` and continues the warmup where pretraining left it (5000 pretraining updates with a
  10k warmup means online updates start at half the rate and reach it 5000 updates later, as in
  ODT, whose one LambdaLR schedule spans both phases). The online config's
  hyperparameters (lr, weight decay, ...) still apply.
* Exploration and the buffer record each trajectory's final observation (the state after its
  last step) as ``next_observations``, so a critic can bootstrap through time-limit cuts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from dtrl.models.batching import ContextBatch, ContextSampler
from dtrl.config import doc, require
from dtrl.data.trajectories import Trajectory
from dtrl.harness.dt_method import DTMethod
from dtrl.util.guard import FiniteSince
from dtrl.util.io import torch_load
from dtrl.harness.online import RunContext
from dtrl.harness.pretrain import SupervisedTrainer, amp_dtype_of
from dtrl.harness.rollout import RolloutEngine, RolloutTrajectory, Start

# Per-step arrays the buffer keeps for a critic (``transitions=True``), gathered with each context.
TRANSITION_KEYS = ("reward", "terminal", "next_obs", "td_ok")


# ---------------------------------------------------------------------------------------------------
# Replay buffer


def transition_arrays(traj: Trajectory, last_terminal: bool = False) -> dict[str, np.ndarray]:
    """Per-step reward, terminal, next observation and ``td_ok`` (the TD target is defined) of ``traj``.

    The next observation of step t < T-1 is observation t+1; of the last step it is
    ``traj.next_observations[-1]`` when known. ``td_ok`` is False only for a last step whose episode
    was not terminated (a time-limit cut or a dataset piece) and whose next observation is unknown:
    such a step can neither bootstrap nor be treated as terminal, so a critic skips it.
    ``last_terminal`` marks the last step terminal whatever ended the episode (time-limit cuts
    included), as ODT+TD3's reference stores every online episode (RL_as_Vitamin evaluation.py:250-252).
    """
    T = len(traj)
    nxt = np.zeros_like(traj.observations, dtype=np.float32)
    nxt[:-1] = traj.observations[1:]
    td_ok = np.ones(T, dtype=bool)
    terminal = traj.terminals.astype(np.float32)
    if last_terminal:
        terminal[-1] = 1.0
    if traj.next_observations is not None:
        nxt[-1] = traj.next_observations[-1]
    elif not bool(terminal[-1]):
        td_ok[-1] = False
    return {"reward": traj.rewards.astype(np.float32), "terminal": terminal, "next_obs": nxt, "td_ok": td_ok}


def _lean(traj: Trajectory) -> Trajectory:
    """The fields the buffer needs (simulator snapshots and rollout records dropped).

    Stored trajectories are whole episodes from their first step, so their DT timesteps are the
    step indices (ContextSampler's default); a piece starting mid-episode is refused.
    """
    ts = getattr(traj, "timesteps", None)
    if ts is not None and len(ts) and int(ts[0]) != 0:
        raise ValueError("the replay buffer stores whole episodes; this trajectory starts at timestep "
                         f"{int(ts[0])}")
    return Trajectory(np.asarray(traj.observations, np.float32), np.asarray(traj.actions, np.float32),
                      np.asarray(traj.rewards, np.float32), np.asarray(traj.terminals, bool),
                      np.asarray(traj.timeouts, bool),
                      next_observations=None if traj.next_observations is None
                      else np.asarray(traj.next_observations, np.float32))


class TrajectoryReplay:
    """ODT's replay buffer: whole trajectories, FIFO, capacity in trajectories.

    ``seeds`` (the best offline trajectories, best first as ``TrajectoryDataset.top_k`` returns
    them) are inserted worst first, so FIFO replacement evicts the worst of them first, as ODT
    does. Sampling is :class:`ContextSampler`'s: trajectories in proportion to their length, RTG
    tokens = each trajectory's achieved return-to-go (hindsight relabeling). With
    ``transitions=True`` every context also carries the per-step arrays of
    :func:`transition_arrays` in ``batch.extra`` (for ODT+TD3's critic); ``online_last_terminal``
    marks the last step of every trajectory added after construction (the online episodes) terminal.

    ``generator``: a ``torch.Generator`` on ``device`` from which windows are drawn on the device
    (``sampler: device``); None draws them with ``rng`` on the host. Its state is part of
    :meth:`state_dict`, so a resumed run draws the same windows.
    """

    def __init__(self, capacity: int, context_len: int, seeds: Sequence[Trajectory], *,
                 device: torch.device | str = "cpu", rng: np.random.Generator | None = None,
                 anchor: Literal["end", "start"] = "end", transitions: bool = False,
                 generator: torch.Generator | None = None, online_last_terminal: bool = False):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        if not seeds:
            raise ValueError("the replay buffer needs at least one offline trajectory to start from")
        self.capacity = int(capacity)
        self.transitions = bool(transitions)
        self.online_last_terminal = bool(online_last_terminal)
        seeds = [_lean(t) for t in list(seeds)[:self.capacity]][::-1]  # worst first: evicted first
        self.n_seeds = len(seeds)  # seeds inserted at construction
        self.trajectories: deque[Trajectory] = deque(seeds)
        self.sampler = ContextSampler(seeds, context_len, extra=self._extra(seeds), device=device, rng=rng,
                                      anchor=anchor, generator=generator)
        self.evicted = 0  # trajectories dropped so far (seeds go first)

    def _extra(self, trajs: Sequence[Trajectory]) -> dict[str, list[np.ndarray]] | None:
        if not self.transitions:
            return None
        arrays = [transition_arrays(t) for t in trajs]
        return {k: [a[k] for a in arrays] for k in TRANSITION_KEYS}

    def _online_extra(self, t: Trajectory) -> dict[str, np.ndarray] | None:
        return transition_arrays(t, self.online_last_terminal) if self.transitions else None

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def num_transitions(self) -> int:
        return self.sampler.num_transitions

    @property
    def seeds_left(self) -> int:
        return max(0, self.n_seeds - self.evicted)

    def add(self, traj: Trajectory) -> None:
        """Append a trajectory (newest); evict the oldest once over capacity."""
        t = _lean(traj)
        self.sampler.add(t, extra=self._online_extra(t))
        self.trajectories.append(t)
        if len(self.trajectories) > self.capacity:
            self.sampler.pop_oldest(1)
            self.trajectories.popleft()
            self.evicted += 1

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> ContextBatch:
        return self.sampler.sample(batch_size, rng)

    # The seeds are rebuilt from the dataset on resume; only what came online is saved.
    def state_dict(self) -> dict[str, Any]:
        online = list(self.trajectories)[self.seeds_left:]
        keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
        gen = self.sampler.generator
        return {"evicted": self.evicted, "online": [{k: getattr(t, k) for k in keys} for t in online],
                "generator": None if gen is None else gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into a freshly built buffer (same seeds): drop the evicted seeds, re-add what came online."""
        if self.evicted or len(self.trajectories) != self.n_seeds:
            raise ValueError("TrajectoryReplay.load_state_dict needs a freshly built buffer")
        n = int(state["evicted"])
        drop = min(n, self.n_seeds)
        if drop:
            self.sampler.pop_oldest(drop)
            for _ in range(drop):
                self.trajectories.popleft()
        for d in state["online"]:
            t = Trajectory(**d)
            self.sampler.add(t, extra=self._online_extra(t))
            self.trajectories.append(t)
        self.evicted = n
        gen = self.sampler.generator
        if gen is not None and state.get("generator") is not None:
            gen.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------------
# Config shared by ODT and ODT+TD3 (ODT's published values)


@dataclass
class ODTConfig:
    rollouts_per_iteration: int = doc(1, "Exploration episodes per online iteration, stepped together (ODT: 1).")
    updates_per_iteration: int = doc(300, "DT (policy) updates per online iteration (ODT: 300, "
                                          "`--num_updates_per_online_iter`). ODT+TD3 draws policy_delay times as "
                                          "many minibatches: every one trains the critic, every policy_delay-th "
                                          "also the DT.")
    min_env_steps_per_iteration: int | None = doc(
        None, "An iteration keeps rolling out batches of rollouts_per_iteration episodes until it has collected at "
              "least this many env steps, then updates. null = the task's default: 1000 on the random datasets, "
              "0 (one batch) otherwise. That is `--minimum_sapairs_per_iter` of the code behind the published ODT "
              "and ODT+TD3 numbers (KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers main.py:531-541); "
              "main.py:724-726 refuses random datasets without it (halfcheetah excepted), and the readme passes "
              "1000 on every random MuJoCo command (readme.md:104, 107, 110, 111). Without it a 20-step episode "
              "buys a whole iteration of updates.")
    batch_size: int = doc(256, "Contexts per minibatch (ODT: 256); the context length K is the model's (ODT: 20).")
    buffer_size: int = doc(1000, "Replay capacity in whole trajectories, FIFO, seeded with the best offline "
                                 "trajectories (ODT: 1000).")
    online_rtg: float | None = doc(None, "Exploration return-to-go target; null = the task's online_rtg (ODT: "
                                         "hopper 7200, halfcheetah 12000, walker2d 10000, ant 10000).")
    rollout_context_len: int = doc(0, "Context (steps) the exploring policy acts with; 0 = the model's "
                                      "eval_context_len (ODT explores with its evaluation context, 5).")
    optimizer: Literal["lamb", "adamw"] = doc("lamb", "Policy optimizer (ODT: LAMB).")
    lr: float = doc(1e-4, "Peak learning rate of the DT (ODT: 1e-4).")
    weight_decay: float = doc(5e-4, "Weight decay of the DT (ODT: 5e-4).")
    eps: float = doc(1e-8, "Optimizer epsilon (ODT passes 1e-8 to LAMB).")
    warmup_updates: int = doc(10_000, "Linear learning-rate warmup in updates (ODT: 10k). ODT runs one schedule "
                                      "over pretraining and the online phase: with continue_pretrain_optimizer "
                                      "it is counted from the first pretraining update, so keep it equal to "
                                      "pretrain.warmup_updates.")
    continue_pretrain_optimizer: bool = doc(True, "Continue the pretraining optimizer (LAMB moments, Adam state of "
                                                  "the temperature, warmup position) stored in model.pt, as ODT "
                                                  "uses one optimizer for both phases; false, or a model.pt "
                                                  "without it, starts a fresh one with a fresh warmup.")
    grad_clip: float = doc(0.25, "Global gradient-norm clip of the DT's parameters (ODT: 0.25; 0 = off).")
    temperature_lr: float = doc(1e-4, "Adam learning rate of the log-temperature (ODT: 1e-4).")
    entropy_samples: int = doc(1, "Monte-Carlo samples of the squashed Gaussian's entropy (ODT: 1).")
    dropout: float = doc(0.1, "Dropout of the DT while training online (ODT: 0.1; acting never uses dropout).")
    context_anchor: Literal["start", "end"] = doc(
        "start", "How context windows are drawn from the buffer (pretrain.context_anchor's choice, and the same "
                 "default): 'start' = the reference's uniform first step, windows cut at the trajectory's end and "
                 "left-padded there (online-dt data.py:72,103-115); 'end' = each transition equally likely to be a "
                 "context's last step, padding only at episode starts, as when acting.")
    entropy_positions: Literal["all", "real"] = doc(
        "all", "Positions ODT's entropy term and the temperature loss average over: 'all' = every B x K slot, "
               "padding included, as the reference (online-dt main.py:399-401; RL_as_Vitamin main.py:636-638); "
               "'real' = real steps only, as the NLL. ODT+TD3's deterministic DT has no entropy term.")
    sampler: Literal["device", "host"] = doc(
        "device", "Where the replay buffer draws its context windows. 'device': with a torch.Generator on the "
                  "training device (seeded from the run's seed, saved in the checkpoint), so an update makes no "
                  "host work or host-to-device copy for its minibatch; 'host': with the run's numpy generator, "
                  "copied to the device per minibatch (the sampler before issue 13). Both draw each window's "
                  "anchor uniformly over the stored transitions (trajectories in proportion to their length) "
                  "and build batches with the same gathers, so the distribution is the same (device: up to a "
                  "relative bias below transitions / 2^62); they use different random streams, so the same "
                  "seed draws different windows.")
    amp: Literal["off", "bf16"] = doc("bf16", "Autocast dtype of the DT on CUDA (ignored on CPU); pretrain.amp's "
                                              "default and the same autocast code (dtrl.harness.pretrain.autocast). "
                                              "off = fp32, the reference's numerics (the online phase never enables "
                                              "TF32).")
    compile: Literal["off", "default", "reduce-overhead"] = doc(
        "reduce-overhead", "torch.compile mode on CUDA (ignored on CPU) of the loss computations, as "
                           "pretrain.compile (its default, and the same code: dtrl.harness.pretrain.CompiledLoss): ODT's "
                           "supervised forward+loss; ODT+TD3's critic loss (target DT, target critic, critic) and "
                           "actor loss (DT, MSE, frozen critic). A failed compilation warns and goes on eagerly. "
                           "Eager ('off') resumes bit-exactly; compiled runs within float rounding.")
    fused_forward: bool = doc(True, "On CPU, ODT's supervised update trains through pretrain.fused_forward's fused "
                                    "DT forward (same losses to float rounding for a seed); false = the module's "
                                    "forward. ODT+TD3's actor and critic losses keep the module's forward.")

    def validate(self) -> None:
        require(self.rollouts_per_iteration >= 1, "rollouts_per_iteration must be >= 1")
        require(self.updates_per_iteration >= 0, "updates_per_iteration must be >= 0")
        require(self.min_env_steps_per_iteration is None or self.min_env_steps_per_iteration >= 0,
                "min_env_steps_per_iteration must be >= 0 (or null for the task's default)")
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(self.buffer_size >= 1, "buffer_size must be >= 1")
        require(self.rollout_context_len >= 0, "rollout_context_len must be >= 0 (0 = the model's eval context)")
        require(self.lr > 0 and self.weight_decay >= 0 and self.eps >= 0, "need lr > 0, weight_decay >= 0, eps >= 0")
        require(self.warmup_updates >= 0, "warmup_updates must be >= 0")
        require(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)")
        require(self.temperature_lr >= 0, "temperature_lr must be >= 0 (0 freezes the temperature)")
        require(self.entropy_samples >= 1, "entropy_samples must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.context_anchor in ("start", "end"), "context_anchor must be 'start' or 'end'")
        require(self.entropy_positions in ("all", "real"), "entropy_positions must be 'all' or 'real'")


# ---------------------------------------------------------------------------------------------------
# Helpers


def continue_pretraining(trainer: SupervisedTrainer, path, optimizer: str) -> int:
    """Load the pretraining optimizer state of ``model.pt`` into ``trainer``; return the updates it had made.

    The optimizers' per-parameter state (LAMB moments, the temperature's Adam state) is taken from
    pretraining, their hyperparameters stay ``trainer``'s (the online config's), and the warmup
    schedule is moved to where pretraining left it. Returns 0 (and changes nothing) when the file
    holds no trainer state or pretraining used another optimizer.
    """
    ckpt = torch_load(path)
    state = ckpt.get("trainer")
    pre_opt = ((ckpt.get("config") or {}).get("pretrain") or {}).get("optimizer", optimizer)
    if not state or pre_opt != optimizer:
        return 0
    for opt, key in ((trainer.optimizer, "optimizer"), (trainer.temperature_optimizer, "temperature_optimizer")):
        if opt is None:  # the deterministic DT has no temperature
            continue
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(state[key])
        for g, h in zip(opt.param_groups, hyper):
            g.update(h)
    n = int(state.get("updates", ckpt.get("updates", 0)))
    sched = trainer.scheduler
    sched.last_epoch = n
    for g, base in zip(trainer.optimizer.param_groups, sched.base_lrs):
        g["lr"] = base * sched.lr_lambdas[0](n)
    trainer.last_lr = trainer.optimizer.param_groups[0]["lr"]
    return n


def min_env_steps_per_iteration(cfg: ODTConfig, task) -> int:
    """The configured minimum, or the task's default: 1000 env steps on random datasets, else 0."""
    if cfg.min_env_steps_per_iteration is not None:
        return int(cfg.min_env_steps_per_iteration)
    return 1000 if task.quality == "random" else 0


class MeanTerms:
    """Running sums of per-update diagnostic tensors, kept on the device as one stacked vector (one
    add per update, no host sync); read once per iteration (:meth:`means`, :meth:`check`)."""

    def __init__(self):
        self.keys: list[str] = []
        self.sum: torch.Tensor | None = None
        self.n = 0
        self.finite = FiniteSince()  # which term went non-finite first (dtrl.util.guard)

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        return {} if self.sum is None else dict(zip(self.keys, self.sum.unbind()))

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        if self.sum is None:
            self.keys = list(terms)
        elif list(terms) != self.keys:
            raise ValueError(f"MeanTerms got terms {sorted(terms)} after {sorted(self.keys)}")
        v = torch.stack([terms[k].detach().reshape(()).float() for k in self.keys])
        self.sum = v if self.sum is None else self.sum.add_(v)
        self.n += 1
        self.finite.add_stacked(self.keys, self.sum)

    def check(self, fault_keys: dict[str, str], where: str) -> None:
        """Raise dtrl.util.guard.DivergenceError if a term went non-finite (the earliest named first)."""
        self.finite.check(fault_keys, where)

    def means(self, prefix: str = "") -> dict[str, float]:
        if self.sum is None:
            return {}
        vals = (self.sum / max(self.n, 1)).tolist()  # the one host sync
        return {prefix + k: float(v) for k, v in zip(self.keys, vals)}


# ---------------------------------------------------------------------------------------------------
# The online loop


class ODTFamily(DTMethod):
    """ODT's online phase; subclasses implement ``_update_many`` (the gradient updates of one iteration)."""

    # Cannot change on a resume (dtrl.harness.online.OnlineMethod.resume_fixed): the optimizer's kind and the replay
    # buffer's size and sampler are checkpointed state; continue_pretrain_optimizer acts only at the start.
    resume_fixed = ("optimizer", "buffer_size", "sampler", "continue_pretrain_optimizer")

    Config = ODTConfig
    needs_dataset = True
    buffer_transitions = False  # keep the per-step arrays a critic needs in the buffer
    backbones = ("dt",)
    backbone_refusal = ("its online loss trains the DT on hindsight-relabeled RTG tokens (the returns achieved), "
                        "where Reinformer conditions on its own predicted return")

    def __init__(self, cfg: ODTConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        if ctx.dataset is None:
            raise ValueError(f"{type(self).__name__} needs the task's offline dataset to seed its replay buffer "
                             "(RunContext.dataset is None)")
        ctx.dataset.validate(ctx.obs_dim, ctx.act_dim)
        model = self.model
        model.train()
        self.K = model.cfg.context_len
        self.trainer = SupervisedTrainer(
            model, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps,
            warmup_updates=cfg.warmup_updates, grad_clip=cfg.grad_clip, temperature_lr=cfg.temperature_lr,
            entropy_samples=cfg.entropy_samples, entropy_positions=cfg.entropy_positions,
            amp_dtype=amp_dtype_of(cfg.amp), compile=cfg.compile,
            fused_forward=cfg.fused_forward)
        self.pretrain_updates = (continue_pretraining(self.trainer, ctx.pretrained_path, cfg.optimizer)
                                 if cfg.continue_pretrain_optimizer else 0)
        self.buffer = TrajectoryReplay(cfg.buffer_size, self.K, ctx.dataset.top_k(cfg.buffer_size),
                                       device=ctx.device, rng=ctx.np_rng, anchor=cfg.context_anchor,
                                       transitions=self.buffer_transitions, generator=self._window_generator(),
                                       online_last_terminal=self._online_last_terminal())
        self.online_rtg = float(ctx.task.online_rtg if cfg.online_rtg is None else cfg.online_rtg)
        self.rollout_context = min(cfg.rollout_context_len or model.cfg.eval_context_len, self.K)
        self.min_env_steps = min_env_steps_per_iteration(cfg, ctx.task)
        self.engine = RolloutEngine(ctx.task, cfg.rollouts_per_iteration, self.K, ctx.device,
                                    seed=10**8 + 10**4 * ctx.seed)

    def _online_last_terminal(self) -> bool:
        """Whether the buffer stores each online episode's last step as terminal (a subclass's choice)."""
        return False

    def _window_generator(self) -> torch.Generator | None:
        """The replay buffer's device generator (``sampler: device``), seeded from the run's seed alone,
        so the host generator's stream (exploration seeds) is the same for both samplers."""
        if self.cfg.sampler != "device":
            return None
        return torch.Generator(device=self.ctx.device).manual_seed(2 * 10**8 + 10**4 * self.ctx.seed)

    # -- exploration --------------------------------------------------------------------------------
    def _explorer(self) -> tuple[torch.nn.Module, bool]:
        """(policy module, sample actions?) the exploration rollouts use. ODT: the DT, sampled."""
        return self.model, True

    def explore(self) -> list[RolloutTrajectory]:
        """One batch of whole exploration episodes at the online RTG; ``next_observations`` filled in."""
        n = self.cfg.rollouts_per_iteration
        rng = self.ctx.np_rng  # checkpointed by the harness, so a resumed run explores the same episodes
        seeds = rng.integers(0, 2**31 - 1, size=n)
        self.engine.generator.manual_seed(int(rng.integers(0, 2**62)))
        policy, sample = self._explorer()
        trajs = self.engine.run(policy, [Start(target_rtg=self.online_rtg, seed=int(s)) for s in seeds],
                                sample_steps=0, sample_all=sample, context_len=self.rollout_context)
        for i, t in enumerate(trajs):
            # The engine still holds each env's observation after its last step.
            t.next_observations = np.concatenate([t.observations[1:], self.engine.obs[i][None]]).astype(np.float32)
        return trajs

    # -- one iteration --------------------------------------------------------------------------------
    def _update_many(self, n: int) -> dict[str, float]:
        raise NotImplementedError

    def _before_first_iteration(self) -> dict[str, float]:
        return {}

    def train_iteration(self) -> dict[str, float]:
        c = self.ctx.counters
        diag: dict[str, float] = {}
        if c.iterations == 0:
            diag.update(self._before_first_iteration())
        trajs: list[RolloutTrajectory] = []
        steps = 0
        while not trajs or steps < self.min_env_steps:
            batch = self.explore()
            for t in batch:
                self.buffer.add(t)
            trajs += batch
            steps += int(sum(len(t) for t in batch))
        c.env_steps += steps
        returns = np.array([t.total_return for t in trajs], dtype=np.float64)
        diag.update(self._update_many(self.cfg.updates_per_iteration))
        diag.update({
            "explore_return": float(returns.mean()),
            "explore_norm_return": float(np.mean(self.ctx.task.normalize(returns))),
            "explore_length": steps / len(trajs),
            "explore_episodes": len(trajs),
            # Hindsight relabeling replaces the RTG the policy was fed (online_rtg at step 0) with
            # the return achieved; this is the size of that change at the first step.
            "relabel_gap": float(self.online_rtg - returns.mean()),
            "buffer_trajectories": len(self.buffer),
            "buffer_transitions": self.buffer.num_transitions,
            "buffer_offline_left": self.buffer.seeds_left,
            "lr": float(self.trainer.last_lr),
        })
        return diag

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trainer": self.trainer.state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.trainer.load_state_dict(state["trainer"])
        self.buffer.load_state_dict(state["buffer"])
