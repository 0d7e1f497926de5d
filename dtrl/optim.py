"""Optimizers of DT training: LAMB as ODT used it, AdamW, and ODT's linear warmup.

:class:`Lamb` follows ``torch_optimizer.Lamb`` (the implementation ODT trained with), step for
step:

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2        (no bias correction: LAMB paper v3)
    u = m / (sqrt(v) + eps) + weight_decay * w              (decay decoupled, added to the update)
    r = clamp(||w||, 0, clamp_value) / ||u||,  r = 1 if either norm is 0
    w = w - lr * r * u

Note that ``torch_optimizer`` clamps the *weight norm* to [0, 10], not the ratio; that is kept.
No step synchronises with the host (the "norm is 0" cases are a ``torch.where``), so a GPU
training step is never stalled by the optimizer.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class Lamb(Optimizer):
    """LAMB (``torch_optimizer.Lamb`` semantics, see the module docstring).

    ``impl`` picks the kernel layout; all three compute the same step:

    - ``"flat"``: the moments of a parameter group live in one flat buffer (each parameter's state
      is a view into it), so the update and the per-tensor trust-ratio scaling are a few large
      kernels instead of one per tensor. Used by ``"auto"`` when the group's parameters share a
      device and dtype and all have gradients; the fastest on GPU, where per-tensor launches
      otherwise dominate a step of a small transformer.
    - ``"foreach"``: multi-tensor kernels over lists of tensors.
    - ``"loop"``: one parameter at a time (the reference).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, clamp_value: float = 10.0,
                 impl: Literal["auto", "flat", "foreach", "loop"] = "auto"):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if clamp_value <= 0.0:
            raise ValueError(f"invalid clamp_value {clamp_value}")
        if impl not in ("auto", "flat", "foreach", "loop"):
            raise ValueError(f"invalid impl {impl!r}: expected auto, flat, foreach or loop")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, clamp_value=clamp_value)
        self.impl = impl
        self._flat: dict[int, dict[str, Any]] = {}  # per group index: flat buffers, rebuilt after a load
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat.clear()  # loaded moments are separate tensors again; re-pack them on the next step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_flat"):
            self._flat.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            homogeneous = len({(p.device, p.dtype) for p in group["params"]}) == 1
            impl = self.impl
            if impl == "auto":
                impl = "flat" if homogeneous and len(params) == len(group["params"]) else \
                    "foreach" if homogeneous else "loop"
            if impl == "flat":
                if not homogeneous or len(params) != len(group["params"]):
                    raise RuntimeError("Lamb(impl='flat') needs one device and dtype per group and a gradient "
                                       "for every parameter; use impl='auto'")
                flat = self._flat_state(gi, group)
            else:
                for p in params:
                    self._init_state(p)
            for p in params:
                self.state[p]["step"] += 1
            kw = dict(lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                      weight_decay=group["weight_decay"], clamp_value=group["clamp_value"])
            grads = [p.grad for p in params]
            if impl == "flat":
                _lamb_flat(params, grads, flat, **kw)
            else:
                fn = _lamb_foreach if impl == "foreach" else _lamb_loop
                fn(params, grads, [self.state[p]["exp_avg"] for p in params],
                   [self.state[p]["exp_avg_sq"] for p in params], **kw)
        return loss

    def _init_state(self, p: torch.Tensor) -> None:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _flat_state(self, gi: int, group: dict[str, Any]) -> dict[str, Any]:
        """The group's moments packed into flat buffers, existing state (fresh or loaded) copied in."""
        if gi in self._flat:
            return self._flat[gi]
        params = group["params"]
        sizes = [p.numel() for p in params]
        like = params[0]
        out: dict[str, Any] = {"lengths": torch.tensor(sizes, device=like.device), "numel": sum(sizes)}
        for key in ("exp_avg", "exp_avg_sq", "update"):
            buf = torch.zeros(out["numel"], device=like.device, dtype=like.dtype)
            views = [v.view_as(p) for v, p in zip(buf.split(sizes), params)]
            if key != "update":
                for p, v in zip(params, views):
                    state = self.state[p]
                    if key in state:
                        v.copy_(state[key])
                    state[key] = v
                    state.setdefault("step", 0)
            out[key], out[key + "_views"] = buf, views
        self._flat[gi] = out
        return out


def _trust_ratio(w_norm: torch.Tensor, u_norm: torch.Tensor, clamp_value: float) -> torch.Tensor:
    w_norm = w_norm.clamp(0.0, clamp_value)
    ok = (w_norm > 0) & (u_norm > 0)
    return torch.where(ok, w_norm / torch.where(ok, u_norm, torch.ones_like(u_norm)), torch.ones_like(w_norm))


def _lamb_flat(params, grads, flat, *, lr, beta1, beta2, eps, weight_decay, clamp_value):
    m, v, u = flat["exp_avg"], flat["exp_avg_sq"], flat["update"]
    torch._foreach_mul_(flat["exp_avg_views"], beta1)
    torch._foreach_add_(flat["exp_avg_views"], grads, alpha=1.0 - beta1)
    torch._foreach_mul_(flat["exp_avg_sq_views"], beta2)
    torch._foreach_addcmul_(flat["exp_avg_sq_views"], grads, grads, value=1.0 - beta2)
    torch.sqrt(v, out=u)
    u.add_(eps)
    torch.div(m, u, out=u)
    if weight_decay != 0.0:
        torch._foreach_add_(flat["update_views"], params, alpha=weight_decay)
    w_norm = torch.stack(torch._foreach_norm(params))
    u_norm = torch.segment_reduce(u.square(), "sum", lengths=flat["lengths"]).sqrt()
    scale = _trust_ratio(w_norm, u_norm, clamp_value) * -lr
    u.mul_(torch.repeat_interleave(scale, flat["lengths"], output_size=flat["numel"]))
    torch._foreach_add_(params, flat["update_views"])


def _lamb_foreach(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, clamp_value):
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(exp_avgs, denom)
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    w_norm = torch.stack(torch._foreach_norm(params))
    u_norm = torch.stack(torch._foreach_norm(updates))
    scale = _trust_ratio(w_norm, u_norm, clamp_value) * -lr
    torch._foreach_mul_(updates, list(scale.unbind()))
    torch._foreach_add_(params, updates)


def _lamb_loop(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, clamp_value):
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        u = m / (v.sqrt() + eps)
        if weight_decay != 0.0:
            u.add_(p, alpha=weight_decay)
        ratio = _trust_ratio(p.norm(), u.norm(), clamp_value)
        p.add_(u * (ratio * -lr))


def make_optimizer(params: Iterable, name: str, lr: float, weight_decay: float, eps: float = 1e-8) -> Optimizer:
    """'lamb' (ODT) or 'adamw' over ``params``; the fused AdamW kernel is used on CUDA."""
    params = list(params)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay, eps=eps)
    if name == "adamw":
        fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, fused=fused or None)
    raise ValueError(f"unknown optimizer '{name}': expected 'lamb' or 'adamw'")


def warmup_schedule(optimizer: Optimizer, warmup: int) -> LambdaLR:
    """ODT's linear warmup: lr * min((step + 1) / warmup, 1); constant lr when warmup <= 0."""
    if warmup <= 0:
        return LambdaLR(optimizer, _constant)
    return LambdaLR(optimizer, _Warmup(int(warmup)))


def _constant(step: int) -> float:
    return 1.0


class _Warmup:
    """Warmup factor as a callable object, so LambdaLR's state_dict records the warmup length too."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return min((step + 1) / self.warmup, 1.0)
