"""Answer signals: per-step confidence of answer slots, and per-visual-token importance signals.

Two per-visual-token signals, this toolkit's own definitions (the study does not define its logit
signal):

- **answer-logit** (logit lens): at layer ``l`` each visual token's hidden state is passed through
  the final norm and the output head; its score is the mean log-probability it assigns to the
  answer tokens being decoded, i.e. the current predictions ``x_i`` of the still-masked answer
  slots whose prediction is content (not end / padding; all masked slots if none is content).
  ``score_j = mean_i log softmax(head(norm(h_j^l)))[x_i]``. The targets are the final-layer
  predictions of the same pass (probe) or, mid-pass, the logit-lens predictions of the answer rows
  at the same layer (what a policy can know before layer K runs).
- **drop-one oracle**: the KL divergence, over the still-masked answer slots, between the output
  distributions of the full pass and of the pass with visual token ``j`` alone removed. Expensive
  (one extra pass per visual token, batched); use it to rank cheap signals against.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..engine.engine import Engine
from ..engine.events import ForwardContext, Listener
from ..engine.state import TokenState


def lens_logprobs(adapter, hidden: Tensor) -> Tensor:
    """Logit lens: log-softmax of head(final_norm(hidden)) -> [..., vocab]."""
    return torch.log_softmax(adapter.lm_head(adapter.final_norm(hidden)).float(), dim=-1)


def answer_logit_scores(adapter, visual_hidden: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    """[batch, n_vis] mean log-probability of ``targets`` [batch, L] (weighted by ``weight`` [batch, L])."""
    lp = lens_logprobs(adapter, visual_hidden)  # [b, n_vis, V]
    idx = targets.unsqueeze(1).expand(-1, lp.shape[1], -1)
    picked = lp.gather(-1, idx)  # [b, n_vis, L]
    w = weight.float().unsqueeze(1)
    return (picked * w).sum(-1) / w.sum(-1).clamp_min(1.0)


def target_weights(preds: Tensor, masked: Tensor, end_ids: Sequence[int]) -> Tensor:
    """Masked slots predicting content; falls back to every masked slot where none does."""
    content = masked & ~torch.isin(preds, torch.tensor(list(end_ids), device=preds.device))
    none = ~content.any(dim=1, keepdim=True)
    return torch.where(none, masked, content)


class AnswerSignalProbe(Listener):
    """Per step: answer-slot confidence and commitment; per chosen (step, layer): answer-logit scores.

    Rows use ``token`` for the answer slot (``query_group='answer_slot'``) or the visual token index
    (``query_group='visual'``).
    """

    def __init__(self, logit_layers: Iterable[int] = (), logit_steps: Iterable[int] | None = (0,),
                 end_ids: Sequence[int] = ()):
        self.logit_layers = set(logit_layers)
        self.logit_steps = None if logit_steps is None else set(logit_steps)
        self.end_ids = list(end_ids)
        self.rows: list[dict] = []
        self._hidden: dict[int, tuple[Tensor, TokenState]] = {}

    def _wants(self, ctx: ForwardContext) -> bool:
        return ctx.is_decode and ctx.phase == "full" and (self.logit_steps is None or ctx.step in self.logit_steps)

    def on_forward_start(self, ctx, state) -> None:
        self._hidden = {}

    def on_layer_end(self, ctx, layer, hidden, state) -> None:
        if layer in self.logit_layers and self._wants(ctx):
            self._hidden[layer] = (hidden, state)

    @torch.no_grad()
    def on_forward_end(self, ctx, output) -> None:
        if not self._hidden:
            return
        prompt = ctx.prompt
        masked = ctx.input_ids[:, prompt.answer_index] == prompt.mask_id
        preds = output.logits.argmax(-1)
        tok = ctx.adapter.tokenizer
        w = target_weights(preds, masked, self.end_ids or [tok.end_id, tok.pad_id])
        for layer, (hidden, state) in sorted(self._hidden.items()):
            vis = state.visual_slots(prompt.is_visual())[0]
            scores = answer_logit_scores(ctx.adapter, hidden[:, vis], preds, w)
            toks = torch.searchsorted(prompt.visual_index, state.live[0, vis]).tolist()
            for i in range(scores.shape[0]):
                for t, v in zip(toks, scores[i].tolist()):
                    self.rows.append(dict(sample=i, step=ctx.step, layer=layer, head=None, token=t,
                                          query_group="visual", metric="answer_logit", value=v))
        self._hidden = {}

    def on_step_end(self, record) -> None:
        conf, com = record.confidence, record.committed
        for i in range(conf.shape[0]):
            for slot in range(conf.shape[1]):
                c = float(conf[i, slot])
                if c == c:  # masked before this step
                    self.rows.append(dict(sample=i, step=record.step, layer=None, head=None, token=slot,
                                          query_group="answer_slot", metric="confidence", value=c))
                if bool(com[i, slot]):
                    self.rows.append(dict(sample=i, step=record.step, layer=None, head=None, token=slot,
                                          query_group="answer_slot", metric="committed", value=1.0))


@torch.no_grad()
def drop_one_oracle(adapter, prompt, input_ids: Tensor, state: TokenState | None = None) -> Tensor:
    """[batch, n_visual] KL(full || without token j) summed over still-masked answer slots (mean).

    Visual tokens not alive in ``state`` get NaN.
    """
    engine = Engine(adapter)
    b = prompt.batch_size
    base_state = state or TokenState.full(b, prompt.seq_len, input_ids.device)
    full = torch.log_softmax(engine.forward(prompt, input_ids, state=base_state, tag="oracle").logits, -1)
    masked = (input_ids[:, prompt.answer_index] == prompt.mask_id).float()
    out = torch.full((b, prompt.n_visual), float("nan"))
    vis_mask = prompt.is_visual()
    for i in range(b):
        live = base_state.live[i]
        vis_slots = vis_mask[live].nonzero().squeeze(1)
        n = vis_slots.numel()
        if n == 0:
            continue
        keep = torch.ones(n, live.numel(), dtype=torch.bool)
        keep[torch.arange(n), vis_slots] = False
        st = TokenState(live.expand(n, -1)[keep].view(n, -1))
        sub = prompt.select([i] * n)
        lp = torch.log_softmax(engine.forward(sub, input_ids[[i] * n], state=st, tag="oracle").logits, -1)
        p = full[i].exp()
        kl = (p * (full[i] - lp)).sum(-1)  # [n, L]
        m = masked[i]
        val = (kl * m).sum(-1) / m.sum().clamp_min(1.0)
        toks = torch.searchsorted(prompt.visual_index, live[vis_slots])
        out[i, toks] = val
    return out
