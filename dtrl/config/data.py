"""Config of the dataset sources and of the D4RL-recipe generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtrl.config import doc, require


@dataclass
class SourceConfig:
    d4rl: str | None = doc(None, "Path to a D4RL HDF5 file for this task (e.g. hopper-medium-v2.hdf5).")
    minari: str | None = doc(None, "Minari dataset id (e.g. mujoco/hopper/medium-v0) under MINARI_DATASETS_PATH.")
    minari_download: bool = doc(False, "Download the Minari dataset if it is not present (needs internet).")

    def validate(self) -> None:
        require(not (self.d4rl and self.minari), "a data source names either a d4rl file or a minari id, not both")
        require(bool(self.d4rl or self.minari), "a data source needs a d4rl path or a minari id (leave the task "
                                                "out of data.sources to generate its dataset)")


@dataclass
class GeneratorConfig:
    """The D4RL recipe re-run locally: train SAC, save the behaviour policies, roll them out."""

    transitions: int = doc(1_000_000, "Transitions per generated dataset (D4RL: 1M; medium-expert takes half from "
                                      "each policy; medium-replay is the replay buffer and has as many as SAC "
                                      "collected up to 'medium').")
    sac_steps: int = doc(1_000_000, "SAC env steps of the behaviour run (the 'expert' is the policy at the end). "
                                    "`dtrl data` for a task that needs no expert stops the run once 'medium' is "
                                    "reached and leaves it resumable; `dtrl behaviour` always runs it to the end.")
    sac_envs: int = doc(8, "Vectorised envs SAC collects with: one batched policy forward per sac_envs env steps.")
    sac_batch_size: int = doc(256, "SAC minibatch size.")
    sac_hidden: int = doc(256, "SAC MLP width (2 hidden layers, actor and both critics).")
    sac_lr: float = doc(3e-4, "SAC Adam learning rate (actor, critics and temperature).")
    sac_gamma: float = doc(0.99, "SAC discount.")
    sac_tau: float = doc(0.005, "SAC target-critic Polyak rate.")
    sac_utd: float = doc(1.0, "Gradient updates per env step.")
    sac_init_alpha: float = doc(1.0, "Initial entropy temperature (auto-tuned from there towards entropy -act_dim). "
                                     "1.0 is SAC's usual start; a short run learns much sooner from 0.1, since "
                                     "the temperature falls only about lr per update.")
    sac_start_steps: int = doc(10_000, "Uniform-random env steps before SAC starts learning.")
    sac_cuda_graph: bool = doc(True, "On CUDA, capture the sac_envs*sac_utd updates of one env step as one CUDA "
                                     "graph (removes per-kernel launch cost, the bottleneck of small-MLP SAC).")
    eval_every: int = doc(10_000, "SAC env steps between evaluations (each a candidate 'medium' checkpoint). An "
                                  "evaluation runs at the first multiple of sac_envs at or past each multiple of "
                                  "this (a multiple of sac_envs: exactly there); 'medium' and medium-replay's "
                                  "cut are the step of the first evaluation at the threshold.")
    sac_checkpoint_every: int = doc(50_000, "SAC env steps between resumable checkpoints of the behaviour run "
                                            "(sac_state.pt: networks, optimiser, replay buffer, env and RNG states, "
                                            "the medium-replay log so far). A killed run resumes from the last one "
                                            "and ends with the same policies as an uninterrupted run (bit for bit "
                                            "on the CPU; on CUDA a resumed graph capture repeats its 3 warm-up "
                                            "updates). 0 = only when paused at 'medium'. Does not change the data.")
    eval_episodes: int = doc(5, "Episodes per SAC evaluation (stepped together).")
    eval_stochastic: bool = doc(True, "Evaluate SAC checkpoints with sampled actions, the way the datasets are "
                                      "rolled out (D4RL), so 'medium' is judged on the behaviour the dataset will "
                                      "hold; false = the mean action.")
    medium_fraction: float = doc(1 / 3, "'medium' = first checkpoint whose eval return reaches this fraction of "
                                        "the task's reference max (D4RL: about 1/3 of expert). If SAC never gets "
                                        "there, the best checkpoint is used and the metadata says so.")
    rollout_envs: int = doc(16, "Envs a dataset is rolled out in; each runs an equal share of the transitions "
                                "episode after episode and cuts its last one (fewer envs, fewer cut episodes).")
    rollout_workers: int = doc(0, "Processes the rollout envs are split over (0 = auto: one per CPU core, at "
                                  "most rollout_envs, and one per 50k transitions, since each costs seconds to "
                                  "start). The data does not depend on it.")
    seed: int = doc(0, "Seed of the generator (SAC, rollouts). Datasets are shared by all methods and seeds.")
    device: str = doc("", "Torch device for SAC training: auto (cuda if available), cpu, cuda, cuda:N; empty = the "
                          "experiment's `device` (so `--config device=cpu` reaches SAC too). On the CPU it uses "
                          "`threads` torch threads, or 1 when that is 0 (small MLPs lose from threading). "
                          "Dataset rollouts run the policy in numpy.")
    progress: bool = doc(True, "Show progress bars (env steps/s, latest eval return) on stderr.")

    def validate(self) -> None:
        require(self.transitions >= 1, "data.generator.transitions must be >= 1")
        require(self.sac_steps >= 1, "data.generator.sac_steps must be >= 1")
        require(self.sac_envs >= 1 and self.rollout_envs >= 1 and self.eval_episodes >= 1,
                "data.generator.sac_envs, rollout_envs and eval_episodes must be >= 1")
        require(self.sac_batch_size >= 1 and self.sac_hidden >= 1, "data.generator.sac_batch_size and sac_hidden "
                                                                    "must be >= 1")
        require(self.sac_utd > 0, "data.generator.sac_utd must be > 0")
        require(self.sac_init_alpha > 0, "data.generator.sac_init_alpha must be > 0")
        require(self.sac_lr > 0 and 0 < self.sac_tau <= 1 and 0 <= self.sac_gamma < 1,
                "data.generator: need sac_lr > 0, 0 < sac_tau <= 1 and 0 <= sac_gamma < 1")
        require(self.sac_start_steps >= 0, "data.generator.sac_start_steps must be >= 0")
        require(self.eval_every >= 1, "data.generator.eval_every must be >= 1")
        require(self.sac_checkpoint_every >= 0, "data.generator.sac_checkpoint_every must be >= 0 (0 = only at "
                                                "the 'medium' pause)")
        require(self.rollout_workers >= 0, "data.generator.rollout_workers must be >= 0 (0 = one per core)")
        require(0 < self.medium_fraction <= 1, "data.generator.medium_fraction must be in (0, 1]")


@dataclass
class DataConfig:
    root: str = doc("", "Where generated datasets (<root>/<task>.hdf5) and behaviour policies (<root>/behaviour/"
                        "<family>/) are written; empty = <results>/data. Summaries always go to "
                        "<results>/data/<task>.json.")
    sources: dict[str, SourceConfig] = doc({}, "Per-task dataset source; a task without an entry is generated.")
    generator: GeneratorConfig = doc(GeneratorConfig(), "The D4RL-recipe generator.")
    unflagged_tail: Literal["reference", "drop", "keep"] = doc(
        "reference", "A D4RL file's steps after its last terminal/timeout (an episode the file cuts): 'reference' = "
                     "as each method's reference loader: dropped for the DT methods (D4RL sequence_dataset, ODT's "
                     "data script), kept for IQL (its D4RLDataset); 'drop' / 'keep' = the same for every method. "
                     "dtrl's own files flag every piece, so it changes only other files (docs/baselines.md, "
                     "'Datasets and environments').")
