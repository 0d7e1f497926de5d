"""Optimizers of DT training: LAMB as ODT used it, AdamW, and ODT's linear warmup.

:class:`Lamb` computes the step of ODT's own ``lamb.py`` (facebookresearch/online-dt, lamb.py, the
NVLAMB variant of timm's Lamb; ODT constructs it as ``Lamb(params, lr, weight_decay, eps=1e-8)``,
online-dt main.py, so every other argument keeps its default: bias correction on, betas
(0.9, 0.999), global grad-norm scaling at 1.0, no trust clipping, no adaptation without decay):

    c = max(1, ||g||_global / max_grad_norm);  g = g / c          (lamb.py:108-127, 151)
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2              (lamb.py:164-165)
    u = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)       (lamb.py:142-146, 167-168)
    u = u + weight_decay * w                                      (lamb.py:170-172)
    if weight_decay != 0:  u = u * ||w|| / ||u||,  1 if either norm is 0, unclamped  (lamb.py:174-188)
    w = w - lr * u                                                (lamb.py:190)

``||g||_global`` is taken over every parameter with a gradient in every group. Parameters with
zero weight decay take plain bias-corrected Adam steps (ODT's ``always_adapt=False``). One
difference that never matters here: the step count ``t`` is kept per parameter (as torch's
optimizers do, so a checkpoint carries it), where ``lamb.py`` counts steps per group; the two
differ only for a parameter that had no gradient on some step.

No step synchronises with the host (the "norm is 0" cases are a ``torch.where``), so a GPU
training step is never stalled by the optimizer.
"""

from __future__ import annotations

import math
import types
from typing import Any, Iterable, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class Lamb(Optimizer):
    """LAMB with the semantics of ODT's ``lamb.py`` (see the module docstring).

    ``max_grad_norm=None`` switches the global gradient scaling off; ``bias_correction=False``
    gives the LAMB paper's v3 update. ``impl`` picks the kernel layout; all three compute the same
    step:

    - ``"flat"``: the moments of a parameter group live in one flat buffer (each parameter's state
      is a view into it), so the update and the per-tensor trust-ratio scaling are a few large
      kernels instead of one per tensor. Used by ``"auto"`` when the group's parameters share a
      device and dtype and all have gradients; the fastest on GPU, where per-tensor launches
      otherwise dominate a step of a small transformer.
    - ``"foreach"``: multi-tensor kernels over lists of tensors.
    - ``"loop"``: one parameter at a time (the reference).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = True,
                 max_grad_norm: float | None = 1.0, impl: Literal["auto", "flat", "foreach", "loop"] = "auto"):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if max_grad_norm is not None and max_grad_norm <= 0.0:
            raise ValueError(f"invalid max_grad_norm {max_grad_norm} (None switches the scaling off)")
        if impl not in ("auto", "flat", "foreach", "loop"):
            raise ValueError(f"invalid impl {impl!r}: expected auto, flat, foreach or loop")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bool(bias_correction))
        self.max_grad_norm = max_grad_norm  # global over all groups, as lamb.py's self.defaults['max_grad_norm']
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

    def _grad_divisor(self) -> torch.Tensor | None:
        """max(1, ||g|| / max_grad_norm) over every gradient of every group (lamb.py:108-127)."""
        if self.max_grad_norm is None:
            return None
        flat = self._flat.get(0)
        if (len(self.param_groups) == 1 and flat is not None
                and all(p.grad is v for p, v in zip(self.param_groups[0]["params"], flat["grad_views"]))):
            return (torch.linalg.vector_norm(flat["grad"]) / self.max_grad_norm).clamp_min(1.0)
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return None
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        return (norm / self.max_grad_norm).clamp_min(1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        divisor = self._grad_divisor()
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            impl = self._layout(group)
            if impl == "flat":
                flat = self._flat_state(gi, group)
            else:
                for p in params:
                    self._init_state(p)
            beta1, beta2 = group["betas"]
            steps = []
            for p in params:
                self.state[p]["step"] += 1
                steps.append(self.state[p]["step"])
            if group["bias_correction"]:
                bc1 = [1.0 - beta1 ** t for t in steps]
                bc2_sqrt = [math.sqrt(1.0 - beta2 ** t) for t in steps]
            else:
                bc1 = bc2_sqrt = [1.0] * len(steps)
            kw = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                      weight_decay=group["weight_decay"], bc1=bc1, bc2_sqrt=bc2_sqrt)
            if impl == "flat":
                grad = self._bind_flat_grad(flat, params)
                _lamb_flat(params, grad if divisor is None else grad / divisor, flat, **kw)
            else:
                grads = [p.grad for p in params]
                if divisor is not None:
                    grads = torch._foreach_div(grads, divisor)
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

    def flat_grad(self) -> torch.Tensor | None:
        """The gradients as one flat tensor, every parameter's ``.grad`` a view into it, or None where that
        layout does not apply (several groups, mixed devices/dtypes, a parameter without a gradient,
        ``impl`` not flat/auto). While the views stay bound (:meth:`zero_grad` with ``set_to_none=False``
        zeroes the buffer in place and backward accumulates into it), clipping and the step each run as a
        few kernels on one tensor instead of one kernel per parameter."""
        if len(self.param_groups) != 1 or self._layout(self.param_groups[0]) != "flat":
            return None
        return self._bind_flat_grad(self._flat_state(0, self.param_groups[0]), self.param_groups[0]["params"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        flat = self._flat.get(0)
        if (set_to_none or len(self.param_groups) != 1 or flat is None
                or not all(p.grad is v for p, v in zip(self.param_groups[0]["params"], flat["grad_views"]))):
            return super().zero_grad(set_to_none)
        flat["grad"].zero_()

    def _layout(self, group: dict[str, Any]) -> str:
        """The kernel layout of a step of ``group`` (see the class docstring)."""
        params = group["params"]
        homogeneous = len({(p.device, p.dtype) for p in params}) == 1
        all_grads = all(p.grad is not None for p in params)
        if self.impl == "flat" and not (homogeneous and all_grads):
            raise RuntimeError("Lamb(impl='flat') needs one device and dtype per group and a gradient "
                               "for every parameter; use impl='auto'")
        if self.impl != "auto":
            return self.impl
        return "flat" if homogeneous and all_grads else "foreach" if homogeneous else "loop"

    @staticmethod
    def _bind_flat_grad(flat: dict[str, Any], params: list[torch.Tensor]) -> torch.Tensor:
        """The flat gradient buffer, after copying in any gradient that is not already its view."""
        views = flat["grad_views"]
        if not all(p.grad is v for p, v in zip(params, views)):
            torch._foreach_copy_(views, [p.grad for p in params])
            for p, v in zip(params, views):
                p.grad = v
        return flat["grad"]

    def _flat_state(self, gi: int, group: dict[str, Any]) -> dict[str, Any]:
        """The group's moments packed into flat buffers, existing state (fresh or loaded) copied in."""
        if gi in self._flat:
            return self._flat[gi]
        params = group["params"]
        sizes = [p.numel() for p in params]
        like = params[0]
        out: dict[str, Any] = {"lengths": torch.tensor(sizes, device=like.device), "numel": sum(sizes)}
        for key in ("exp_avg", "exp_avg_sq", "update", "grad"):
            buf = torch.zeros(out["numel"], device=like.device, dtype=like.dtype)
            views = [v.view_as(p) for v, p in zip(buf.split(sizes), params)]
            if key in ("exp_avg", "exp_avg_sq"):
                for p, v in zip(params, views):
                    state = self.state[p]
                    if key in state:
                        v.copy_(state[key])
                    state[key] = v
                    state.setdefault("step", 0)
            out[key], out[key + "_views"] = buf, views
        self._flat[gi] = out
        return out


def _trust_ratio(w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
    ok = (w_norm > 0) & (u_norm > 0)
    return torch.where(ok, w_norm / torch.where(ok, u_norm, torch.ones_like(u_norm)), torch.ones_like(w_norm))


def _lamb_flat(params, grad, flat, *, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
    """The step on the flat layout; ``grad`` is the flat gradient (the layout of ``flat``'s buffers)."""
    m, v, u = flat["exp_avg"], flat["exp_avg_sq"], flat["update"]
    m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    torch.sqrt(v, out=u)
    same_step = len(set(bc1)) == 1  # the usual case: one scalar per group, no per-tensor kernels
    if same_step:
        u.div_(bc2_sqrt[0]).add_(eps)
        torch.div(m, u, out=u)
        u.div_(bc1[0])
    else:
        torch._foreach_div_(flat["update_views"], bc2_sqrt)
        u.add_(eps)
        torch.div(m, u, out=u)
        torch._foreach_div_(flat["update_views"], bc1)
    if weight_decay != 0.0:
        torch._foreach_add_(flat["update_views"], params, alpha=weight_decay)
        w_norm = torch.stack(torch._foreach_norm(params))
        u_norm = torch.segment_reduce(u.square(), "sum", lengths=flat["lengths"]).sqrt()
        scale = _trust_ratio(w_norm, u_norm) * -lr
        u.mul_(torch.repeat_interleave(scale, flat["lengths"], output_size=flat["numel"]))
    else:
        u.mul_(-lr)
    torch._foreach_add_(params, flat["update_views"])


def _lamb_foreach(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(exp_avgs, bc1)
    torch._foreach_div_(updates, denom)
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
        w_norm = torch.stack(torch._foreach_norm(params))
        u_norm = torch.stack(torch._foreach_norm(updates))
        scale = _trust_ratio(w_norm, u_norm) * -lr
        torch._foreach_mul_(updates, list(scale.unbind()))
    else:
        torch._foreach_mul_(updates, -lr)
    torch._foreach_add_(params, updates)


def _lamb_loop(params, grads, exp_avgs, exp_avg_sqs, *, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
    for p, g, m, v, c1, c2 in zip(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2_sqrt):
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        u = (m / c1) / (v.sqrt() / c2 + eps)
        if weight_decay != 0.0:
            u.add_(p, alpha=weight_decay)
            u.mul_(_trust_ratio(p.norm(), u.norm()))
        p.add_(u, alpha=-lr)


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


def load_optimizer_state(optimizer: Optimizer, state: dict[str, Any],
                         scheduler: LambdaLR | None = None, scheduler_state: dict[str, Any] | None = None) -> None:
    """Resume ``optimizer`` (and its ``scheduler``) from a checkpoint, keeping the hyperparameters it was built
    with: the moments and step counts come from ``state``, the learning rates, weight decay, betas and eps and
    the schedule's shape (a warmup length) stay the current config's.

    ``load_state_dict`` alone would restore the checkpoint's hyperparameters too, so a run resumed with a
    changed ``lr`` (``--allow-config-change``) would record the new value and keep training at the old one.
    With an unchanged config the result is bit-identical to a plain load: the scheduled learning rate is
    recomputed by LambdaLR's own formula, ``base_lr * lambda(last_epoch)``.
    """
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    shapes = None if scheduler is None else [None if isinstance(f, types.FunctionType) else dict(vars(f))
                                             for f in scheduler.lr_lambdas]
    optimizer.load_state_dict(state)
    for g, h in zip(optimizer.param_groups, hyper):
        g.update(h)
    if scheduler is None:
        return
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    for f, shape in zip(scheduler.lr_lambdas, shapes):
        if shape is not None:
            vars(f).update(shape)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    for g, base, f in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        g["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
