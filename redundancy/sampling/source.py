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

    def prefill_logits(self, x: Tensor, step: int = 0) -> Tensor:
        """[batch, 1, vocab]: the prompt-only prefill's logits at its last row (what answer slot 0 reads
        in a model with logit shift 1); runs the prefill if it has not run yet."""
        if not self.prefix_cache:
            raise ValueError("prefill logits need the prefix cache (sampler.prefix_cache=true)")
        if self.prefix is None:
            self.prefix = self.engine.prefill(self.prompt, self.ids(x), step=step)
        if self.prefix.shift_logits is None:
            raise ValueError(f"{self.engine.adapter.name} has logit shift 0: its prefill gives no logits for slot 0")
        logits = self.prefix.shift_logits.clone()
        forbidden = getattr(self.engine.adapter, "forbidden_ids", None)
        if forbidden:
            logits[..., forbidden] = torch.finfo(logits.dtype).min
        return logits

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
