"""Datasets: D4RL HDF5 and Minari readers, the D4RL-recipe generator, one in-memory form."""

from dtrl.data.trajectories import DataError, Trajectory, TrajectoryDataset

__all__ = ["DataError", "Trajectory", "TrajectoryDataset"]
