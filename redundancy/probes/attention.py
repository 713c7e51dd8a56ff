"""Visual attention probe: how much attention goes to visual tokens, per step, layer (and head).

Query groups: ``masked`` (answer slots still masked at this step), ``decoded`` (answer slots
already committed) and ``text`` (prompt positions that are neither visual nor answer). Metrics:

- ``visual_share``: attention mass on visual keys, averaged over the group's query rows;
- ``visual_entropy``: entropy (nats) of the attention renormalised over the visual keys;
- ``importance`` (per visual token, ``token`` = index in the visual span): mean attention the token
  receives from answer rows, at the steps and layers asked for.

Only the needed query rows are recomputed from the layer's own q/k projections and rotary tables
(no eager attention, no n x n map kept across steps); heads are averaged after the softmax, or
before it with ``average_heads_before_softmax`` (the study's FastV variant; ``head`` is then 0).
Under the prefix cache the answer passes are probed against the cached prompt keys (the ``text``
group is then absent after the prefill: the prompt ran once).
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..engine.events import AttentionEvent, ForwardContext, Listener

QUERY_GROUPS = ("masked", "decoded", "text")


class VisualAttentionProbe(Listener):
    """Records tidy rows ``dict(sample, step, layer, head, token, query_group, metric, value)``."""

    def __init__(
        self,
        layers: Iterable[int] | None = None,
        per_head: bool = False,
        importance_steps: Iterable[int] | None = (),
        importance_layers: Iterable[int] | None = None,
        average_heads_before_softmax: bool = False,
    ):
        self.layers = None if layers is None else set(layers)
        self.per_head = per_head
        self.importance_steps = None if importance_steps is None else set(importance_steps)
        self.importance_layers = None if importance_layers is None else set(importance_layers)
        self.before_softmax = average_heads_before_softmax
        self.rows: list[dict] = []

    def wants_attention(self, ctx: ForwardContext, layer: int) -> bool:
        return ctx.is_decode and ctx.phase in ("full", "cached") and (self.layers is None or layer in self.layers)

    def _wants_importance(self, step: int, layer: int) -> bool:
        s = self.importance_steps is None or step in self.importance_steps
        l_ = self.importance_layers is None or layer in self.importance_layers
        return s and l_

    @torch.no_grad()
    def on_attention(self, ctx: ForwardContext, ev: AttentionEvent) -> None:
        prompt, state = ctx.prompt, ev.state
        keys = ev.keys_live()  # == state.live, except in a cached pass (cached prompt keys first)
        is_vis = prompt.is_visual().to(keys.device)[keys[0]]  # over keys; same layout for every row
        ans_pos = prompt.answer_index
        ans_slots = state.slots_of(ans_pos)[0]
        text_mask = ~state.visual_slots(prompt.is_visual())[0]  # over queries
        text_mask[ans_slots] = False
        text_slots = text_mask.nonzero().squeeze(1)
        query = torch.cat([ans_slots, text_slots])
        b = state.batch_size
        # heads averaged after the softmax by default; before it (one "head") as the study's FastV does
        probs = ev.rows(query.expand(b, -1), average_heads_before_softmax=self.before_softmax)  # [b, h, q, n]
        vis = probs[..., is_vis]  # [b, h, q, n_vis]
        share = vis.sum(-1)  # [b, h, q]
        pv = vis / share.clamp_min(1e-30).unsqueeze(-1)
        ent = -(pv * pv.clamp_min(1e-30).log()).sum(-1)
        n_ans = ans_slots.numel()
        masked = ctx.input_ids[:, ans_pos] == prompt.mask_id  # [b, L]
        zeros_t = torch.zeros(b, text_slots.numel(), dtype=torch.bool, device=masked.device)
        sel = torch.stack([
            torch.cat([masked, zeros_t], 1),  # masked answer slots
            torch.cat([~masked, zeros_t], 1),  # decoded answer slots
            torch.cat([torch.zeros_like(masked), ~zeros_t], 1),  # prompt text
        ]).float()  # [3 groups, b, q]
        cnt = sel.sum(-1)  # [3, b]
        vals = torch.stack([share, ent])  # [2 metrics, b, h, q]
        # every group x metric x sample x head mean in one step, then plain Python lists
        per_head = torch.einsum("mbhq,gbq->gmbh", vals, sel) / cnt.clamp_min(1)[:, None, :, None]
        per_head_l, mean_l, cnt_l = per_head.tolist(), per_head.mean(-1).tolist(), cnt.tolist()
        step, layer = ctx.step, ev.layer
        for gi, g in enumerate(QUERY_GROUPS):
            for mi, metric in enumerate(("visual_share", "visual_entropy")):
                for i in range(b):
                    if cnt_l[gi][i] == 0:
                        continue
                    self._add(i, step, layer, None, None, g, metric, mean_l[gi][mi][i])
                    if self.per_head:
                        for h, v in enumerate(per_head_l[gi][mi][i]):
                            self._add(i, step, layer, h, None, g, metric, v)
        if self._wants_importance(step, layer):
            imp = vis[:, :, :n_ans].mean(dim=(1, 2))  # [b, n_vis_live]: mean over heads and answer rows
            vis_pos = keys[:, is_vis]  # original positions
            span = prompt.visual_index
            for i in range(b):
                tok = torch.searchsorted(span, vis_pos[i])
                for t, v in zip(tok.tolist(), imp[i].tolist()):
                    self._add(i, step, layer, None, t, "answer", "importance", v)

    def _add(self, sample, step, layer, head, token, group, metric, value) -> None:
        self.rows.append(dict(sample=sample, step=step, layer=layer, head=head, token=token,
                              query_group=group, metric=metric, value=value))
