"""Registry of online methods: name -> "module:Class".

A method class (see :class:`dtrl.harness.online.OnlineMethod`) declares its typed ``Config`` dataclass and
implements one online iteration; the shared harness in :mod:`dtrl.harness.online` does budgets, logging,
evaluation, checkpoints and resume. Methods import only the dtrl core, never each other.
To add a baseline: write ``baselines/my_method.py`` with one such class and add a line here.
"""

from __future__ import annotations

import importlib

ALGORITHMS: dict[str, str] = {
    "none": "dtrl.methods.offline:OfflineDT",  # the pretrained DT, evaluated without finetuning
    "grpo": "dtrl.methods.grpo:GRPO",  # the paper's method and its ablation switches
    "qgrpo": "dtrl.methods.qgrpo:QGRPO",  # critic advantages for envs that cannot be reset
    "ppo_dt": "dtrl.methods.ppo_dt:PPODT",  # PPO for DTs with lambda-returns, the paper's comparison variant
    "odt": "baselines.odt:ODT",
    "odt_td3": "baselines.odt_td3:ODTTD3",
    "iql": "baselines.iql:IQL",
    "external": "dtrl.methods.external:ExternalCommand",  # a command from another codebase writing the run contract
}


# Backbones of the DT methods (``model.backbone``): name -> "module:Class" of an nn.Module with the
# interface documented in dtrl.models.backbone. A third backbone is one module and one line here.
BACKBONES: dict[str, str] = {
    "dt": "dtrl.models.dt:DecisionTransformer",  # ODT's stochastic Decision Transformer
    "reinformer": "dtrl.models.reinformer:Reinformer",  # max-return sequence modeling (Zhuang et al. 2024)
}


def register(name: str, target: str) -> None:
    """Register an algorithm under ``name``; ``target`` is "package.module:ClassName"."""
    ALGORITHMS[name] = target


def known_algorithms() -> list[str]:
    return sorted(ALGORITHMS)


def get_algorithm(name: str):
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm '{name}'. Known: {', '.join(known_algorithms())}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
