"""The toolkit's side of a golden comparison: the same fields, computed by the adapters and samplers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...engine import Engine
from ..real.adapter import RealDMLLM, load_real


def load_adapter(model: str, checkpoint: Path, dtype: str = "float32", **options) -> RealDMLLM:
    return load_real(model, checkpoint, dtype=dtype, **options)


def split_visual(ids: np.ndarray, placeholder: int | None) -> tuple[list[int], int, list[int]]:
    """(ids before the visual span, its length, ids after it): the span is the run of ``placeholder``."""
    ids = [int(i) for i in ids]
    if placeholder is None or placeholder not in ids:
        return ids, 0, []
    a = ids.index(placeholder)
    b = a
    while b < len(ids) and ids[b] == placeholder:
        b += 1
    return ids[:a], b - a, ids[b:]


def prompt_text_ids(adapter: RealDMLLM, prompt) -> tuple[list[int], int, list[int]]:
    """The toolkit prompt (batch row 0, without the answer slots) split like :func:`split_visual`."""
    ids = prompt.input_ids[0].tolist()
    valid = prompt.key_valid[0].tolist()
    v0, v1 = int(prompt.visual_index[0]), int(prompt.visual_index[-1]) + 1
    a0 = int(prompt.answer_index[0])
    before = [i for i, ok in zip(ids[:v0], valid[:v0]) if ok]
    after = [i for i, ok in zip(ids[v1:a0], valid[v1:a0]) if ok]
    return before, v1 - v0, after


@dataclass
class PassSummary:
    """Raw-row summaries of one full pass, aligned with a golden's rows P-1 .. P+L-1."""

    logits_sel: np.ndarray  # [L, S] at the rows the answer slots read
    lse: np.ndarray  # [L]
    argmax: np.ndarray  # [L]
    rows: np.ndarray  # [L]: index of each row in the golden's L+1 rows (j + 1 - logit_shift)


@torch.no_grad()
def full_pass(adapter: RealDMLLM, prompt, sel_ids: np.ndarray) -> PassSummary:
    """One engine pass with every answer slot masked; logits of the rows the answer slots read."""
    out = Engine(adapter).forward(prompt, prompt.input_ids, step=0)
    x = out.logits[0].float()  # [L, V], row j predicts answer slot j
    L = x.shape[0]
    return PassSummary(x[:, torch.as_tensor(sel_ids)].numpy(), torch.logsumexp(x, -1).numpy(),
                       x.argmax(-1).numpy(), np.arange(L) + 1 - adapter.logit_shift)
