"""Plain autoregressive greedy decoding with a causal mask, for AR baselines (``toy-ar``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .diffusion import LogitsSource, StepRecord, Trajectory


class AutoregressiveSampler:
    """Greedy left-to-right decoding: step t commits answer slot t (logits must be causal-shifted)."""

    def __init__(self, stop_at_end: bool = True):
        self.stop_at_end = stop_at_end

    def check(self, answer_length: int) -> tuple[int, int, int]:
        if answer_length < 1:
            raise ValueError(f"answer length must be >= 1, got {answer_length}")
        return answer_length, answer_length, 1

    def generate(
        self, source: LogitsSource, x: Tensor, mask_id: int, end_ids: Sequence[int] = (), listeners: Sequence = (),
        keep_logits: bool = False,
    ) -> Trajectory:
        """Decode slot after slot; after every row emitted an end token the rest is filled with it."""
        x = x.clone()
        traj = Trajectory(tokens=x)
        L = x.shape[1]
        ended = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        end_t = torch.tensor(list(end_ids), dtype=torch.long, device=x.device)
        for t in range(L):
            logits = source(x, t)
            traj.n_forward += 1
            tok = logits[:, t].argmax(-1)
            if end_t.numel():
                tok = torch.where(ended, end_t[0], tok)
            commit = torch.zeros_like(x, dtype=torch.bool)
            commit[:, t] = True
            conf = torch.full(x.shape, float("nan"), device=x.device)
            conf[:, t] = torch.softmax(logits[:, t].float(), -1).max(-1).values
            before = x.clone()
            x[:, t] = tok
            rec = StepRecord(t, 0, before, x.clone(), commit, conf, logits)
            for lst in listeners:
                lst.on_step_end(rec)
            if not keep_logits:
                rec.logits = None
            traj.steps.append(rec)
            if end_t.numel():
                ended |= torch.isin(tok, end_t)
                if self.stop_at_end and bool(ended.all()) and t + 1 < L:
                    x[:, t + 1:] = end_t[0]
                    break
        traj.tokens = x
        return traj
