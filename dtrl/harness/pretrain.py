"""Offline supervised pretraining of the Decision Transformer.

The objective follows ``model.action_head``: ODT's NLL - temperature x entropy for the stochastic
head (``dtrl.models.losses.dt_supervised_loss``), ODT+TD3's masked MSE for the deterministic one
(``dtrl.models.losses.dt_mse_loss``; no temperature, no entropy).

One run per (task, seed), head and backbone, writing under ``<results>/pretrain/<task>/seed<seed>/``
(stochastic DT), ``<results>/pretrain_det/<task>/seed<seed>/`` (deterministic DT) or
``<results>/pretrain_<backbone>/<task>/seed<seed>/`` (another backbone, e.g. Reinformer, whose own
objective comes from its ``supervised_terms``: dtrl.models.backbone)::

    pretrain.csv     updates, loss, nll, entropy, temperature (stochastic) or mse (deterministic),
                     lr, grad_norm, updates_per_s, wall_time
    checkpoint.pt    resumable state every ``pretrain.checkpoint_every`` updates (removed when done)
    summary.json     updates, wall time, throughput, final loss terms, evaluation returns
    model.pt         written last, its presence marks the run complete:
                     {"dt": dt_payload(model), "trainer": optimizer/scheduler state, "task", "seed",
                      "updates", "config"}

A killed run restarts from ``checkpoint.pt`` and ends with the same weights as an uninterrupted
run (bit for bit when not compiled; within float rounding under ``pretrain.compile``): the
checkpoint holds the model, both optimizers, the scheduler, every RNG (the numpy generator that
draws minibatches included) and the logging accumulators.

Speed: minibatches are gathered on the training device (:mod:`dtrl.models.batching`), diagnostics stay
on the device until a log row, LAMB packs its state (and on CPU the gradients) into flat buffers, on CPU
the forward is :func:`dtrl.models.fused_dt.fused_forward` (``pretrain.fused_forward``: the same function and
dropout masks in fewer, larger ops; docs/performance.md), and on CUDA the forward and
loss run in bf16 autocast and under ``torch.compile`` with CUDA graphs, since a step of this small
transformer is otherwise bound by kernel-launch overhead rather than by the GPU.

:class:`SupervisedTrainer` is the update itself (policy step with LAMB/AdamW + warmup + gradient
clipping, temperature step with Adam), kept apart from the loop so ODT's online phase can reuse it
and continue from the pretraining optimizer state stored in ``model.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtrl.models.batching import ContextBatch, ContextSampler
from dtrl.models.checkpoint import dt_payload
from dtrl.config import ConfigError, to_dict
from dtrl.data.trajectories import DataError, TrajectoryDataset
from dtrl.util.guard import SUPERVISED_FAULT_KEYS, DivergenceError, FiniteSince, check_parameters
from dtrl.util.io import atomic_torch_save, atomic_write_json, read_json, torch_load
from dtrl.util.logger import CpuClock, RunLogger
from dtrl.models.losses import dt_mse_loss, dt_supervised_loss
from dtrl.models.dt import DecisionTransformer, ModelConfig, build_model
from dtrl.models.fused_dt import fused_forward
from dtrl.harness.online import _rng_state, _set_rng_state, eval_seed, resolve_device, seed_everything
from dtrl.models.optim import Lamb, load_optimizer_state, make_optimizer, warmup_schedule
from dtrl.config.pretrain import PretrainConfig, pretrain_dir
from dtrl.util.lock import hold
from dtrl.tasks import Task

PRETRAIN_COLUMNS = ["updates", "loss", "nll", "entropy", "temperature", "lr", "grad_norm", "updates_per_s",
                    "wall_time", "cpu_s"]
PRETRAIN_COLUMNS_DETERMINISTIC = ["updates", "loss", "mse", "lr", "grad_norm", "updates_per_s", "wall_time", "cpu_s"]
# A backbone with its own loss (dtrl.models.backbone: supervised_terms) logs its extra terms after the DT's.
BACKBONE_TERMS = {"reinformer": ("rtg_loss",)}


COMPILE_MODES = ("off", "default", "reduce-overhead")


def autocast(device_type: str, amp_dtype: torch.dtype | None):
    """The autocast context of DT training and its online finetuning: ``amp_dtype`` (bf16) on CUDA only.

    The CPU always runs in fp32: bf16 there changes every loss beyond float tolerance for little (on the CPU grid's
    host, whose matmuls run 2x faster in bf16, the whole 2 x 64 update gains 1.17x: docs/performance.md)."""
    if amp_dtype is not None and device_type == "cuda":
        return torch.autocast(device_type, dtype=amp_dtype)
    return contextlib.nullcontext()


def fp32_matmul_precision(amp: str) -> str:
    """torch's float32 matmul precision for training with ``amp``: TF32 ('high') for what bf16 autocast leaves in
    fp32; true fp32 ('highest') with ``amp: off``, the numerics of the code behind the published numbers
    (RL_as_Vitamin trains without autocast under torch 2.0.1, readme.md:46, whose TF32 matmuls are off by
    default; online-dt pins torch 1.8.1, conda_env.yml, which had them on by default on Ampere GPUs)."""
    return "highest" if amp_dtype_of(amp) is None else "high"


def amp_dtype_of(amp: str) -> torch.dtype | None:
    """``pretrain.amp`` / an online method's ``amp`` field as the dtype :func:`autocast` takes."""
    if amp not in ("off", "bf16"):
        raise ValueError(f"amp must be off or bf16, got {amp!r}")
    return torch.bfloat16 if amp == "bf16" else None


class CompiledLoss:
    """A loss function under ``torch.compile(mode=...)`` on CUDA, eager elsewhere: the one switch that
    pretraining (``pretrain.compile``), ODT and ODT+TD3 (their ``compile``) share.

    ``step(loss_fn)`` runs one forward+backward with the loss function given to it; calling
    ``compiled(step)`` marks a new CUDA-graph step first (``reduce-overhead``: outputs of the previous
    replay may be overwritten from here on) and, on the first call, falls back to eager with a
    warning if compilation fails (nothing has been stepped yet, so nothing is lost but the compile
    time). Only the loss computation is compiled (forward, loss and, through AOT autograd, their
    backward); it reads the modules' own parameters, so their state_dicts are unchanged.
    """

    def __init__(self, fn, mode: str, device_type: str):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be off, default or reduce-overhead, got {mode!r}")
        self.eager = fn
        self.mode = mode if device_type == "cuda" else "off"
        self.fn = fn if self.mode == "off" else torch.compile(fn, mode=self.mode)
        self.unproven = self.mode != "off"

    def __call__(self, step):
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        if not self.unproven:
            return step(self.fn)
        self.unproven = False
        try:
            return step(self.fn)
        except Exception as e:  # noqa: BLE001 - any compiler failure; real input errors re-raise below
            warnings.warn(f"torch.compile(mode={self.mode!r}) failed ({type(e).__name__}: {e}); "
                          "training continues without compilation", RuntimeWarning, stacklevel=3)
            self.mode, self.fn = "off", self.eager
            return step(self.fn)


class SupervisedTrainer:
    """ODT's update on one context minibatch: policy loss -> clipped LAMB/AdamW step with warmup;
    temperature loss -> Adam step on ``log_temperature``. Returns detached tensors (no host sync).

    A deterministic DT (``model.action_head``) trains with the masked MSE and has no temperature
    (``temperature_optimizer`` is None); its terms are ``DETERMINISTIC_TERMS``."""

    TERMS = ("loss", "loss_temperature", "nll", "entropy", "temperature", "grad_norm")
    DETERMINISTIC_TERMS = ("loss", "mse", "grad_norm")

    def __init__(self, model: DecisionTransformer, *, optimizer: str = "lamb", lr: float = 1e-4,
                 weight_decay: float = 5e-4, eps: float = 1e-8, warmup_updates: int = 10_000,
                 grad_clip: float = 0.25, temperature_lr: float = 1e-4, entropy_samples: int = 1,
                 entropy_positions: str = "all", amp_dtype: torch.dtype | None = None, compile: str = "off",
                 fused_forward: bool = True):
        self.model = model
        self.deterministic = bool(getattr(model, "deterministic", False))
        self.terms = self.DETERMINISTIC_TERMS if self.deterministic else self.TERMS
        extra = BACKBONE_TERMS.get(getattr(model, "backbone", "dt"), ())
        self.terms = self.terms[:-1] + extra + self.terms[-1:]  # grad_norm stays last
        self.policy_params = model.policy_parameters()
        self.optimizer = make_optimizer(self.policy_params, optimizer, lr, weight_decay, eps)
        self.scheduler = warmup_schedule(self.optimizer, warmup_updates)
        self.device_type = self.policy_params[0].device.type
        # fused: one kernel instead of a dozen for a single scalar parameter.
        self.temperature_optimizer = None if self.deterministic else torch.optim.Adam(
            [model.log_temperature], lr=temperature_lr, betas=(0.9, 0.999),
            fused=True if self.device_type == "cuda" else None)
        self.grad_clip = float(grad_clip)
        self.entropy_samples = int(entropy_samples)
        self.entropy_positions = entropy_positions
        # Autocast only where it pays: bf16 on CUDA (see autocast).
        self.amp_dtype = amp_dtype if self.device_type == "cuda" else None
        self.compiled = CompiledLoss(self._losses, compile, self.device_type)
        # The fused training forward where it is the same function and it pays: a plain DT on CPU
        # (on CUDA, torch.compile removes the overhead it is about; another backbone has its own forward).
        self.fused_forward = bool(fused_forward) and self.device_type == "cpu" and type(model) is DecisionTransformer
        self.updates = 0
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.flat_grad: torch.Tensor | None = None  # LAMB's flat gradient, once a step has bound it

    @classmethod
    def from_config(cls, model: DecisionTransformer, cfg: PretrainConfig) -> "SupervisedTrainer":
        return cls(model, optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps,
                   warmup_updates=cfg.warmup_updates, grad_clip=cfg.grad_clip, temperature_lr=cfg.temperature_lr,
                   entropy_samples=cfg.entropy_samples, entropy_positions=cfg.entropy_positions,
                   amp_dtype=amp_dtype_of(cfg.amp), compile=cfg.compile,
                   fused_forward=cfg.fused_forward)

    @property
    def compile(self) -> str:
        """The compile mode in effect: ``off`` on CPU or after a failed compilation."""
        return self.compiled.mode

    def _losses(self, states, actions, rtg, timesteps, mask) -> dict[str, torch.Tensor]:
        model = self.model
        if hasattr(model, "supervised_terms"):  # a backbone with its own objective (dtrl.models.backbone)
            with autocast(self.device_type, self.amp_dtype):
                terms = model.supervised_terms(states, actions, rtg, timesteps, mask, self.entropy_samples)
            terms["total"] = terms["loss"] + terms["loss_temperature"]
            return terms
        with autocast(self.device_type, self.amp_dtype):
            forward = functools.partial(fused_forward, model) if self.fused_forward else model
            dist = forward(states, actions, rtg, timesteps, mask)
        if self.deterministic:
            terms = dt_mse_loss(dist, actions, mask)
            terms["total"] = terms["loss"]
            return terms
        terms = dt_supervised_loss(dist, actions, mask, model.log_temperature, model.target_entropy,
                                   self.entropy_samples, self.entropy_positions)
        # One backward for both: the detaches inside the loss keep each gradient on its own parameters.
        terms["total"] = terms["loss"] + terms["loss_temperature"]
        return terms

    def update(self, batch: ContextBatch) -> dict[str, torch.Tensor]:
        terms = self.compiled(lambda loss_fn: self._forward_backward(loss_fn, batch))
        grad_norm = self.step()
        # Copied out in one kernel: CUDA-graph outputs are overwritten by the next update, and
        # callers may keep these across updates.
        values = torch.stack([terms[k].detach().float() for k in self.terms[:-1]] + [grad_norm.detach().float()])
        return dict(zip(self.terms, values.unbind()))

    def zero_grad(self) -> None:
        # Kept bound to LAMB's flat gradient buffer (zeroed in place) so backward accumulates into it. A
        # parameter no loss reaches would then step with a zero gradient instead of none; every parameter of
        # the DT and of Reinformer gets one from these losses.
        self.optimizer.zero_grad(set_to_none=self.flat_grad is None)
        if self.temperature_optimizer is not None:
            self.temperature_optimizer.zero_grad(set_to_none=True)

    def step(self) -> torch.Tensor:
        """After a backward: clip the policy gradient, step both optimizers and the warmup schedule.

        Returns the policy gradient norm before clipping. Methods that add terms to ODT's loss
        (ODT+TD3) call zero_grad / backward / step themselves.
        """
        # CPU: LAMB's gradients in one flat buffer, so clipping is three kernels, not three per parameter
        # (CUDA keeps per-parameter gradients: its compiled step is unmeasured with the flat buffer).
        flat = self.optimizer.flat_grad() if isinstance(self.optimizer, Lamb) and self.device_type == "cpu" else None
        self.flat_grad = flat
        if flat is not None:  # clip_grad_norm_'s arithmetic, on one tensor
            grad_norm = torch.linalg.vector_norm(flat)
            if self.grad_clip > 0:
                flat.mul_((self.grad_clip / (grad_norm + 1e-6)).clamp_max(1.0))
        elif self.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, self.grad_clip, foreach=True)
        else:
            grads = [p.grad for p in self.policy_params if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.temperature_optimizer is not None:
            self.temperature_optimizer.step()
        self.scheduler.step()
        self.updates += 1
        return grad_norm

    def _forward_backward(self, loss_fn, batch: ContextBatch) -> dict[str, torch.Tensor]:
        terms = loss_fn(batch.states, batch.actions, batch.rtg, batch.timesteps, batch.mask)
        self.zero_grad()
        terms["total"].backward()
        return terms

    def state_dict(self) -> dict[str, Any]:
        temp = self.temperature_optimizer
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "temperature_optimizer": None if temp is None else temp.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume both optimizers and the schedule; their hyperparameters stay this trainer's (the config's)."""
        load_optimizer_state(self.optimizer, state["optimizer"], self.scheduler, state["scheduler"])
        if self.temperature_optimizer is not None:
            load_optimizer_state(self.temperature_optimizer, state["temperature_optimizer"])
        self.updates = int(state["updates"])
        self.last_lr = self.scheduler.get_last_lr()[0]


def build_dt(model_cfg: ModelConfig, task: Task, dataset: TrajectoryDataset) -> DecisionTransformer:
    """The DT for ``dataset``: its dims and state statistics, the task's reward scale, and a timestep
    table covering the task's episode limit and the longest trajectory."""
    longest = max(len(t) for t in dataset.trajectories)
    cfg = dataclasses.replace(model_cfg, max_timestep=max(model_cfg.max_timestep, task.max_episode_steps, longest))
    mean, std = dataset.state_stats()
    return build_model(dataset.obs_dim, dataset.act_dim, cfg, task.reward_scale, mean, std)


def default_out_dir(results: str | Path, task_name: str, seed: int, head: str = "gaussian",
                    backbone: str = "dt") -> Path:
    """Where pretraining of ``task_name``/``seed`` with action head ``head`` and ``backbone`` writes."""
    return Path(results) / pretrain_dir(head, backbone) / task_name / f"seed{seed}"


def pretrain(exp, task: Task, seed: int, dataset: TrajectoryDataset, out_dir: str | Path | None = None,
             allow_config_change: bool = False, wait: bool = False) -> dict[str, Any]:
    """Pretrain a DT on ``dataset`` as ``exp.model`` / ``exp.pretrain`` say; resumable; returns the summary.

    A finished run (``model.pt`` present) is not redone: its summary is returned. The override
    entries matching ``task`` are applied first (``exp.for_task``), so ``model.pt`` records them.
    Resuming under another model/pretrain config raises ConfigError unless ``allow_config_change``.
    A non-finite loss term or parameter raises :class:`dtrl.util.guard.DivergenceError` after writing a
    ``status: diverged`` summary (no model.pt; the last, finite checkpoint stays). One process at a time
    pretrains a directory (dtrl.util.lock): another one raises LockHeld, or waits for it with ``wait``.
    """
    exp = exp.for_task(task.name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(exp.results, task.name, seed,
                                                                      exp.model.action_head, exp.model.backbone)
    model_path, summary_path = out / "model.pt", out / "summary.json"
    if model_path.exists():
        return read_json(summary_path) if summary_path.exists() else {"task": task.name, "seed": seed}
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: the dataset holds no trajectories; nothing to pretrain on")
    dataset.validate()
    device = resolve_device(exp.device)  # before anything is written: a bad device leaves no directory behind
    with hold(out, f"the pretraining of {task.name} seed {seed}", wait):
        if model_path.exists():  # finished by the process we waited for
            return read_json(summary_path) if summary_path.exists() else {"task": task.name, "seed": seed}
        return _pretrain(exp, task, seed, dataset, out, device, allow_config_change)


def _pretrain(exp, task: Task, seed: int, dataset: TrajectoryDataset, out: Path, device: torch.device,
              allow_config_change: bool) -> dict[str, Any]:
    from dtrl.harness.provenance import check_resume, code_version

    cfg: PretrainConfig = exp.pretrain
    model_path, summary_path, ckpt_path = out / "model.pt", out / "summary.json", out / "checkpoint.pt"
    out.mkdir(parents=True, exist_ok=True)
    if exp.threads > 0:
        torch.set_num_threads(exp.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision(fp32_matmul_precision(cfg.amp))

    np_rng = seed_everything(seed)
    model = build_dt(exp.model, task, dataset).to(device)
    trainer = SupervisedTrainer.from_config(model, cfg)
    sampler = ContextSampler(dataset.trajectories, model.cfg.context_len, device=device, rng=np_rng,
                             anchor=cfg.context_anchor)
    logger = RunLogger(out / "pretrain.csv")
    # Per-update diagnostics summed on the device between log rows (one host sync per row, not per update).
    acc_terms = [k for k in trainer.terms if k != "loss_temperature"]
    acc = torch.zeros(len(acc_terms), device=device)
    n_acc, updates, wall_before, cpu_before = 0, 0, 0.0, 0.0
    run_config = pretrain_config(exp)
    config_changes: list[dict[str, Any]] = []
    if ckpt_path.exists():
        state = torch_load(ckpt_path, fix="delete it to start pretraining over")
        _check_resumable(state, model, task, seed, ckpt_path)
        recorded = state.get("config")
        diff = check_resume(None if recorded is None else pretrain_config(recorded), run_config, ckpt_path,
                            allow_config_change, "pretraining", fixed=("model", "pretrain.optimizer"))
        config_changes = list(state.get("config_changes", []))
        if diff:
            config_changes.append({"updates": int(state["updates"]), "changed": diff})
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        _set_rng_state(state["rng"], np_rng)
        updates, wall_before = int(state["updates"]), float(state["wall_time"])
        cpu_before = float(state.get("cpu_s", 0.0))  # a checkpoint of an older dtrl kept no CPU time
        acc.copy_(state["log_acc"].to(device))
        n_acc = int(state["log_n"])
        logger.rows = [r for r in logger.rows if isinstance(r.get("updates"), int) and r["updates"] <= updates]
        print(f"[dtrl] resumed pretraining {out} at update {updates}", file=sys.stderr)
    else:
        logger.rows = []
    logger.columns = list(PRETRAIN_COLUMNS_DETERMINISTIC if trainer.deterministic else PRETRAIN_COLUMNS)
    extra = [k for k in acc_terms if k not in logger.columns]
    logger.columns = logger.columns[:-5] + extra + logger.columns[-5:]  # before lr, grad_norm, speed, wall, CPU

    saved = {"updates": updates if ckpt_path.exists() else None}  # of the checkpoint on disk

    def save_checkpoint(wall: float) -> None:
        saved["updates"] = updates
        atomic_torch_save(ckpt_path, {
            "model": model.state_dict(), "model_cfg": to_dict(model.cfg), "trainer": trainer.state_dict(),
            "rng": _rng_state(np_rng), "updates": updates, "wall_time": wall, "cpu_s": cpu(), "log_acc": acc.cpu(),
            "log_n": n_acc, "task": task.name, "seed": seed, "config": to_dict(exp),
            "config_changes": config_changes,
        })

    finite = FiniteSince()  # which loss term broke first, between two checks (dtrl.util.guard)
    fault_keys = {k: f"pretrain.{v}" for k, v in SUPERVISED_FAULT_KEYS.items()}

    def check_finite(where: str) -> None:
        try:
            finite.check(fault_keys, where)
            check_parameters(_Owner(model), "pretrain.lr", "the parameters after the update")
        except DivergenceError as e:
            done = saved["updates"]
            e.qualify("pretraining", updates, "pretrain.",
                      f"its last checkpoint (update {done}, all finite) is kept" if done is not None else
                      "no checkpoint had been written")
            at = updates if e.finite_updates is None else updates - finite.n + e.finite_updates + 1
            msg = e.message().replace(f" at iteration {updates}", f" at update {at}")
            e.args = (msg,)
            atomic_write_json(summary_path, {
                "task": task.name, "seed": seed, "status": "diverged", "updates": updates,
                "divergence": {**e.record(), "update": at, "message": msg}, "config": to_dict(exp),
                "config_changes": config_changes, "code_version": code_version()})
            raise

    model.train()
    t_start = time.perf_counter()
    cpu = CpuClock(cpu_before)  # process CPU-seconds, continued across resumes (the compute axis)
    t_row, u_row = t_start, updates
    while updates < cfg.updates:
        out_terms = trainer.update(sampler.sample(cfg.batch_size))
        acc += torch.stack([out_terms[k] for k in acc_terms])
        finite.add_stacked(acc_terms, acc)
        n_acc += 1
        updates += 1
        if updates % cfg.log_every == 0 or updates == cfg.updates:
            check_finite("pretraining")
            means = (acc / n_acc).tolist()  # the one host sync per log row
            now = time.perf_counter()
            logger.log({"updates": updates, **dict(zip(acc_terms, means)), "lr": trainer.last_lr,
                        "updates_per_s": (updates - u_row) / max(now - t_row, 1e-9),
                        "wall_time": round(wall_before + now - t_start, 3), "cpu_s": round(cpu(), 3)})
            t_row, u_row = now, updates
            acc.zero_()
            n_acc = 0
            finite.reset()
        if updates % cfg.checkpoint_every == 0 or updates == cfg.updates:
            check_finite("pretraining")
            save_checkpoint(wall_before + time.perf_counter() - t_start)
    wall = wall_before + time.perf_counter() - t_start
    last = logger.rows[-1] if logger.rows else {}

    summary: dict[str, Any] = {
        "task": task.name, "seed": seed, "updates": updates, "wall_time": wall, "cpu_s": cpu(),
        "updates_per_s": updates / max(wall, 1e-9), "device": str(device),
        "final_loss": last.get("loss"), "final_nll": last.get("nll"), "final_entropy": last.get("entropy"),
        "final_temperature": last.get("temperature"), "final_mse": last.get("mse"),
        "action_head": model.cfg.action_head, "backbone": model.backbone,
        **({"final_rtg_loss": last["rtg_loss"]} if "rtg_loss" in last else {}),
        "dataset_episodes": len(dataset), "dataset_transitions": dataset.num_transitions,
        "eval_episodes": cfg.eval_episodes, "status": "completed", "config": to_dict(exp),
        "code_version": code_version(),
    }
    if config_changes:
        summary["config_changes"] = config_changes
    if cfg.eval_episodes > 0:
        from dtrl.harness.evaluate import evaluate_dt

        model.eval()
        returns = np.asarray(evaluate_dt(model, task, episodes=cfg.eval_episodes, seed=eval_seed(exp.eval, seed, 0),
                                         rtg=exp.eval.rtg, n_envs=exp.eval.n_envs, device=device), dtype=np.float64)
        norm = np.asarray(task.normalize(returns), dtype=np.float64)
        summary.update(eval_returns=returns.tolist(), eval_return=float(returns.mean()),
                       eval_norm_return=float(norm.mean()), eval_norm_return_std=float(norm.std()))
    atomic_write_json(summary_path, summary)
    atomic_torch_save(model_path, {"dt": dt_payload(model), "trainer": trainer.state_dict(), "task": task.name,
                                   "seed": seed, "updates": updates, "config": to_dict(exp)})
    ckpt_path.unlink(missing_ok=True)  # model.pt now holds everything worth keeping
    return summary


class _Owner:
    """Holds the model as an attribute, the form dtrl.util.guard.check_parameters inspects."""

    def __init__(self, model: torch.nn.Module):
        self.model = model


def pretrain_config(exp: Any) -> dict[str, Any]:
    """The part of an experiment config (dataclass or recorded dict) a pretraining run depends on."""
    d = exp if isinstance(exp, dict) else to_dict(exp)
    return {"model": d.get("model"), "pretrain": d.get("pretrain")}


def _check_resumable(state: dict[str, Any], model: DecisionTransformer, task: Task, seed: int, path: Path) -> None:
    problems = []
    if state.get("task") != task.name or state.get("seed") != seed:
        problems.append(f"it belongs to task {state.get('task')!r} seed {state.get('seed')!r}")
    if state.get("model_cfg") != to_dict(model.cfg):
        problems.append("its model config differs from the current one")
    if problems:
        raise ConfigError(f"cannot resume from {path}: {'; '.join(problems)}. Restore the original config or "
                          "delete the checkpoint to start over")


def cmd_pretrain(exp, task_name: str, seed: int, out: str | Path | None, allow_config_change: bool = False,
                 backbone: str | None = None, wait: bool = False) -> int:
    """``dtrl pretrain``: load the task's dataset and pretrain; a finished run is left alone. ``backbone``
    (default model.backbone) is the model to pretrain: the workflow passes the backbone of the method
    entries that finetune it (``methods.<m>.backbone``)."""
    from dtrl.tasks import get_task

    task = get_task(task_name)
    exp = exp.for_task(task.name, backbone=backbone)
    out_dir = Path(out) if out is not None else default_out_dir(exp.results, task.name, seed, exp.model.action_head,
                                                                exp.model.backbone)
    if (out_dir / "model.pt").exists():
        if not (out_dir / "summary.json").exists():
            # Snakemake deletes a job's outputs (summary.json) before it reruns it, e.g. when the config
            # arguments changed; the weights are kept, and saying "done" would leave the job without its output.
            from dtrl.util.io import InputError

            raise InputError(f"{out_dir / 'model.pt'} exists but its summary.json does not (a workflow rerun "
                             f"removes it first); move {out_dir / 'model.pt'} away to pretrain again, or rerun "
                             "Snakemake with --rerun-triggers mtime to keep this pretraining")
        print(f"{out_dir / 'model.pt'} exists; pretraining of {task.name} seed {seed} is done, nothing to do")
        return 0
    from dtrl.data.sources import load_task_dataset

    dataset = load_task_dataset(exp, task)
    s = pretrain(exp, task, seed, dataset, out_dir, allow_config_change, wait)
    line = (f"{task.name} seed {seed}: {s['updates']} updates in {s['wall_time']:.0f}s "
            f"({s['updates_per_s']:.1f}/s), final loss {s['final_loss']:.4f}")
    if "eval_return" in s:
        line += f", eval return {s['eval_return']:.1f} (normalised {s['eval_norm_return']:.1f})"
    print(line)
    print(f"wrote {out_dir / 'model.pt'}")
    return 0
