"""Applying a reduction of visual tokens to the live state: drop, or merge into destinations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.state import TokenState


@dataclass
class Decision:
    """Which visual tokens survive, per sample, in original positions.

    ``keep`` [batch, k]: original positions of the surviving visual tokens (sorted). For merges,
    ``members`` [batch, n_alive_vis] maps each alive visual token (original position in
    ``member_pos``) to the index in ``keep`` it was merged into, or -1 when dropped.
    """

    keep: Tensor
    member_pos: Tensor | None = None
    members: Tensor | None = None

    @property
    def is_merge(self) -> bool:
        return self.members is not None

    def mapping(self) -> tuple[Tensor, Tensor]:
        """(member_pos, members) also for a drop-only decision (each kept token its own member)."""
        if self.members is not None:
            return self.member_pos, self.members
        idx = torch.arange(self.keep.shape[1], device=self.keep.device).expand_as(self.keep)
        return self.keep, idx

    def then(self, new: "Decision") -> "Decision":
        """This decision followed by ``new`` (taken among this one's survivors), as one decision.

        Tokens merged by the first decision stay merged into whatever their destination became.
        """
        if not (self.is_merge or new.is_merge):
            return new
        pos1, mem1 = self.mapping()
        pos2, mem2 = new.mapping()
        out = torch.full_like(mem1, -1)
        for i in range(pos1.shape[0]):
            lookup = {int(p): int(m) for p, m in zip(pos2[i].tolist(), mem2[i].tolist())}
            dest1 = self.keep[i]
            for j, d in enumerate(mem1[i].tolist()):
                if d >= 0:
                    out[i, j] = lookup.get(int(dest1[d]), -1)
        return Decision(new.keep, pos1, out)


def apply_decision(hidden: Tensor, state: TokenState, visual_mask: Tensor, decision: Decision
                   ) -> tuple[Tensor, TokenState]:
    """Reduce ``hidden`` [batch, n_live, d] and ``state`` to the decision's visual tokens.

    Non-visual tokens always stay. Dropped tokens vanish; merged tokens become the size-weighted
    mean of their members at the destination's position, with sizes summed. Visual tokens that the
    decision keeps but that are no longer alive are ignored (a decision never re-adds a token).
    """
    b, n, d = hidden.shape
    is_vis = visual_mask.to(state.live.device)[state.live]  # [b, n]
    sizes = state.sizes()
    out_h, out_live, out_size = [], [], []
    for i in range(b):
        live = state.live[i]
        keep = ~is_vis[i] | (torch.isin(live, decision.keep[i]) & is_vis[i])
        h, s = hidden[i], sizes[i]
        if decision.is_merge:
            # members that are alive, and the live slot of the destination each was merged into
            mpos, mem = decision.member_pos[i], decision.members[i]
            ok = (mem >= 0) & torch.isin(mpos, live)
            src = torch.searchsorted(live, mpos[ok])
            dst = torch.searchsorted(live, decision.keep[i][mem[ok]])
            w = s[src].to(h.dtype)
            num = torch.zeros_like(h).index_add_(0, dst, h[src] * w.unsqueeze(1))
            den = torch.zeros(n, dtype=h.dtype, device=h.device).index_add_(0, dst, w)
            merged = den > 0
            h = torch.where(merged.unsqueeze(1), num / den.clamp_min(1e-12).unsqueeze(1), h)
            s = torch.where(merged, den.to(s.dtype), s)
        out_h.append(h[keep])
        out_live.append(live[keep])
        out_size.append(s[keep])
    lens = {x.numel() for x in out_live}
    if len(lens) != 1:
        raise RuntimeError(f"samples of a batch kept different numbers of tokens {sorted(lens)}")
    new_size = torch.stack(out_size)
    merged = decision.is_merge or state.size is not None
    return torch.stack(out_h), TokenState(torch.stack(out_live), new_size if merged else None)
