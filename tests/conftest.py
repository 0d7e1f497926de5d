import os
import tempfile

import pytest
import torch

# MuJoCo writes MUJOCO_LOG.TXT into the cwd on warnings; tests run from the repo root.
os.environ.setdefault("MUJOCO_LOG_DIR", tempfile.gettempdir())
# Two cores: keep torch from oversubscribing them when pytest-xdist runs two workers.
torch.set_num_threads(1)


@pytest.fixture
def tiny_model_cfg():
    from dtrl.models.dt import ModelConfig

    return ModelConfig(embed_dim=32, n_layers=1, n_heads=2, dropout=0.0, context_len=4, eval_context_len=2)
