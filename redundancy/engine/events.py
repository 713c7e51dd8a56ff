"""Event points of the engine and the sampler: probes observe them, policies decide at them.

A probe subclasses :class:`Listener` and only reads; a policy subclasses :class:`Policy` and may
return a reduced ``(hidden, state)`` or ask for a layer to be skipped. Neither reaches into the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .attention import attention_rows
from .state import TokenState

if TYPE_CHECKING:  # pragma: no cover
    from ..models.base import Adapter, Prompt


@dataclass
class ForwardContext:
    """One forward pass: which denoising step, on which prompt and sequence.

    ``phase`` is ``full`` (the whole sequence), ``prefill`` (the prompt into a prefix cache) or
    ``cached`` (answer tokens against a frozen prefix). ``tag`` names the purpose of the pass
    (``decode``, or e.g. ``forced`` / ``oracle`` for measurement passes) so listeners can ignore
    passes that are not part of decoding.
    """

    step: int
    prompt: "Prompt"
    input_ids: Tensor
    adapter: "Adapter"
    phase: str = "full"
    tag: str = "decode"
    scratch: dict = field(default_factory=dict)

    @property
    def is_decode(self) -> bool:
        return self.tag == "decode"


@dataclass
class AttentionEvent:
    """What a probe needs to recompute attention rows of layer ``layer`` on the live tokens.

    ``normed`` [batch, n_live, d] is the layer's normed input; ``cos``/``sin`` [batch, n_live, hd]
    the rotary tables at the original positions; ``mask`` [batch, 1, n_q, n_k] the additive mask;
    ``state`` the live tokens. In a cached pass (prefix cache) ``state`` holds the query tokens (the
    answer slots), ``past_keys`` the cached prompt keys with RoPE applied and ``key_live`` the
    original positions of all keys (cached prompt, then the queries).
    """

    layer: int
    normed: Tensor
    cos: Tensor
    sin: Tensor
    mask: Tensor
    state: TokenState
    attn_module: Any
    past_keys: Tensor | None = None
    key_live: Tensor | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    def keys_live(self) -> Tensor:
        """Original positions [batch, n_keys] of the keys the rows are over."""
        return self.state.live if self.key_live is None else self.key_live

    def rows(self, query_slots: Tensor | None = None, average_heads_before_softmax: bool = False) -> Tensor:
        """Attention probabilities [batch, heads, q, n_keys] for the given live query slots (all if None).

        Results are memoised per event so several listeners share one recomputation.
        """
        key = (None if query_slots is None else (tuple(query_slots.shape), query_slots.cpu().numpy().tobytes()),
               average_heads_before_softmax)
        if key not in self._memo:
            with torch.no_grad():
                self._memo[key] = attention_rows(
                    self.attn_module, self.normed, self.cos, self.sin, self.mask, query_slots,
                    average_heads_before_softmax, past_keys=self.past_keys,
                )
        return self._memo[key]


class Listener:
    """Observer of engine and sampler events; every method is a no-op by default."""

    def wants_attention(self, ctx: ForwardContext, layer: int) -> bool:
        """Return True to receive :meth:`on_attention` for this layer in this pass."""
        return False

    def on_forward_start(self, ctx: ForwardContext, state: TokenState) -> None:
        pass

    def on_attention(self, ctx: ForwardContext, event: AttentionEvent) -> None:
        pass

    def on_layer_end(self, ctx: ForwardContext, layer: int, hidden: Tensor, state: TokenState) -> None:
        pass

    def on_forward_end(self, ctx: ForwardContext, output: "Any") -> None:
        pass

    # sampler events
    def on_generation_start(self, prompt: "Prompt", sampler: Any) -> None:
        pass

    def on_step_end(self, record: Any) -> None:
        pass

    def on_generation_end(self, trajectory: Any) -> None:
        pass


class Policy(Listener):
    """Decides which tokens live and which layers run; the default keeps everything."""

    def initial_state(self, ctx: ForwardContext, state: TokenState) -> TokenState:
        """The live set a pass starts from (e.g. a persistent kept set from an earlier step)."""
        return state

    def on_input(self, ctx: ForwardContext, hidden: Tensor, state: TokenState) -> tuple[Tensor, TokenState]:
        """Reduce tokens before the first decoder layer (K = 0)."""
        return hidden, state

    def before_layer(
        self, ctx: ForwardContext, layer: int, hidden: Tensor, state: TokenState
    ) -> tuple[Tensor, TokenState]:
        """Reduce tokens before decoder layer ``layer`` runs."""
        return hidden, state

    def skip_layer(self, ctx: ForwardContext, layer: int) -> bool:
        """Return True to skip decoder layer ``layer`` in this pass."""
        return False

    def adjust_prefix(self, ctx: ForwardContext, cache: Any) -> Any:
        """Edit a freshly built prefix cache (e.g. gather the kept visual tokens at every layer)."""
        return cache

    def validate(self, num_layers: int, num_steps: int, prefix_cache: bool = False) -> None:
        """Raise ValueError for settings that do not fit the model or the sampler (before any compute)."""


class NoPolicy(Policy):
    """Keep every token, run every layer."""
