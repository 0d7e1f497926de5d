"""The supervised objectives of the Decision Transformer, returned term by term.

ODT's, for the stochastic (tanh-Gaussian) head (``dt_supervised_loss``):

    loss             = NLL - temperature.detach() * H       (reaches the policy only)
    loss_temperature = temperature * (H.detach() - target)  (reaches log_temperature only)

NLL is the masked mean over real (unpadded) context positions. H is, as in the reference, the mean
over all B x K slots, padding included (``entropy_positions="all"``: online-dt main.py:399-401,
``a_hat_dist.entropy().mean()`` next to the masked log-likelihood; the same in
KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers main.py:636-638), so the temperature also
answers to whatever the model outputs on padding. ``entropy_positions="real"`` takes the masked mean
instead, so both terms see exactly the same positions. The entropy of a tanh-squashed Gaussian has
no closed form, so H is a Monte-Carlo estimate (``entropy_samples`` reparameterised draws per
position), as in ODT.

Keeping the two losses apart by ``detach`` means their sum can be back-propagated in one pass
and still give each parameter set only its own gradient.

ODT+TD3's, for the deterministic head (``dt_mse_loss``): the mean squared error of the action over
real context positions and action dimensions, ``((a_hat - a) ** 2)[mask > 0].mean()``
(KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers, main.py:647-648); no entropy term.
"""

from __future__ import annotations

from typing import Literal

import torch

from dtrl.models.dt import DeterministicAction, SquashedGaussian


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is True (0 when nothing is real, never NaN)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def dt_supervised_loss(
    dist: SquashedGaussian,
    actions: torch.Tensor,
    mask: torch.Tensor,
    log_temperature: torch.Tensor,
    target_entropy: float,
    entropy_samples: int = 1,
    entropy_positions: Literal["all", "real"] = "all",
) -> dict[str, torch.Tensor]:
    """ODT's loss terms by name: loss, loss_temperature, nll, entropy, temperature.

    ``dist`` is the model's per-position action distribution (B, K, A), ``actions`` the dataset
    actions (B, K, A), ``mask`` (B, K) True on real steps. ``entropy_positions``: the entropy is
    averaged over all B x K slots ("all", ODT's) or over the real ones ("real"). ``nll``,
    ``entropy`` and ``temperature`` are detached diagnostics.
    """
    if actions.shape != dist.mean.shape:
        raise ValueError(f"actions have shape {tuple(actions.shape)} but the policy predicts "
                         f"{tuple(dist.mean.shape)}")
    if mask.shape != actions.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(actions.shape[:-1])}")
    if entropy_samples < 1:
        raise ValueError(f"entropy_samples must be >= 1, got {entropy_samples}")
    if entropy_positions not in ("all", "real"):
        raise ValueError(f"entropy_positions must be 'all' or 'real', got {entropy_positions!r}")
    if isinstance(dist, DeterministicAction):
        raise TypeError("dt_supervised_loss needs the stochastic head; a deterministic DT trains with dt_mse_loss")
    if dist.mean.dtype != torch.float32:
        # Under bf16 autocast the heads emit bf16; log-densities near the tanh bounds need fp32.
        dist = SquashedGaussian(dist.mean.float(), dist.log_std.float())
    actions = actions.float()
    nll = -masked_mean(dist.log_prob(actions), mask)
    h = dist.entropy(entropy_samples)
    entropy = h.mean() if entropy_positions == "all" else masked_mean(h, mask)
    temperature = log_temperature.exp()
    loss = nll - temperature.detach() * entropy
    loss_temperature = temperature * (entropy.detach() - target_entropy)
    return {
        "loss": loss,
        "loss_temperature": loss_temperature,
        "nll": nll.detach(),
        "entropy": entropy.detach(),
        "temperature": temperature.detach(),
    }


def dt_mse_loss(dist: SquashedGaussian, actions: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """ODT+TD3's supervised term by name: loss (reaches the policy), mse (detached diagnostic).

    The squared error of tanh(mean) (the deterministic head's action) against the dataset actions,
    averaged over real positions and action dims.
    """
    if actions.shape != dist.mean.shape:
        raise ValueError(f"actions have shape {tuple(actions.shape)} but the policy predicts "
                         f"{tuple(dist.mean.shape)}")
    if mask.shape != actions.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(actions.shape[:-1])}")
    err = (torch.tanh(dist.mean.float()) - actions.float()).pow(2).mean(-1)
    loss = masked_mean(err, mask)
    return {"loss": loss, "mse": loss.detach()}
