"""The model section of the config: the Decision Transformer's architecture and action head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtrl.config.base import doc

# ModelConfig values of checkpoints written before these fields existed (the model then always had a
# timestep embedding and GELU): a stored config lacking a key was made with this value.
LEGACY_MODEL_CFG = {"timestep_embedding": True, "activation": "gelu", "init": "normal"}


@dataclass
class ModelConfig:
    embed_dim: int = doc(512, "Transformer width (ODT: 512).")
    n_layers: int = doc(4, "Transformer blocks (ODT: 4).")
    n_heads: int = doc(4, "Attention heads (ODT: 4).")
    dropout: float = doc(0.1, "Dropout in embeddings, attention and MLP during pretraining (ODT: 0.1).")
    context_len: int = doc(20, "Training context K in timesteps (ODT: 20).")
    eval_context_len: int = doc(5, "Context used when acting at evaluation time (ODT: 5).")
    log_std_min: float = doc(-5.0, "Lower bound of the Gaussian head's log-std (ODT: -5).")
    log_std_max: float = doc(2.0, "Upper bound of the Gaussian head's log-std (ODT: 2).")
    init_temperature: float = doc(0.1, "Initial entropy temperature (ODT: 0.1).")
    timestep_embedding: bool = doc(False, "Add a learned embedding of each step's env timestep to its three tokens "
                                          "(the original DT's; ODT's `--ordering 1`, online-dt "
                                          "decision_transformer.py:163-164,220-221). Off = ODT's default "
                                          "`--ordering 0` (main.py:479-480): no timestep signal at all.")
    slot_embedding: bool = doc(False, "Add a learned embedding per token slot (3K slots, right-aligned so the newest "
                                      "step always has the same slot). dtrl's addition, not in ODT, whose "
                                      "trajectory_gpt2.py:521,680-681 removes GPT-2's positional embedding; off = ODT.")
    activation: Literal["relu", "gelu"] = doc("relu", "Activation of the transformer MLPs (ODT: relu, online-dt "
                                                       "main.py:476 -> trajectory_gpt2.py:253; gelu = GPT-2's).")
    init: Literal["odt", "normal"] = doc(
        "odt", "Parameter initialisation. 'odt' = the reference's (online-dt decision_transformer.py:160-181 and "
               "trajectory_gpt2.py:356-366,526): the transformer blocks N(0, 0.02) with zero biases (GPT-2's init, "
               "applied by GPT2Model to its own modules only); the return/state/action embeddings, the embedding "
               "LayerNorm, the timestep embedding and the deterministic head keep PyTorch's defaults; the Gaussian "
               "head's mean and log-std layers orthogonal with zero bias (decision_transformer.py:107-114). "
               "'normal' = every Linear and Embedding N(0, 0.02) with zero bias (dtrl before issue 18): the RTG "
               "embedding then has no bias, LayerNorm(w * rtg) keeps only the RTG's sign, and under LAMB a "
               "zero-initialised bias stays near zero, so the DT barely conditions on the return's magnitude. The DT "
               "backbone only: Reinformer keeps PyTorch's defaults, as its reference does.")
    max_timestep: int = doc(1000, "Size of the timestep embedding table (used only with timestep_embedding); later "
                                  "timesteps share the last entry.")
    action_head: Literal["gaussian", "deterministic"] = doc(
        "gaussian", "Action head. 'gaussian': ODT's tanh-squashed Gaussian with a learned temperature, trained with "
                    "NLL - temperature x entropy. 'deterministic': a linear layer + tanh (no log-std head, no "
                    "temperature), trained with masked MSE: the DT of ODT+TD3, whose every MuJoCo command passes "
                    "`--stoc 0 --use_entropy_reg 0` (KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers "
                    "readme.md:102-114; head decision_transformer/models/decision_transformer.py:173-181; loss "
                    "main.py:647-648). The workflow pretrains the deterministic DT separately, under "
                    "pretrain_det/, for the methods that need it.")
    backbone: str = doc("dt", "The sequence model every DT method pretrains and finetunes: dt (ODT's Decision "
                              "Transformer, this section's other fields) or reinformer (Reinformer, Zhuang et al. "
                              "2024: the RTG predicted from the state token, trained by expectile regression, fed "
                              "back as the RTG; dtrl/models/reinformer.py cites its reference line by line). "
                              "Reinformer uses embed_dim, n_layers, n_heads, dropout, context_len (it also acts with "
                              "it, as its eval.py:58-73), max_timestep, log_std_min/max, init_temperature and the "
                              "rtg_* fields; it always has its timestep embedding and GELU. A method entry may set "
                              "`backbone:` for its own runs (pretrained separately, under pretrain_<backbone>/). "
                              "Registry: dtrl.config.registry.BACKBONES.")
    rtg_expectile: float = doc(0.99, "Reinformer: expectile tau of its RTG regression (Dragon-Zhuang/Reinformer "
                                     "main.py:186 default 0.99); near 1 the prediction tends to the maximum "
                                     "in-distribution return.")
    rtg_loss_weight: float = doc(1.0, "Reinformer: weight of the RTG expectile loss in its pretraining loss "
                                      "(reference trainer.py:119 adds the two terms with weight 1).")
    action_loss_weight: float = doc(1.0, "Reinformer: weight of its action term (NLL - temperature x entropy) "
                                         "(reference trainer.py:119: 1).")

    def validate(self) -> None:
        from dtrl.config import require
        from dtrl.config.registry import BACKBONES

        require(self.backbone in BACKBONES, f"model.backbone must be one of {', '.join(BACKBONES)}, "
                f"got {self.backbone!r}")
        require(self.backbone == "dt" or self.action_head == "gaussian",
                f"model.action_head={self.action_head} exists for the dt backbone only ({self.backbone} has the "
                "stochastic head)")
        require(0.0 < self.rtg_expectile < 1.0, "model.rtg_expectile must be in (0, 1)")
        require(self.rtg_loss_weight >= 0 and self.action_loss_weight >= 0,
                "model.rtg_loss_weight and model.action_loss_weight must be >= 0")

        require(self.embed_dim % self.n_heads == 0, f"model.embed_dim ({self.embed_dim}) must be divisible by "
                f"model.n_heads ({self.n_heads})")
        require(self.context_len >= 1 and 1 <= self.eval_context_len <= self.context_len,
                "model.eval_context_len must be between 1 and model.context_len")
        require(self.log_std_min < self.log_std_max, "model.log_std_min must be below model.log_std_max")
        require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        require(self.action_head in ("gaussian", "deterministic"),
                f"model.action_head must be 'gaussian' or 'deterministic', got {self.action_head!r}")
        require(self.init in ("odt", "normal"), f"model.init must be 'odt' or 'normal', got {self.init!r}")
