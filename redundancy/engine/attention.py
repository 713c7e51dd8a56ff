"""Attention masks for live tokens, and recomputation of attention rows from a layer's own q/k."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half


def build_mask(
    key_valid: Tensor,
    dtype: torch.dtype,
    query_pos: Tensor | None = None,
    key_pos: Tensor | None = None,
    causal: bool = False,
    key_size: Tensor | None = None,
    n_query: int | None = None,
) -> Tensor:
    """Additive float mask [batch, 1, q, k]: 0 where allowed, ``finfo.min`` where blocked.

    ``key_valid`` [batch, k] blocks padding keys; ``causal`` blocks keys whose original position is
    after the query's; ``key_size`` adds log(size) per key (ToMe's proportional attention).
    """
    b, k = key_valid.shape
    q = n_query if n_query is not None else (query_pos.shape[-1] if query_pos is not None else k)
    neg = torch.finfo(dtype).min
    blocked = (~key_valid)[:, None, None, :].expand(b, 1, q, k)
    if causal:
        if query_pos is None or key_pos is None:
            raise ValueError("a causal mask needs query and key positions")
        blocked = blocked | (key_pos[:, None, None, :] > query_pos[:, None, :, None])
    mask = torch.zeros((b, 1, q, k), dtype=dtype, device=key_valid.device)
    if key_size is not None:
        mask = mask + key_size.clamp(min=1e-6).log().to(dtype)[:, None, None, :]
    return mask.masked_fill(blocked, neg)


def attention_rows(
    attn_module,
    normed: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    query_slots: Tensor | None = None,
    average_heads_before_softmax: bool = False,
    past_keys: Tensor | None = None,
) -> Tensor:
    """Attention probabilities [batch, heads, q, n] recomputed from the layer's own projections.

    ``normed`` [batch, n, d] is the layer's normed input, (``cos``, ``sin``) [batch, n, head_dim]
    the rotary tables of the live tokens and ``mask`` the layer's additive mask. Only the query rows
    in ``query_slots`` [batch, q] are computed. With ``average_heads_before_softmax`` the scores are
    averaged over heads first (the study's FastV variant) and one head is returned. ``past_keys``
    [batch, kv_heads, n_past, head_dim] (rotated) are cached keys placed before the live tokens' keys.
    """
    b, n, _ = normed.shape
    hd = attn_module.head_dim
    if query_slots is None:
        q_in, cq, sq, m = normed, cos, sin, mask
    else:
        gi = query_slots.unsqueeze(-1)
        q_in = normed.gather(1, gi.expand(-1, -1, normed.shape[-1]))
        cq = cos.gather(1, gi.expand(-1, -1, cos.shape[-1]))
        sq = sin.gather(1, gi.expand(-1, -1, sin.shape[-1]))
        m = mask.gather(2, query_slots[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1]))
    nq = q_in.shape[1]
    q = attn_module.q_proj(q_in).view(b, nq, -1, hd).transpose(1, 2)
    k = attn_module.k_proj(normed).view(b, n, -1, hd).transpose(1, 2)
    q = q * cq.unsqueeze(1) + rotate_half(q) * sq.unsqueeze(1)
    k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
    if past_keys is not None:
        k = torch.cat([past_keys.to(k.dtype), k], dim=2)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * attn_module.scaling
    if average_heads_before_softmax:
        scores = scores.mean(dim=1, keepdim=True)
    scores = scores + m.float()
    return torch.softmax(scores, dim=-1)
