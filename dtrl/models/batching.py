"""Vectorised context minibatches for Decision Transformer training (pretraining and ODT's replay).

:class:`ContextSampler` copies its trajectories once into flat arrays (states, actions, RTG,
timesteps, and per-step position/remaining-length tables) held on the training device, so a
minibatch of B contexts of K steps is a handful of gathers: no per-sample Python loop, no
DataLoader workers, and on CUDA no host-to-device copy beyond the B window anchors.

Windows. ``anchor="start"`` draws each context's *first* step uniformly over all stored
transitions and cuts the window at the trajectory's end, left-padding what is missing: ODT's
sampler (online-dt data.py:72,103-115 with trajectories drawn in proportion to their length,
data.py:171-182), the default of pretraining, ODT and ODT+TD3 (their ``context_anchor``).
``anchor="end"`` (this class's default) draws each context's *last* step instead
and left-pads steps before the trajectory's start, so padding sits where a rollout has it (at
episode starts) and never at episode ends. Either way trajectories are picked in proportion to
their length.

Padding: states, actions, RTG and timesteps are 0 and ``mask`` is False. ODT's data code also
pads actions with zeros (the original DT used -10). The value is irrelevant to the result, since
the model hides padded keys from every query and the losses mask padded positions; zeros keep
the padded tokens' activations in range (and finite under bf16).

RTG is raw (the model applies ``reward_scale``). By default it is the hindsight return-to-go of
each trajectory (ODT's relabeling); ``rtg_override`` supplies per-trajectory arrays instead, e.g.
the RTG tokens a policy was actually fed during a rollout (GRPO, relabel off).

Where anchors are drawn. By default (``generator=None``) from a numpy generator on the host, then
copied to the device (pinned, asynchronous): pretraining's sampler, whose checkpoint holds that
generator. With ``generator`` (a ``torch.Generator`` on the sampler's device) they are drawn on the
device, so a minibatch costs no host work beyond launching a few kernels (ODT's online updates,
``sampler: device``). Both draw each anchor uniformly over the live transitions and build the
batch with the same gathers (:meth:`ContextSampler.contexts_at`), so for the same anchors the
batches are identical; they consume different random streams, so for the same seed they draw
different anchors. The device draw is a 62-bit uniform integer reduced modulo the number of
transitions n, uniform up to a relative bias below n / 2**62 (5e-13 for a million transitions);
numpy's ``integers`` is exactly uniform. ``torch.randint(0, n)`` itself is not used: for n < 2**32
it reduces a 32-bit draw modulo n, a relative bias up to n / 2**32 (2e-4 for a million transitions).

Replay buffers: :meth:`ContextSampler.add` appends a trajectory and :meth:`ContextSampler.pop_oldest`
drops the oldest ones (FIFO, insertion order), each in time proportional to the trajectory's
length, amortised: live steps occupy a contiguous slice of over-allocated storage that is
compacted only when the end is reached.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np
import torch

from dtrl.data.trajectories import Trajectory

Anchor = Literal["end", "start"]


@dataclass
class ContextBatch:
    """B left-padded contexts of K steps, raw inputs for ``DecisionTransformer.forward``."""

    states: torch.Tensor  # (B, K, S) float32
    actions: torch.Tensor  # (B, K, A) float32
    rtg: torch.Tensor  # (B, K) float32, raw returns-to-go
    timesteps: torch.Tensor  # (B, K) int64
    mask: torch.Tensor  # (B, K) bool, True on real steps
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # (B, K, ...) per ``extra`` array

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[0])


class ContextSampler:
    """Flat, device-resident storage of trajectories and vectorised sampling of context windows.

    ``rtg_override`` / ``timesteps`` / ``extra`` values are per-trajectory arrays aligned with
    ``trajectories`` (length T each). ``timesteps`` defaults to the step index within the
    trajectory (pass absolute episode timesteps for trajectory pieces that start mid-episode).
    ``extra`` names further per-step arrays (rewards, terminals, next observations, ...) gathered
    in the same windows and returned in ``ContextBatch.extra``. ``generator``: draw anchors on the
    device with this ``torch.Generator`` (on ``device``) instead of ``rng`` (see the module docstring).
    """

    def __init__(
        self,
        trajectories: Sequence[Trajectory],
        context_len: int,
        *,
        rtg_override: Sequence[np.ndarray] | None = None,
        timesteps: Sequence[np.ndarray] | None = None,
        extra: Mapping[str, Sequence[np.ndarray]] | None = None,
        device: str | torch.device = "cpu",
        rng: np.random.Generator | None = None,
        anchor: Anchor = "end",
        generator: torch.Generator | None = None,
    ):
        if isinstance(context_len, bool) or not isinstance(context_len, (int, np.integer)) or context_len < 1:
            raise ValueError(f"context_len must be a positive integer, got {context_len!r}")
        if anchor not in ("end", "start"):
            raise ValueError(f"anchor must be 'end' or 'start', got {anchor!r}")
        trajectories = list(trajectories)
        if not trajectories:
            raise ValueError("ContextSampler needs at least one trajectory; the dataset or replay buffer is empty")
        self.context_len = int(context_len)
        self.anchor: Anchor = anchor
        self.device = torch.device(device)
        self.rng = rng if rng is not None else np.random.default_rng()
        if generator is not None and torch.device(generator.device).type != self.device.type:
            raise ValueError(f"the sampler's generator is on {generator.device}, its storage on {self.device}")
        self.generator = generator
        self.obs_dim = int(trajectories[0].observations.shape[1])
        self.act_dim = int(trajectories[0].actions.shape[1])
        self.extra_names = tuple(extra) if extra else ()
        for name, arrays in (("rtg_override", rtg_override), ("timesteps", timesteps),
                             *((f"extra['{k}']", v) for k, v in (extra or {}).items())):
            if arrays is not None and len(arrays) != len(trajectories):
                raise ValueError(f"{name} has {len(arrays)} arrays but there are {len(trajectories)} trajectories")
        parts = [self._columns(t, i, None if rtg_override is None else rtg_override[i],
                               None if timesteps is None else timesteps[i],
                               {k: v[i] for k, v in (extra or {}).items()})
                 for i, t in enumerate(trajectories)]
        flat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        n = len(flat["rtg"])
        self._store = {k: torch.from_numpy(v).to(self.device) for k, v in flat.items()}
        self._lo, self._hi = 0, n  # live steps are storage[lo:hi]
        self._lengths: deque[int] = deque(len(t) for t in trajectories)
        self._arange = torch.arange(self.context_len, device=self.device)

    # -- contents ------------------------------------------------------------------------------
    @property
    def num_trajectories(self) -> int:
        return len(self._lengths)

    @property
    def num_transitions(self) -> int:
        return self._hi - self._lo

    def __len__(self) -> int:
        return self.num_transitions

    def lengths(self) -> list[int]:
        """Trajectory lengths in insertion order (oldest first)."""
        return list(self._lengths)

    def add(self, traj: Trajectory, rtg_override: np.ndarray | None = None, timesteps: np.ndarray | None = None,
            extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Append one trajectory (newest). Same per-trajectory arrays as the constructor."""
        cols = self._columns(traj, self.num_trajectories, rtg_override, timesteps, dict(extra or {}))
        n = len(traj)
        self._reserve(n)
        for k, v in cols.items():
            self._store[k][self._hi:self._hi + n] = torch.from_numpy(v).to(self.device)
        self._hi += n
        self._lengths.append(n)

    def pop_oldest(self, n: int = 1) -> None:
        """Drop the ``n`` oldest trajectories (ODT's FIFO replay buffer)."""
        if n < 0 or n > self.num_trajectories:
            raise ValueError(f"cannot drop {n} trajectories from a sampler holding {self.num_trajectories}")
        for _ in range(n):
            self._lo += self._lengths.popleft()
        if self._lo == self._hi:  # empty: restart at the front so storage is reused
            self._lo = self._hi = 0

    # -- sampling --------------------------------------------------------------------------------
    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> ContextBatch:
        """``batch_size`` contexts with anchors drawn uniformly over all stored transitions: on the
        device with ``self.generator`` if the sampler has one and no ``rng`` is given, else with
        ``rng`` (default ``self.rng``) on the host."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.num_transitions == 0:
            raise ValueError("cannot sample from an empty ContextSampler (all trajectories were dropped)")
        if rng is None and self.generator is not None:
            return self.contexts_at(self.draw_anchors(batch_size))
        draws = (rng or self.rng).integers(0, self.num_transitions, size=batch_size, dtype=np.int64)
        return self.contexts(draws)

    def draw_anchors(self, batch_size: int) -> torch.Tensor:
        """``batch_size`` anchors (0-based over stored steps) drawn on the device with ``self.generator``."""
        # 62 random bits (torch.randint takes its 64-bit path for ranges >= 2**32, and 2**62 divides
        # 2**64, so these are exactly uniform), then mod n: see the module docstring.
        bits = torch.randint(0, 2**62, (batch_size,), generator=self.generator, device=self.device,
                             dtype=torch.int64)
        return bits.remainder_(self.num_transitions)

    def contexts(self, anchors: np.ndarray | Sequence[int]) -> ContextBatch:
        """The contexts anchored at the given transitions (0-based over stored steps, oldest first).

        With ``anchor="end"`` each index is the context's last step; with ``"start"`` its first.
        """
        a = np.asarray(anchors, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.num_transitions):
            raise IndexError(f"anchor indices must lie in [0, {self.num_transitions}), got "
                             f"[{a.min()}, {a.max()}]")
        a = torch.from_numpy(a)
        if self.device.type == "cuda":
            # Pinned source so the copy is asynchronous; the caching host allocator keeps the
            # pinned block alive until the copy has run.
            a = a.pin_memory().to(self.device, non_blocking=True)
        else:
            a = a.to(self.device)
        return self.contexts_at(a)

    def contexts_at(self, anchors: torch.Tensor) -> ContextBatch:
        """:meth:`contexts` for anchors already on the device (int64, 0-based over stored steps).

        Not range-checked (that would cost a host sync): the caller guarantees
        ``0 <= anchors < num_transitions``, as :meth:`draw_anchors` does.
        """
        a = anchors.reshape(-1) + self._lo  # storage index of each anchor
        K, ar, st = self.context_len, self._arange, self._store
        if self.anchor == "end":
            first = a - st["pos"][a]  # storage index of each anchor's trajectory start
            idx = a[:, None] - (K - 1) + ar
            valid = idx >= first[:, None]
        else:
            shift = K - st["left"][a].clamp(max=K)  # padding in front of a window cut by the trajectory end
            idx = a[:, None] - shift[:, None] + ar
            valid = ar >= shift[:, None]
        idx = torch.where(valid, idx, a[:, None])  # any in-range index; padded values are zeroed below
        pad = ~valid

        def take(name: str) -> torch.Tensor:
            x = st[name][idx]
            return x.masked_fill_(pad.view(*pad.shape, *([1] * (x.dim() - 2))), 0)

        return ContextBatch(
            states=take("states"), actions=take("actions"), rtg=take("rtg"), timesteps=take("timesteps"),
            mask=valid, extra={k: take(f"extra.{k}") for k in self.extra_names},
        )

    # -- internals --------------------------------------------------------------------------------
    def _columns(self, traj: Trajectory, i: int, rtg: np.ndarray | None, timesteps: np.ndarray | None,
                 extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(traj)
        where = f"trajectory {i}"
        if n == 0:
            raise ValueError(f"{where} is empty")
        obs, act = np.asarray(traj.observations), np.asarray(traj.actions)
        if obs.ndim != 2 or obs.shape != (n, self.obs_dim):
            raise ValueError(f"{where}: observations have shape {obs.shape}, expected ({n}, {self.obs_dim})")
        if act.ndim != 2 or act.shape != (n, self.act_dim):
            raise ValueError(f"{where}: actions have shape {act.shape}, expected ({n}, {self.act_dim})")
        rtg = traj.returns_to_go() if rtg is None else np.asarray(rtg)
        if rtg.shape != (n,):
            raise ValueError(f"{where}: rtg_override has shape {rtg.shape}, expected ({n},)")
        pos = np.arange(n, dtype=np.int64)
        ts = pos if timesteps is None else np.asarray(timesteps)
        if ts.shape != (n,):
            raise ValueError(f"{where}: timesteps have shape {ts.shape}, expected ({n},)")
        if set(extra) != set(self.extra_names):
            raise ValueError(f"{where}: extra arrays {sorted(extra)} differ from the sampler's {list(self.extra_names)}")
        cols = {
            "states": obs.astype(np.float32, copy=False),
            "actions": act.astype(np.float32, copy=False),
            "rtg": rtg.astype(np.float32, copy=False),
            "timesteps": ts.astype(np.int64, copy=False),
            "pos": pos,  # step index within the stored trajectory (window bounds, not the model's timestep)
            "left": n - pos,  # steps from here to the trajectory's end, this one included
        }
        for k, v in extra.items():
            v = np.asarray(v)
            if v.shape[:1] != (n,):
                raise ValueError(f"{where}: extra['{k}'] has {v.shape[:1]} rows, expected {n}")
            if hasattr(self, "_store") and tuple(v.shape[1:]) != tuple(self._store[f"extra.{k}"].shape[1:]):
                raise ValueError(f"{where}: extra['{k}'] has per-step shape {v.shape[1:]}, expected "
                                 f"{tuple(self._store[f'extra.{k}'].shape[1:])}")
            cols[f"extra.{k}"] = v.astype(np.float32, copy=False) if v.dtype == np.float64 else v
        return cols

    def _reserve(self, n_new: int) -> None:
        """Make room for ``n_new`` steps after ``hi``; compacts (and grows) only when the end is hit."""
        cap = next(iter(self._store.values())).shape[0]
        if self._hi + n_new <= cap:
            return
        live = self._hi - self._lo
        # Twice the live size leaves as much slack as there is data, so a full FIFO buffer is
        # recopied once per `live` appended steps: O(1) amortised per step.
        new_cap = max(cap, 2 * (live + n_new))
        for k, t in self._store.items():
            fresh = t.new_zeros((new_cap, *t.shape[1:]))
            fresh[:live] = t[self._lo:self._hi]
            self._store[k] = fresh
        self._lo, self._hi = 0, live
