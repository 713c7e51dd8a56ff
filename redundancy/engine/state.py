"""TokenState: which tokens of the original sequence are alive, and their sizes after merging."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenState:
    """Live tokens of a batch.

    ``live`` [batch, n_live] holds sorted indices into the original sequence (so original RoPE
    positions are ``position_ids.gather(live)``); ``size`` [batch, n_live] counts how many original
    tokens each live token stands for (1 unless merged).
    """

    live: Tensor
    size: Tensor | None = None

    @classmethod
    def full(cls, batch: int, seq_len: int, device: torch.device | str = "cpu") -> "TokenState":
        """Every token alive."""
        return cls(torch.arange(seq_len, device=device).expand(batch, seq_len).clone())

    @classmethod
    def dropping(cls, batch: int, seq_len: int, drop: Tensor | list[int], device="cpu") -> "TokenState":
        """Every token alive except the original positions in ``drop`` (same for all rows)."""
        keep = torch.ones(seq_len, dtype=torch.bool)
        keep[torch.as_tensor(drop, dtype=torch.long)] = False
        idx = keep.nonzero().squeeze(1).to(device)
        return cls(idx.expand(batch, -1).clone())

    @property
    def n_live(self) -> int:
        return int(self.live.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.live.shape[0])

    def gather(self, x: Tensor) -> Tensor:
        """Rows of ``x`` [batch, seq, ...] at the live positions -> [batch, n_live, ...]."""
        idx = self.live
        if x.ndim > 2:
            idx = idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, idx)

    def positions(self, position_ids: Tensor) -> Tensor:
        """Original position ids of the live tokens ([batch, n_live] or [3, batch, n_live])."""
        if position_ids.ndim == 3:
            return position_ids.gather(2, self.live.unsqueeze(0).expand(position_ids.shape[0], -1, -1))
        return position_ids.gather(1, self.live)

    def sizes(self) -> Tensor:
        """Token sizes, ones when nothing was merged."""
        if self.size is None:
            return torch.ones(self.live.shape, dtype=torch.float32, device=self.live.device)
        return self.size

    def select(self, keep: Tensor) -> "TokenState":
        """Keep live slots ``keep`` [batch, k] (indices into the live axis), sorted by original position."""
        live = self.live.gather(1, keep)
        order = live.argsort(dim=1)
        live = live.gather(1, order)
        size = None if self.size is None else self.size.gather(1, keep).gather(1, order)
        return TokenState(live, size)

    def slots_of(self, positions: Tensor) -> Tensor:
        """Live-axis slots [batch, m] of original ``positions`` [m]; raises if any is not alive."""
        pos = positions.to(self.live.device).expand(self.batch_size, -1).contiguous()
        slot = torch.searchsorted(self.live, pos)
        slot = slot.clamp(max=self.n_live - 1)
        if not bool((self.live.gather(1, slot) == pos).all()):
            raise RuntimeError("a required position (answer or text) is not alive; only visual tokens may be removed")
        return slot

    def visual_slots(self, visual_mask: Tensor) -> Tensor:
        """Bool [batch, n_live]: which live tokens are visual (``visual_mask`` is bool [seq])."""
        return visual_mask.to(self.live.device)[self.live]
