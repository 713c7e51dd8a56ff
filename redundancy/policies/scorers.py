"""Token scorers and reducers: each a small class chosen by name (``SCORERS``).

A scorer sees the attention events it asks for and, at decoding layer K, the hidden states entering
layer K; it returns a :class:`Decision` over the alive visual tokens keeping ``k`` of them (or a
merge into ``k`` destinations).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.events import AttentionEvent, ForwardContext
from ..engine.state import TokenState
from ..probes.signals import answer_logit_scores, lens_logprobs, target_weights
from .reduce import Decision

FASTV_QUERIES = ("all", "last", "answer", "masked")


class Scorer:
    """Base: ranks alive visual tokens by a score, keeps the top k."""

    name = "?"
    uses_attention = False  # scores come from layer K-1's attention
    all_layers = False  # scores come from every layer's attention (RedVTP)

    def __init__(self, seed: int = 0, **options: Any):
        self.seed = seed
        self.options = options
        self.reset()

    def reset(self) -> None:
        self._last: tuple[Tensor, Tensor] | None = None  # (positions, scores) from the last observation
        self._acc: list[tuple[Tensor, Tensor]] | None = None

    def needs_answer_rows(self) -> bool:
        """Whether scoring reads the answer rows (then it cannot run in a prefix-cache prefill)."""
        return False

    def observe(self, ctx: ForwardContext, ev: AttentionEvent) -> None:
        """Record what the score needs from an attention event."""

    def scores(self, ctx: ForwardContext, hidden: Tensor, state: TokenState, vis: Tensor) -> Tensor:
        """[batch, n_vis_alive] scores of the alive visual tokens (higher = keep)."""
        raise NotImplementedError

    def decide(self, ctx: ForwardContext, hidden: Tensor, state: TokenState, vis: Tensor, k: int) -> Decision:
        """Keep the top ``k`` alive visual tokens by score (ties: the earlier position wins)."""
        sc = self.scores(ctx, hidden, state, vis).float().to(state.live.device)
        pos = state.live[:, vis[0]]
        idx = sc.argsort(dim=1, descending=True, stable=True)[:, : min(k, sc.shape[1])]
        return Decision(pos.gather(1, idx).sort(dim=1).values)


def _vis_cols(ev: AttentionEvent, ctx: ForwardContext) -> Tensor:
    return ev.state.visual_slots(ctx.prompt.is_visual())[0]


def _query_slots(ctx: ForwardContext, state: TokenState, which: str) -> tuple[Tensor, Tensor]:
    """Live-axis query slots [batch, q] for a query choice, and their weights [batch, q]."""
    p = ctx.prompt
    b = state.batch_size
    dev = state.live.device
    if which == "all":
        slots = torch.arange(state.n_live, device=dev).expand(b, -1)
        return slots, torch.ones(slots.shape, device=dev)
    if which == "text":
        if p.text_index is None:
            raise ValueError("this model's prompt has no text span; text-guided scorers need text_index")
        return state.slots_of(p.text_index), p.key_valid[:, p.text_index].float()
    ans = state.slots_of(p.answer_index)
    if which == "last":
        return ans[:, -1:], torch.ones(b, 1, device=dev)
    if which == "answer":
        return ans, torch.ones(ans.shape, device=dev)
    if which == "masked":
        m = (ctx.input_ids[:, p.answer_index] == p.mask_id).float()
        return ans, torch.where(m.sum(1, keepdim=True) > 0, m, torch.ones_like(m))
    raise ValueError(f"unknown query choice {which!r}; choose one of: {', '.join(FASTV_QUERIES)}")


def _align(stored_pos: Tensor, stored: Tensor, cur_pos: Tensor) -> Tensor:
    """Scores recorded for ``stored_pos`` [b, m] re-indexed to the alive positions ``cur_pos`` [b, n]."""
    idx = torch.searchsorted(stored_pos, cur_pos).clamp(max=stored_pos.shape[1] - 1)
    if not bool((stored_pos.gather(1, idx) == cur_pos).all()):
        raise RuntimeError("a visual token alive at layer K was not scored at layer K-1")
    return stored.gather(1, idx)


def _received(probs: Tensor, w: Tensor, cols: Tensor) -> Tensor:
    """Mean over heads and (weighted) query rows of the attention each visual column receives."""
    per_q = probs.mean(dim=1)[..., cols]  # [b, q, n_vis]
    w = w.unsqueeze(-1)
    return (per_q * w).sum(1) / w.sum(1).clamp_min(1e-9)


class FastV(Scorer):
    """Attention received by each visual token at layer K-1 (FastV), from all / last / answer rows."""

    name = "fastv"
    uses_attention = True

    def needs_answer_rows(self) -> bool:
        return self.options.get("query", "all") != "all"

    def observe(self, ctx, ev):
        slots, w = _query_slots(ctx, ev.state, self.options.get("query", "all"))
        before = bool(self.options.get("heads_before_softmax", False))
        probs = ev.rows(slots, average_heads_before_softmax=before)
        cols = _vis_cols(ev, ctx)
        self._last = (ev.state.live[:, cols], _received(probs, w, cols))  # positions, scores

    def scores(self, ctx, hidden, state, vis):
        if self._last is None:
            raise RuntimeError(f"{self.name}: no attention observed at layer K-1 (was that layer skipped?)")
        return _align(*self._last, state.live[:, vis[0]])


class RedVTP(Scorer):
    """Attention from still-masked answer rows to visual tokens, averaged over layers and heads."""

    name = "redvtp"
    uses_attention = True
    all_layers = True

    def needs_answer_rows(self) -> bool:
        return True

    def observe(self, ctx, ev):
        slots, w = _query_slots(ctx, ev.state, "masked")
        cols = _vis_cols(ev, ctx)
        if self._acc is None:
            self._acc = []
        self._acc.append((ev.state.live[:, cols], _received(ev.rows(slots), w, cols)))

    def scores(self, ctx, hidden, state, vis):
        cur = state.live[:, vis[0]]
        return torch.stack([_align(p, v, cur) for p, v in self._acc]).mean(0)


class SparseVLM(Scorer):
    """Text-guided: attention from question tokens at layer K-1; recycles part of the pruned tokens.

    Of the pruned tokens the top ``recycle_fraction`` (default 0.3) by score are clustered into
    ``n // 10 + 1`` tokens (each merged, size-weighted, into its best-scored member); the budget
    stays k: k - clusters tokens are kept outright.
    """

    name = "sparsevlm"
    uses_attention = True

    def observe(self, ctx, ev):
        slots, w = _query_slots(ctx, ev.state, "text")
        cols = _vis_cols(ev, ctx)
        self._last = (ev.state.live[:, cols], _received(ev.rows(slots), w, cols))

    def scores(self, ctx, hidden, state, vis):
        if self._last is None:
            raise RuntimeError(f"{self.name}: no attention observed at layer K-1 (was that layer skipped?)")
        return _align(*self._last, state.live[:, vis[0]])

    def decide(self, ctx, hidden, state, vis, k):
        sc = self.scores(ctx, hidden, state, vis).float()
        n = sc.shape[1]
        frac = float(self.options.get("recycle_fraction", 0.3))
        n_rec = int(frac * (n - k)) if self.options.get("recycle", True) else 0
        c = n_rec // 10 + 1 if n_rec > 0 else 0
        if c == 0 or k - c < 1:
            return super().decide(ctx, hidden, state, vis, k)
        pos = state.live[:, vis[0]]
        h = F.normalize(hidden[:, vis[0]].float(), dim=-1)
        keep_l, mpos_l, mem_l = [], [], []
        for i in range(sc.shape[0]):
            order = sc[i].argsort(descending=True, stable=True)
            kept = order[: k - c]
            rec = order[k - c: k - c + n_rec]
            centres = rec[:c]
            assign = (h[i, rec] @ h[i, centres].T).argmax(-1)
            assign[:c] = torch.arange(c, device=assign.device)
            dest = torch.cat([kept, centres])
            dpos = pos[i, dest]
            ordr = dpos.argsort()
            dpos = dpos[ordr]
            rank = torch.empty_like(ordr)
            rank[ordr] = torch.arange(ordr.numel(), device=ordr.device)
            members = torch.full((n,), -1, dtype=torch.long, device=ordr.device)
            members[kept] = rank[: k - c]
            members[rec] = rank[k - c + assign]
            keep_l.append(dpos)
            mpos_l.append(pos[i])
            mem_l.append(members)
        return Decision(torch.stack(keep_l), torch.stack(mpos_l), torch.stack(mem_l))


class AnswerLogit(Scorer):
    """Logit-lens answer-logit signal on the hidden states entering layer K (see probes.signals)."""

    name = "answer_logit"

    def needs_answer_rows(self) -> bool:
        return True

    def scores(self, ctx, hidden, state, vis):
        p = ctx.prompt
        ans = state.slots_of(p.answer_index)
        h_ans = hidden.gather(1, ans.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        shift = ctx.adapter.logit_shift
        if shift:  # the row before each answer slot predicts it
            h_ans = hidden.gather(1, state.slots_of(p.answer_index - 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        preds = lens_logprobs(ctx.adapter, h_ans).argmax(-1)
        masked = ctx.input_ids[:, p.answer_index] == p.mask_id
        tok = ctx.adapter.tokenizer
        w = target_weights(preds, masked, [tok.end_id, tok.pad_id])
        return answer_logit_scores(ctx.adapter, hidden[:, vis[0]], preds, w)


class DivPrune(Scorer):
    """Max-min diversity selection (cosine distance) on the hidden states entering layer K."""

    name = "divprune"

    def decide(self, ctx, hidden, state, vis, k):
        pos = state.live[:, vis[0]]
        h = F.normalize(hidden[:, vis[0]].float(), dim=-1)
        g = torch.Generator().manual_seed(self.seed * 100003 + ctx.step)
        out = []
        for i in range(h.shape[0]):
            n = h.shape[1]
            dist = 1 - h[i] @ h[i].T
            chosen = [int(torch.randint(n, (1,), generator=g))]
            mind = dist[chosen[0]].clone()
            mind[chosen[0]] = -1
            while len(chosen) < min(k, n):
                j = int(mind.argmax())
                chosen.append(j)
                mind = torch.minimum(mind, dist[j])
                mind[chosen] = -1
            out.append(pos[i, torch.tensor(chosen, device=pos.device)].sort().values)
        return Decision(torch.stack(out))


class ToMe(Scorer):
    """Bipartite soft matching: merge the most similar visual tokens until k remain.

    Alternate tokens (by position) form sets A and B; each A token is matched with its most similar
    B token (cosine of hidden states) and the most similar pairs are merged into their B
    destination (size-weighted mean, destination's position). Rounds repeat until k tokens remain.
    """

    name = "tome"

    def decide(self, ctx, hidden, state, vis, k):
        pos_all = state.live[:, vis[0]]
        sizes = state.sizes()[:, vis[0]].float()
        keep_l, mem_l = [], []
        for i in range(pos_all.shape[0]):
            n = pos_all.shape[1]
            dev = pos_all.device
            group = torch.arange(n, device=dev)  # original alive index -> current token id
            alive = list(range(n))  # current token ids (index of their destination member)
            x = hidden[i, vis[0]].float().clone()
            s = sizes[i].clone()
            while len(alive) > k:
                a_ids, b_ids = alive[0::2], alive[1::2]
                if not b_ids:
                    break
                xa = F.normalize(x[a_ids], dim=-1)
                xb = F.normalize(x[b_ids], dim=-1)
                sim = xa @ xb.T
                best, match = sim.max(dim=1)
                r = min(len(alive) - k, len(a_ids))
                merge = best.argsort(descending=True)[:r]
                for m in merge.tolist():
                    src, dst = a_ids[m], b_ids[int(match[m])]
                    tot = s[src] + s[dst]
                    x[dst] = (x[src] * s[src] + x[dst] * s[dst]) / tot
                    s[dst] = tot
                    group[group == src] = dst
                gone = {a_ids[m] for m in merge.tolist()}
                alive = [t for t in alive if t not in gone]
            dest = torch.tensor(alive, device=dev)
            dpos = pos_all[i, dest]
            order = dpos.argsort()
            rank = torch.empty(n, dtype=torch.long, device=dev)
            rank[dest[order]] = torch.arange(dest.numel(), device=dev)
            keep_l.append(dpos[order])
            mem_l.append(rank[group])
        return Decision(torch.stack(keep_l), pos_all, torch.stack(mem_l))


class Trim(Scorer):
    """Cosine relevance of visual tokens to the question tokens (hidden states entering layer K)."""

    name = "trim"

    def scores(self, ctx, hidden, state, vis):
        q, w = _query_slots(ctx, state, "text")
        hq = F.normalize(hidden.gather(1, q.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])).float(), dim=-1)
        hv = F.normalize(hidden[:, vis[0]].float(), dim=-1)
        sim = hv @ hq.transpose(1, 2)  # [b, n_vis, q]
        return sim.masked_fill(w.unsqueeze(1) == 0, -2.0).max(-1).values


class Random(Scorer):
    """Seeded random scores (a different draw per step)."""

    name = "random"

    def scores(self, ctx, hidden, state, vis):
        g = torch.Generator().manual_seed(self.seed * 100003 + ctx.step)
        return torch.rand(state.batch_size, int(vis[0].sum()), generator=g).to(state.live.device)


class VTW(Scorer):
    """Visual-token withdrawal: every visual token leaves after layer K."""

    name = "vtw"

    def decide(self, ctx, hidden, state, vis, k):
        return Decision(torch.empty(state.batch_size, 0, dtype=torch.long, device=state.live.device))


SCORERS: dict[str, type[Scorer]] = {
    c.name: c for c in (FastV, RedVTP, AnswerLogit, SparseVLM, DivPrune, ToMe, Trim, Random, VTW)
}
