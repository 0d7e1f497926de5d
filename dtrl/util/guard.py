"""Divergence checks: a non-finite loss, gradient or parameter stops a run with one clear error.

A diverged run must never be scored: a NaN policy can even score *higher* than the real one (MuJoCo
resets an unstable simulation), so the run stops in the iteration (or pretraining log row) where
the first non-finite value shows up, before any checkpoint of it is written. The harness then
records ``status: diverged`` in ``summary.json`` and ``dtrl report`` lists the run apart.

Methods check their loss terms where those reach the host anyway (one ``.item()`` per minibatch,
or one stacked read per iteration of device-side sums, which are non-finite whenever any summand
is), naming each term with the config field most likely at fault (:func:`check_terms`). The
harness also checks every parameter of the method's modules after each iteration
(:func:`nonfinite_parameters`), which catches what no term shows.

Finite losses and parameters are not enough: weights that are huge but finite can make the policy
emit NaN action means while no loss is computed at all (GRPO-DT with every group at zero spread
makes no update). So what the policy emits is checked too, where it is read anyway: the rollout
engine flags non-finite action means and NaN / +inf log-stds of every step it takes
(:class:`OutputCheck`; -inf is the deterministic head's), IQL's actor its actions, GRPO-DT the
variances it draws reset points by (:func:`check_values`), and the harness every evaluation's
returns. The config key of such a divergence is the method's ``fault_key`` (an empty ``key`` is
filled in by the harness).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch


# ODT's supervised loss terms (pretraining, ODT, ODT+TD3's actor) and the field blamed for each, in order of
# blame when several break in the same update: a policy step too large breaks everything at once.
SUPERVISED_FAULT_KEYS = {"loss": "lr", "nll": "lr", "entropy": "lr", "grad_norm": "lr",
                         "loss_temperature": "temperature_lr", "temperature": "temperature_lr"}


class DivergenceError(RuntimeError):
    """Training produced a non-finite value. ``terms``: what was non-finite; ``key``: the config key most
    likely at fault (relative to the method's config until the harness qualifies it)."""

    def __init__(self, terms: list[str], key: str, where: str = ""):
        self.terms, self.key, self.where = list(terms), key, where
        self.method: str | None = None
        self.iteration: int | None = None
        self.key_prefix = ""
        self.kept = ""
        self.finite_updates: int | None = None  # updates of the checked window before the first bad one (FiniteSince)
        super().__init__(self.message())

    def qualify(self, method: str, iteration: int, key_prefix: str, kept: str = "") -> "DivergenceError":
        """Add what the harness knows: the run's name, the iteration, the prefix of the method's config keys,
        and what was kept of the run (its last checkpoint)."""
        self.method, self.iteration, self.key_prefix, self.kept = method, iteration, key_prefix, kept
        self.args = (self.message(),)
        return self

    @property
    def config_key(self) -> str:
        """A bare field name (``lr``) is the method's own, qualified with the harness's prefix
        (``methods.grpo.lr``); a dotted key (``pretrain.lr``) is already a full config path."""
        return self.key if "." in self.key else self.key_prefix + self.key

    def message(self) -> str:
        who = f"{self.method} diverged" if self.method else "training diverged"
        at = f" at iteration {self.iteration}" if self.iteration is not None else ""
        where = f" in {self.where}" if self.where else ""
        kept = f"; {self.kept}" if self.kept else ""
        return (f"{who}{at}: non-finite {', '.join(self.terms)}{where}; most likely cause: {self.config_key} "
                f"too large (lower it){kept}")

    def record(self) -> dict[str, Any]:
        """What ``summary.json`` keeps of the divergence."""
        return {"iteration": self.iteration, "terms": self.terms, "config_key": self.config_key,
                "where": self.where, "message": self.message()}


def _value(v: Any) -> float:
    if torch.is_tensor(v):
        return float(v.detach().float().sum().item()) if v.numel() else 0.0
    return float(v)


def check_terms(values: Mapping[str, Any], fault_keys: Mapping[str, str], where: str = "",
                default_key: str = "lr") -> None:
    """Raise :class:`DivergenceError` if any term of ``values`` named in ``fault_keys`` is non-finite.

    ``fault_keys`` maps a term to the config key most likely at fault when it diverges, in order of
    blame: the key of the first non-finite term is named. None values (a term not computed) pass.
    """
    bad = [k for k in fault_keys if values.get(k) is not None and not math.isfinite(_value(values[k]))]
    if bad:
        raise DivergenceError(bad, fault_keys.get(bad[0], default_key), where)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True if every element of every tensor is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() and t.numel()]
    return bool(torch.stack(flags).all().item()) if flags else True


def nonfinite_parameters(owner: Any) -> list[str]:
    """Names of the non-finite parameters and buffers of the ``torch.nn.Module`` attributes of ``owner``
    (or of ``owner`` itself, named ``model``, when it is a module)."""
    modules = ({"model": owner} if isinstance(owner, torch.nn.Module) else
               {name: m for name, m in vars(owner).items() if isinstance(m, torch.nn.Module)})
    named = [(f"{mn}.{pn}", p) for mn, m in modules.items()
             for pn, p in [*m.named_parameters(), *m.named_buffers()]]
    named = [(n, p) for n, p in named if p.is_floating_point() and p.numel()]
    if not named or all_finite([p for _, p in named]):
        return []
    return [n for n, p in named if not bool(torch.isfinite(p).all())]


def check_parameters(owner: Any, key: str, where: str) -> None:
    bad = nonfinite_parameters(owner)
    if bad:
        shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise DivergenceError([f"parameters {shown}"], key, where)


# Weights past a limit count as diverged (the `weight_limit` field of the methods that check it; default
# WEIGHT_LIMIT). A learning rate orders of magnitude too large makes the weights it steps huge but finite, and
# the loss that overflows first is often another network's, which reads them (IQL's critic loss reads the new
# V); the weights themselves show the culprit at its own step.
WEIGHT_LIMIT = 1e6


def weight_absmax(params: Iterable[torch.Tensor], limit: float = WEIGHT_LIMIT) -> torch.Tensor:
    """max |w| over ``params`` as a 0-d tensor (no host sync), reading +inf once it exceeds ``limit``, so a
    running sum of it (:class:`FiniteSince`) names the update in which a network's weights blew up."""
    m = torch.stack(torch._foreach_norm([p.detach() for p in params], math.inf)).max().float()
    return torch.where(m > limit, torch.full_like(m, math.inf), m)


def check_values(values: Any, term: str, key: str, where: str) -> None:
    """Raise :class:`DivergenceError` naming ``term`` if any of ``values`` (array-like) is not finite."""
    import numpy as np

    if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
        raise DivergenceError([term], key, where)


class OutputCheck:
    """Flags, kept on the device, of what a policy emitted over one or more forwards: a non-finite action mean,
    a NaN or +inf log-std (-inf is the deterministic head's std 0). ``add`` launches two small kernels and
    never syncs; ``check`` reads both flags (one sync) and raises :class:`DivergenceError` (key left to the
    caller). The rollout engine checks every step, where it reads the actions back anyway."""

    TERMS = ("action means", "action log-stds")

    def __init__(self, device: torch.device):
        self.flags = torch.zeros(2, dtype=torch.bool, device=device)

    def add(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.flags |= torch.stack([(~torch.isfinite(mean)).any(),
                                   (torch.isnan(log_std) | (log_std == math.inf)).any()])

    def check(self, where: str, key: str = "") -> None:
        bad = [t for t, f in zip(self.TERMS, self.flags.tolist()) if f]
        if bad:
            raise DivergenceError(bad, key, where)


class FiniteSince:
    """For running sums of per-update loss terms kept on the device: how many updates each term stayed
    finite, so a divergence found at the end of an iteration names the term that broke *first*.

    A running sum is non-finite from the first non-finite summand on, so counting the updates after
    which it is still finite gives that update's index. Three small kernels per update, no host sync.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.count: torch.Tensor | None = None
        self.n = 0

    def add(self, sums: Mapping[str, torch.Tensor]) -> None:
        names = list(sums)
        self.add_stacked(names, torch.stack([sums[k].detach().reshape(()).float() for k in names]))

    def add_stacked(self, names: list[str], vals: torch.Tensor) -> None:
        """``vals``: the running sums of ``names`` as one 1-d tensor."""
        if self.count is None or names != self.names:
            if self.count is not None:  # a new set of terms: start over
                self.n = 0
            self.names = list(names)
            self.count = None
        ok = torch.isfinite(vals).long()
        self.count = ok if self.count is None else self.count + ok
        self.n += 1

    def check(self, fault_keys: Mapping[str, str], where: str = "", default_key: str = "lr") -> None:
        """Raise DivergenceError naming the terms that went non-finite, earliest first (ties: ``fault_keys`` order)."""
        if self.count is None:
            return
        counts = dict(zip(self.names, self.count.tolist()))  # the one host sync
        order = list(fault_keys)
        bad = sorted((k for k, c in counts.items() if c < self.n),
                     key=lambda k: (counts[k], order.index(k) if k in order else len(order)))
        if bad:
            e = DivergenceError(bad, fault_keys.get(bad[0], default_key), where)
            e.finite_updates = counts[bad[0]]
            raise e

    def reset(self) -> None:
        self.names, self.count, self.n = [], None, 0


class RecordedDivergence(RuntimeError):
    """A run asked for again whose summary records that it diverged (the message is the recorded one)."""
