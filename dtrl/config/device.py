"""Torch device selection from a config value: the one helper every layer (data generator, pretraining,
the online harness, evaluation) shares, kept here so lower layers need not import the harness."""

from __future__ import annotations

import torch


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The torch device of config value ``name`` ('auto' = CUDA when available); ``key`` names it in errors."""
    from dtrl.config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key} is '{name}', which is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):  # dtrl's kernels, autocast and RNG handling cover these two
        raise ConfigError(f"{key} is '{name}': dtrl runs on cpu or cuda only; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is '{name}' but CUDA is not available here; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{key} is '{name}' but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev
