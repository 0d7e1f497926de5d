"""The Decision Transformer's training forward with fewer, larger ops: the function of
``DecisionTransformer.forward`` in train mode, the update's hot path on CPU.

A training step of the CPU grid's DT (2 x 64, K 10, batch 64) is too small for its matmuls to
dominate: much of an update goes to torch's per-element dropout sampling, elementwise passes and
per-op overhead. :func:`fused_forward` reads the same parameters as the module (so state_dicts,
optimizers and checkpoints are untouched) and computes the same action distribution:

* **Dropout masks in one draw.** torch's CPU ``bernoulli_`` (what ``nn.Dropout`` and the attention
  dropout of ``scaled_dot_product_attention`` call) draws one 64-bit word per element from the
  global mt19937 generator, keeps the element iff ``(word & (2**53 - 1)) * 2**-53 < 1 - p``, and
  scales kept ones by ``1 / (1 - p)`` (ATen ``bernoulli_kernel``: a uniform double from
  ``random64()`` compared with ``p``; public builds use this kernel on every CPU since the MKL path
  was disabled, pytorch issue 132395). The module's forward draws its 1 + 3 x n_layers masks in a
  fixed order (embedding, then per block: attention, projection, MLP); here all words are drawn at
  once with ``int64.random_()`` (the same ``random64()`` per element, low 63 bits) and compared as
  integers: the *same masks* from the same generator state, and the generator left where the
  module's forward leaves it. This costs about what the separate draws cost (the words dominate:
  mt19937 is serial); what it buys is masks that exist before the forward, so the blocks below can
  skip rows and tokens while the generator still advances by the module's full draw.
* **The last block at the state tokens only.** The distribution is read from the state tokens of
  the last block, so its queries, output projection and MLP are computed for those T rows instead
  of all 3T (keys and values still for all), and the last action token, which no output depends on
  (causal mask), is not computed at all: ~30% fewer matmul FLOPs in a 2-block DT, same values.
* **Attention written out** with an additive 0/-inf mask (built once per batch from the padding
  mask; the diagonal is always visible, so no row is empty and plain softmax is exact), dropout as
  a multiply by the mask, residual adds fused with the dropout multiply (``addcmul``), ReLU in place.

Equality with the module: same masks, same math, float rounding aside (matmuls over fewer rows,
scaling order): tests/test_fused_dt.py checks losses and gradients against ``model(...)`` for a
seed over several updates, with dropout on.

CUDA keeps the module's forward (under ``torch.compile``): the mask arithmetic above is the CPU
generator's, and CUDA graphs already remove the per-op overhead this is about.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dtrl.models.dt import DecisionTransformer, SquashedGaussian

_LOW53 = (1 << 53) - 1


def _keep_threshold(p: float) -> int:
    """Integer t with ``w < t`` iff ``w * 2**-53 < 1 - p`` for every integer 0 <= w < 2**53."""
    return math.ceil((1.0 - p) * 2.0**53)


def _mask_scale(p: float) -> float:
    """The kept elements' factor exactly as ``nn.Dropout`` computes it: float32 ``1 / (1 - p)``."""
    return float(torch.ones((), dtype=torch.float32).div_(1.0 - p))


def dropout_masks(shapes: list[tuple[int, ...]], p: float, device: torch.device) -> list[torch.Tensor]:
    """Float masks (0 or 1/(1-p)) for ``shapes``, equal to the masks torch's CPU dropout would draw for
    them one after the other from the global generator, drawn in one call (see the module docstring)."""
    sizes = [math.prod(s) for s in shapes]
    words = torch.empty(sum(sizes), dtype=torch.int64, device=device).random_()
    keep = torch.lt(words.bitwise_and_(_LOW53), _keep_threshold(p))
    flat = torch.where(keep, _mask_scale(p), 0.0)
    return [m.view(s) for m, s in zip(flat.split(sizes), shapes)]


def attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 3T, 3T) float: 0 where ``DecisionTransformer._attention_mask`` allows, -inf elsewhere."""
    allowed = DecisionTransformer._attention_mask(mask)
    return torch.zeros(allowed.shape, dtype=torch.float32, device=mask.device).masked_fill_(~allowed, -math.inf)


def _attend(q, k, v, bias, drop_mask):
    """softmax(q k^T / sqrt(d) + bias) (dropped) v over (B, H, Lq, d) x (B, H, L, d)."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1])).add_(bias)
    probs = torch.softmax(scores, dim=-1)
    if drop_mask is not None:
        probs = probs * drop_mask
    return torch.matmul(probs, v)


def _block(blk, x, bias, masks, rows: slice | None):
    """One pre-LN block; with ``rows``, only those token rows are computed (keys/values from all)."""
    B, L, D = x.shape
    H = blk.n_heads
    hd = D // H
    a = F.layer_norm(x, (D,), blk.ln1.weight, blk.ln1.bias, blk.ln1.eps)
    m_attn, m_proj, m_mlp = masks if masks is not None else (None, None, None)
    if rows is None:
        q, k, v = F.linear(a, blk.qkv.weight, blk.qkv.bias).view(B, L, 3, H, hd).permute(2, 0, 3, 1, 4)
        xr = x
    else:
        kv = F.linear(a, blk.qkv.weight[D:], blk.qkv.bias[D:]).view(B, L, 2, H, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        xr = x[:, rows]
        q = F.linear(a[:, rows], blk.qkv.weight[:D], blk.qkv.bias[:D]).view(B, -1, H, hd).transpose(1, 2)
        bias = bias[:, :, rows]
        if masks is not None:
            m_attn, m_proj, m_mlp = m_attn[:, :, rows], m_proj[:, rows], m_mlp[:, rows]
    h = _attend(q, k, v, bias, m_attn).transpose(1, 2).reshape(B, -1, D)
    h = F.linear(h, blk.proj.weight, blk.proj.bias)
    xr = xr + h if m_proj is None else torch.addcmul(xr, h, m_proj)
    fc1, act, fc2 = blk.mlp
    h = F.linear(F.layer_norm(xr, (D,), blk.ln2.weight, blk.ln2.bias, blk.ln2.eps), fc1.weight, fc1.bias)
    h = torch.relu_(h) if isinstance(act, torch.nn.ReLU) else act(h)
    h = F.linear(h, fc2.weight, fc2.bias)
    return xr + h if m_mlp is None else torch.addcmul(xr, h, m_mlp)


def fused_forward(model: DecisionTransformer, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                  timesteps: torch.Tensor, mask: torch.Tensor | None = None) -> SquashedGaussian:
    """``model(states, actions, rtg, timesteps, mask)`` for a training step (see the module docstring):
    the same distribution and, with dropout, the same masks from the same generator state."""
    cfg = model.cfg
    B, T, _ = states.shape
    if T > cfg.context_len:
        raise ValueError(f"context of {T} steps exceeds model.context_len={cfg.context_len}")
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
    D, H, L = cfg.embed_dim, cfg.n_heads, 3 * T
    masks = None
    p = _dropout_rate(model) if model.training else 0.0
    if p > 0:
        # Drawn for all 3T tokens, as the module draws them, so the generator ends where it would.
        masks = dropout_masks([(B, L, D)] + [(B, H, L, L), (B, L, D), (B, L, D)] * len(model.blocks), p,
                              states.device)
    s = (states - model.state_mean) / model.state_std
    r = (rtg * model.reward_scale).unsqueeze(-1)
    tokens = torch.stack([model.embed_return(r), model.embed_state(s), model.embed_action(actions)], dim=2)
    if model.embed_timestep is not None:
        tokens = tokens + model.embed_timestep(timesteps.clamp(0, cfg.max_timestep - 1)).unsqueeze(2)
    tokens = tokens.reshape(B, L, D)
    if model.embed_slot is not None:
        tokens = tokens + model.embed_slot[3 * (cfg.context_len - T):]
    # The last action token is seen only by itself (causal mask) and is no state token: no output
    # depends on it, so the sequence stops before it.
    n = L - 1
    x = F.layer_norm(tokens[:, :n], (D,), model.embed_ln.weight, model.embed_ln.bias, model.embed_ln.eps)
    if masks is not None:
        x = x * masks[0][:, :n]
    bias = attention_bias(mask)[:, :, :n, :n]
    last = len(model.blocks) - 1
    for i, blk in enumerate(model.blocks):
        bm = None if masks is None else (masks[1 + 3 * i][:, :, :n, :n], masks[2 + 3 * i][:, :n], masks[3 + 3 * i][:, :n])
        x = _block(blk, x, bias, bm, slice(1, None, 3) if i == last else None)
    if last < 0:
        x = x[:, 1::3]
    h = F.layer_norm(x, (D,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)  # (B, T, D): state tokens
    return model.action_distribution(h)


def _dropout_rate(model: DecisionTransformer) -> float:
    """The one dropout rate every dropout site of ``model`` uses."""
    rates = {model.embed_drop.p} | {b.drop.p for b in model.blocks} | {b.attn_dropout for b in model.blocks}
    if len(rates) != 1:
        raise ValueError(f"fused_forward needs one dropout rate for every site, the model has {sorted(rates)}")
    return float(rates.pop())
