"""Config of offline supervised pretraining (kept apart from dtrl.harness.pretrain so configs load without torch work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtrl.config import doc, require


# Where each action head's pretraining lives: <results>/<dir>/<task>/seed<seed>/. One (task, seed)
# has a stochastic DT for ODT and the RL methods, and a deterministic one for ODT+TD3 when the
# grid runs it (model.action_head says which one a run trains).
HEAD_DIRS = {"gaussian": "pretrain", "deterministic": "pretrain_det"}


def pretrain_dir(head: str = "gaussian", backbone: str = "dt") -> str:
    """The directory under <results>/ of the pretraining with this action head and backbone: HEAD_DIRS for
    the DT, ``pretrain_<backbone>`` for another backbone (which has the stochastic head only)."""
    return HEAD_DIRS[head] if backbone == "dt" else f"pretrain_{backbone}"


def pretrain_dirs() -> dict[str, tuple[str, str]]:
    """Every directory :func:`pretrain_dir` names, with its (head, backbone)."""
    from dtrl.config.registry import BACKBONES

    kinds = {pretrain_dir(h, "dt"): (h, "dt") for h in HEAD_DIRS}
    kinds.update({pretrain_dir("gaussian", b): ("gaussian", b) for b in BACKBONES if b != "dt"})
    return kinds


@dataclass
class PretrainConfig:
    updates: int = doc(5_000, "DT updates of offline pretraining. The reference commands make 5000 (online-dt "
                              "main.py:494-495 and RL_as_Vitamin get_args.py:39-40: 1 iteration x 5000; Vitamin's "
                              "main.py:424 loops over 5000 x num_actor_update_interval minibatches and "
                              "trainer.py:187 updates the DT on every 2nd); walker2d 10000 (Vitamin readme.md:108-110, "
                              "an `overrides` entry of config/config.yaml).")
    batch_size: int = doc(256, "Contexts per minibatch (ODT: 256).")
    optimizer: Literal["lamb", "adamw"] = doc("lamb", "LAMB as in ODT, or AdamW.")
    lr: float = doc(1e-4, "Peak learning rate (ODT: 1e-4).")
    weight_decay: float = doc(5e-4, "Weight decay (ODT: 5e-4).")
    warmup_updates: int = doc(10_000, "Linear learning-rate warmup length in updates (ODT: 10k).")
    grad_clip: float = doc(0.25, "Global gradient-norm clip of the policy parameters (ODT: 0.25; 0 = off).")
    temperature_lr: float = doc(1e-4, "Adam learning rate of the log-temperature (ODT: 1e-4).")
    entropy_samples: int = doc(1, "Monte-Carlo samples for the entropy estimate of the squashed Gaussian.")
    log_every: int = doc(100, "Updates between progress rows in pretrain.csv.")
    checkpoint_every: int = doc(1000, "Updates between resumable checkpoints.")
    eval_episodes: int = doc(10, "Evaluation episodes after pretraining (0 to skip).")
    amp: Literal["off", "bf16"] = doc("bf16", "Autocast dtype on CUDA (ignored on CPU). bf16 (dtrl's, for speed): the "
                                              "forward and loss in bf16 autocast and TF32 for the matmuls it leaves "
                                              "in fp32. off: fp32 throughout with TF32 off, the reference's "
                                              "numerics (docs/baselines.md, Numerics).")
    compile: Literal["off", "default", "reduce-overhead"] = doc(
        "reduce-overhead", "torch.compile mode of the training forward+loss on CUDA (ignored on CPU). A step of "
        "ODT's transformer is bound by kernel-launch overhead; 'reduce-overhead' (CUDA graphs) removes most of it "
        "(H100, 4x512, K=20, B=256: ~2x the updates/s) for ~25 s of compilation up front. Falls back to eager with "
        "a warning if compilation fails. Eager ('off') resumes bit-exactly; compiled runs resume to within float "
        "rounding (inductor's reductions are not bitwise deterministic).")
    fused_forward: bool = doc(
        True, "On CPU, train through dtrl.models.fused_dt.fused_forward: the DT's forward with fewer, larger ops "
              "(dropout masks drawn in one call, the last block at the state tokens only); the same distribution "
              "and the same dropout masks for a seed, so the same losses to float rounding (tests/test_fused_dt.py). "
              "false = the module's forward. Ignored on CUDA (compile covers it) and for other backbones.")
    eps: float = doc(1e-8, "Optimizer epsilon (ODT passes 1e-8 to LAMB).")
    context_anchor: Literal["start", "end"] = doc(
        "start", "How context windows are drawn. 'start' = the reference's: a uniform first step, the window cut "
                 "at the trajectory's end and left-padded there (online-dt data.py:72,103-115, sample_trajs "
                 "data.py:171-182; RL_as_Vitamin data.py:89-151). 'end' = dtrl's alternative: each transition "
                 "equally likely to be a context's last step, windows left-padded only at trajectory starts, as "
                 "a rollout's context is (the reference pads contexts that end a trajectory, which acting never "
                 "does). Either way trajectories are picked in proportion to their length.")
    entropy_positions: Literal["all", "real"] = doc(
        "all", "Positions the entropy term (and the temperature's loss) averages over. 'all' = the reference's: "
               "every B x K slot, padding included (online-dt main.py:399-401 `a_hat_dist.entropy().mean()`, "
               "next to a masked log-likelihood). 'real' = only real steps, as the NLL, so the temperature does "
               "not answer to what the model outputs on padding. The DT backbone's loss only; Reinformer's "
               "objective is its own.")

    def validate(self) -> None:
        require(self.updates >= 1, "pretrain.updates must be >= 1")
        require(self.batch_size >= 1, "pretrain.batch_size must be >= 1")
        require(self.lr > 0, "pretrain.lr must be > 0")
        require(self.weight_decay >= 0, "pretrain.weight_decay must be >= 0")
        require(self.warmup_updates >= 0, "pretrain.warmup_updates must be >= 0")
        require(self.grad_clip >= 0, "pretrain.grad_clip must be >= 0 (0 disables clipping)")
        require(self.temperature_lr >= 0, "pretrain.temperature_lr must be >= 0 (0 freezes the temperature)")
        require(self.entropy_samples >= 1, "pretrain.entropy_samples must be >= 1")
        require(self.log_every >= 1, "pretrain.log_every must be >= 1")
        require(self.checkpoint_every >= 1, "pretrain.checkpoint_every must be >= 1")
        require(self.eval_episodes >= 0, "pretrain.eval_episodes must be >= 0")
        require(self.eps >= 0, "pretrain.eps must be >= 0")
        require(self.context_anchor in ("start", "end"), "pretrain.context_anchor must be 'start' or 'end'")
        require(self.entropy_positions in ("all", "real"), "pretrain.entropy_positions must be 'all' or 'real'")
