"""Layer 3: environments (MuJoCo and gymnasium-robotics builders, exact resets, vectorised stepping, worker
processes). Datasets are the sibling package dtrl.data."""
