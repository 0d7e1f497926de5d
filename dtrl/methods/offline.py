"""The offline DT (`--method none`): the pretrained checkpoint evaluated without online finetuning.

It runs under the same harness as every online method, so its row in every table comes from the
same evaluation protocol and the same summary format, with zero online env steps and updates.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtrl.harness.dt_method import DTMethod


class OfflineDT(DTMethod):
    backbones = None  # any backbone: it only evaluates
    fault_key = "pretrain.lr"  # it trains nothing: a policy emitting NaN was made so by its pretraining

    @dataclass
    class Config:
        """No parameters: the pretrained model is evaluated as it is."""

    def finished(self) -> bool:
        return True

    def train_iteration(self) -> dict[str, float]:  # pragma: no cover - never called (finished() is True)
        raise RuntimeError("the offline DT does not train online")
