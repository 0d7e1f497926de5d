"""Config of the dataset sources and of the D4RL-recipe generator."""

from __future__ import annotations

from dataclasses import dataclass

from dtrl.config import doc


@dataclass
class SourceConfig:
    d4rl: str | None = doc(None, "Path to a D4RL HDF5 file for this task (e.g. hopper-medium-v2.hdf5).")
    minari: str | None = doc(None, "Minari dataset id (e.g. mujoco/hopper/medium-v0) under MINARI_DATASETS_PATH.")
    minari_download: bool = doc(False, "Download the Minari dataset if it is not present (needs internet).")


@dataclass
class GeneratorConfig:
    """The D4RL recipe re-run locally: train SAC, save the behaviour policies, roll them out."""

    transitions: int = doc(1_000_000, "Transitions per generated dataset (D4RL: 1M; medium-replay is the "
                                      "replay buffer and has as many as SAC collected up to 'medium').")
    sac_steps: int = doc(1_000_000, "Max SAC env steps for the behaviour policy (stops earlier if expert_fraction "
                                    "is reached and no expert dataset is needed).")
    sac_envs: int = doc(8, "Vectorised envs SAC collects with (fewer Python round-trips per env step).")
    sac_batch_size: int = doc(256, "SAC minibatch size.")
    sac_hidden: int = doc(256, "SAC MLP width (2 hidden layers).")
    sac_lr: float = doc(3e-4, "SAC Adam learning rate.")
    sac_utd: float = doc(1.0, "Gradient updates per env step.")
    sac_start_steps: int = doc(10_000, "Uniform-random env steps before SAC starts learning.")
    eval_every: int = doc(10_000, "SAC env steps between evaluations (each a candidate 'medium' checkpoint).")
    eval_episodes: int = doc(5, "Episodes per SAC evaluation.")
    medium_fraction: float = doc(1 / 3, "'medium' = first checkpoint whose eval return reaches this fraction of "
                                        "the task's reference max (D4RL: about 1/3 of expert).")
    seed: int = doc(0, "Seed of the generator (SAC, rollouts). Datasets are shared by all methods and seeds.")
    device: str = doc("auto", "Torch device for SAC: auto, cpu, cuda.")


@dataclass
class DataConfig:
    root: str = doc("results/data", "Where generated datasets and behaviour-policy checkpoints are written.")
    sources: dict[str, SourceConfig] = doc({}, "Per-task dataset source; a task without an entry is generated.")
    generator: GeneratorConfig = doc(GeneratorConfig(), "The D4RL-recipe generator.")
