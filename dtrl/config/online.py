"""Configs of evaluation and of the online harness shared by every method."""

from __future__ import annotations

from dataclasses import dataclass

from dtrl.config import doc, require


@dataclass
class EvalConfig:
    episodes: int = doc(10, "Evaluation episodes at each intermediate evaluation.")
    final_episodes: int = doc(10, "Evaluation episodes at the end of a run (the reported score).")
    n_envs: int = doc(0, "Envs stepped together during evaluation (0 = one per episode).")
    rtg: float | None = doc(None, "Evaluation return-to-go target; null = the task's eval_rtg (ODT's values).")
    seed_offset: int = doc(10_000, "Evaluation env seeds start at seed * 1000 + seed_offset, apart from training seeds.")

    def validate(self) -> None:
        require(self.episodes >= 1 and self.final_episodes >= 1, "eval.episodes and eval.final_episodes must be >= 1")


@dataclass
class OnlineConfig:
    env_steps: int = doc(200_000, "Online budget in training env steps (exploration + group scoring; evaluation "
                                  "episodes are counted apart and not charged).")
    max_iterations: int = doc(0, "Stop after this many online iterations as well (0 = no cap).")
    eval_every_env_steps: int = doc(20_000, "Evaluate each time this many more training env steps have been taken.")
    checkpoint_every_iterations: int = doc(1, "Iterations between resumable checkpoints (atomic writes).")
    progress: bool = doc(True, "Show a progress bar with env steps/s and the latest return on stderr.")

    def validate(self) -> None:
        require(self.env_steps >= 0, "online.env_steps must be >= 0")
        require(self.eval_every_env_steps >= 1, "online.eval_every_env_steps must be >= 1")
        require(self.checkpoint_every_iterations >= 1, "online.checkpoint_every_iterations must be >= 1")
