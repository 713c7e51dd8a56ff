"""Logits sources: the engine seen by a sampler, with an optional prefix cache."""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import Engine, PrefixCache
from ..models.base import Prompt


class EngineSource:
    """``(x, step) -> logits`` for a prompt: writes ``x`` into the answer slots and runs the engine.

    With ``prefix_cache`` the prompt runs once at the first call and later calls run only the
    answer tokens against it. ``tokens_executed`` collects the per-layer counts of every pass.
    Ids the adapter lists in ``forbidden_ids`` (LLaDA-V's sampler forbids four specials at answer
    slots) get the lowest finite logit.
    """

    def __init__(self, engine: Engine, prompt: Prompt, prefix_cache: bool = False, tag: str = "decode"):
        self.engine, self.prompt, self.prefix_cache, self.tag = engine, prompt, prefix_cache, tag
        self.prefix: PrefixCache | None = None
        self.tokens_executed: list[list[int]] = []

    def ids(self, x: Tensor) -> Tensor:
        """The full sequence with answer slots set to ``x``."""
        ids = self.prompt.input_ids.clone()
        ids[:, self.prompt.answer_index] = x
        return ids

    def __call__(self, x: Tensor, step: int) -> Tensor:
        ids = self.ids(x)
        if self.prefix_cache:
            if self.prefix is None:
                self.prefix = self.engine.prefill(self.prompt, ids, step=step)
            out = self.engine.forward(self.prompt, ids, step=step, prefix=self.prefix, tag=self.tag)
        else:
            out = self.engine.forward(self.prompt, ids, step=step, tag=self.tag)
        self.tokens_executed.append(out.tokens_executed)
        forbidden = getattr(self.engine.adapter, "forbidden_ids", None)
        if forbidden:
            out.logits[..., forbidden] = torch.finfo(out.logits.dtype).min
        return out.logits
