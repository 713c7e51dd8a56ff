"""The engine: one denoising forward pass, layer by layer, over the live tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..models.base import Adapter, Prompt
from .attention import build_mask
from .events import AttentionEvent, ForwardContext, Listener, NoPolicy, Policy
from .state import TokenState


@dataclass
class ForwardOutput:
    """Logits [batch, answer_len, vocab] aligned to the answer slots (logit shift applied)."""

    logits: Tensor | None
    state: TokenState
    tokens_executed: list[int]
    keys_per_layer: list[int] | None = None  # keys each query attended to (0 for a skipped layer)


class _PrefixLayerCache:
    """Duck-typed transformers cache for one pass: returns cached prefix keys/values + the new ones."""

    def __init__(self, keys: list[Tensor | None], values: list[Tensor | None], record: bool):
        self.keys, self.values, self.record = keys, values, record
        self.live: list[Tensor | None] = [None] * len(keys)
        self.size: list[Tensor | None] = [None] * len(keys)

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        if self.record:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
            return key_states, value_states
        return (torch.cat([self.keys[layer_idx], key_states], dim=2),
                torch.cat([self.values[layer_idx], value_states], dim=2))


@dataclass
class PrefixCache:
    """Keys/values of the prompt (everything before the answer) per layer, computed once.

    Per layer ``i``: ``keys[i]``/``values[i]`` [batch, kv_heads, n_i, head_dim] (None for a layer
    skipped at the prefill), ``live[i]`` [batch, n_i] the original positions cached and ``size[i]``
    their merge sizes (None if unmerged). ``shift_logits`` holds the logits of the row before the
    answer for models with logit shift 1.
    """

    keys: list[Tensor | None]
    values: list[Tensor | None]
    live: list[Tensor | None]
    size: list[Tensor | None]
    shift_logits: Tensor | None = None

    def keep_positions(self, keep: Tensor, visual_mask: Tensor, layers: range) -> "PrefixCache":
        """Drop cached visual tokens not in ``keep`` [batch, k] (original positions) at ``layers``."""
        keys, values, live, size = list(self.keys), list(self.values), list(self.live), list(self.size)
        for i in layers:
            if keys[i] is None:
                continue
            lv = live[i]
            ok = ~visual_mask.to(lv.device)[lv] | torch.stack([torch.isin(lv[r], keep[r]) for r in range(lv.shape[0])])
            n = int(ok[0].sum())
            idx = ok.float().argsort(dim=1, descending=True, stable=True)[:, :n].sort(dim=1).values
            g = idx[:, None, :, None].expand(-1, keys[i].shape[1], -1, keys[i].shape[-1])
            keys[i], values[i] = keys[i].gather(2, g), values[i].gather(2, g)
            live[i] = lv.gather(1, idx)
            size[i] = None if size[i] is None else size[i].gather(1, idx)
        return PrefixCache(keys, values, live, size, self.shift_logits)


class Engine:
    """Runs an adapter's decoder over live tokens with event points for probes and a policy.

    >>> engine = Engine(adapter)                                  # doctest: +SKIP
    >>> out = engine.forward(prompt, prompt.input_ids, step=0)    # doctest: +SKIP
    >>> out.logits.shape  # [batch, answer_len, vocab]            # doctest: +SKIP
    """

    def __init__(
        self,
        adapter: Adapter,
        listeners: Sequence[Listener] = (),
        policy: Policy | None = None,
        causal: bool = False,
    ):
        self.adapter = adapter
        self.listeners = list(listeners)
        self.policy = policy or NoPolicy()
        self.causal = causal

    @property
    def observers(self) -> list[Listener]:
        """Probes first, then the policy (which may score from the same attention)."""
        return [*self.listeners, self.policy]

    # -- full pass ------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        prompt: Prompt,
        input_ids: Tensor,
        step: int = 0,
        state: TokenState | None = None,
        prefix: PrefixCache | None = None,
        tag: str = "decode",
        policy: Policy | None = None,
    ) -> ForwardOutput:
        """One pass; with ``prefix`` only the answer tokens run, attending to the cached prompt."""
        if prefix is not None:
            return self._cached_forward(prompt, input_ids, step, prefix, tag, policy)
        ctx = ForwardContext(step, prompt, input_ids, self.adapter, phase="full", tag=tag)
        state = state or TokenState.full(prompt.batch_size, prompt.seq_len, input_ids.device)
        hidden, state, executed = self._run_layers(ctx, prompt, input_ids, state, policy)
        shift = self.adapter.logit_shift
        rows = state.slots_of(prompt.answer_index - shift)
        logits = self._head(hidden, rows)
        out = ForwardOutput(logits, state, executed, list(executed))
        for obs in self._obs(policy):
            obs.on_forward_end(ctx, out)
        return out

    def _obs(self, policy: Policy | None) -> list[Listener]:
        return [*self.listeners, policy or self.policy]

    def _head(self, hidden: Tensor, rows: Tensor) -> Tensor:
        h = hidden.gather(1, rows.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.adapter.lm_head(self.adapter.final_norm(h)).float()

    def _run_layers(
        self,
        ctx: ForwardContext,
        prompt: Prompt,
        input_ids: Tensor,
        state: TokenState,
        policy: Policy | None,
        prefix_keys: _PrefixLayerCache | None = None,
    ) -> tuple[Tensor, TokenState, list[int]]:
        ad = self.adapter
        pol = policy or self.policy
        observers = self._obs(policy)
        state = pol.initial_state(ctx, state)
        for obs in observers:
            obs.on_forward_start(ctx, state)
        hidden = state.gather(ad.embed(input_ids, prompt))
        hidden, state = pol.on_input(ctx, hidden, state)
        executed: list[int] = []
        cached: tuple[TokenState | None, tuple | None] = (None, None)
        for i in range(ad.num_layers):
            hidden, state = pol.before_layer(ctx, i, hidden, state)
            if pol.skip_layer(ctx, i):
                executed.append(0)
                continue
            executed.append(state.n_live)
            if cached[0] is not state:
                pos = state.positions(prompt.position_ids)
                cos, sin = ad.rotary(hidden, pos)
                qpos = pos if pos.ndim == 2 else pos[0]
                mask = build_mask(
                    prompt.key_valid.gather(1, state.live), hidden.dtype, qpos, qpos, self.causal, state.size
                )
                cached = (state, (cos, sin, mask))
            cos, sin, mask = cached[1]
            want = [o for o in observers if o.wants_attention(ctx, i)]
            if want:
                ev = AttentionEvent(i, ad.input_norm(i)(hidden), cos, sin, mask, state, ad.attention_module(i))
                for o in want:
                    o.on_attention(ctx, ev)
            hidden = ad.call_layer(i, hidden, (cos, sin), mask, cache=prefix_keys)
            if prefix_keys is not None:
                prefix_keys.live[i], prefix_keys.size[i] = state.live, state.size
            for o in observers:
                o.on_layer_end(ctx, i, hidden, state)
        return hidden, state, executed

    # -- prefix cache ---------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(
        self, prompt: Prompt, input_ids: Tensor, step: int = 0, state: TokenState | None = None,
        policy: Policy | None = None,
    ) -> PrefixCache:
        """Run the prompt (visual tokens included) once and keep every layer's keys and values.

        The prompt does not attend to the answer slots (LaViDa's prefix-DLM semantics).
        """
        ad = self.adapter
        start = prompt.answer_start
        b = prompt.batch_size
        base = state or TokenState.full(b, prompt.seq_len, input_ids.device)
        keep = base.live[0] < start
        pstate = TokenState(base.live[:, keep], None if base.size is None else base.size[:, keep])
        ctx = ForwardContext(step, prompt, input_ids, ad, phase="prefill")
        n = ad.num_layers
        rec = _PrefixLayerCache([None] * n, [None] * n, record=True)
        hidden, pstate, executed = self._run_layers(ctx, prompt, input_ids, pstate, policy, prefix_keys=rec)
        shift_logits = None
        if ad.logit_shift:
            rows = pstate.slots_of(prompt.answer_index[:1] - 1)
            shift_logits = self._head(hidden, rows)
        out = ForwardOutput(shift_logits, pstate, executed, list(executed))
        for obs in self._obs(policy):
            obs.on_forward_end(ctx, out)
        cache = PrefixCache(rec.keys, rec.values, rec.live, rec.size, shift_logits)
        return (policy or self.policy).adjust_prefix(ctx, cache)

    def _cached_forward(
        self, prompt: Prompt, input_ids: Tensor, step: int, prefix: PrefixCache, tag: str, policy: Policy | None
    ) -> ForwardOutput:
        ad = self.adapter
        pol = policy or self.policy
        observers = self._obs(policy)
        ctx = ForwardContext(step, prompt, input_ids, ad, phase="cached", tag=tag)
        b = prompt.batch_size
        ans = prompt.answer_index
        state = TokenState(ans.expand(b, -1).clone())
        for obs in observers:
            obs.on_forward_start(ctx, state)
        hidden = state.gather(ad.embed(input_ids, prompt))
        pos = state.positions(prompt.position_ids)
        cos, sin = ad.rotary(hidden, pos)
        cache = _PrefixLayerCache(prefix.keys, prefix.values, record=False)
        executed: list[int] = []
        keys: list[int] = []
        qpos = pos if pos.ndim == 2 else pos[0]
        flat_pos = prompt.position_ids if prompt.position_ids.ndim == 2 else prompt.position_ids[0]
        for i in range(ad.num_layers):
            if pol.skip_layer(ctx, i):
                executed.append(0)
                keys.append(0)
                continue
            if prefix.keys[i] is None:
                raise ValueError(
                    f"layer {i} was skipped when the prefix cache was built but runs at step {step}; "
                    "under the prefix cache a layer must be skipped at every step or at none"
                )
            executed.append(state.n_live)
            live = prefix.live[i]
            keys.append(live.shape[1] + state.n_live)
            kv = torch.cat([prompt.key_valid.gather(1, live), torch.ones_like(state.live, dtype=torch.bool)], 1)
            size = None
            if prefix.size[i] is not None:
                size = torch.cat([prefix.size[i], torch.ones(state.live.shape, device=ans.device)], 1)
            kpos = torch.cat([flat_pos.gather(1, live), qpos], 1)
            mask = build_mask(kv, hidden.dtype, qpos, kpos, self.causal, size)
            want = [o for o in observers if o.wants_attention(ctx, i)]
            if want:
                ev = AttentionEvent(i, ad.input_norm(i)(hidden), cos, sin, mask, state, ad.attention_module(i),
                                    past_keys=prefix.keys[i], key_live=torch.cat([live, state.live], 1))
                for o in want:
                    o.on_attention(ctx, ev)
            hidden = ad.call_layer(i, hidden, (cos, sin), mask, cache=cache)
            for o in observers:
                o.on_layer_end(ctx, i, hidden, state)
        rows = torch.arange(prompt.answer_length, device=ans.device).expand(b, -1)
        logits = self._head(hidden, rows)
        if ad.logit_shift:
            logits = torch.cat([prefix.shift_logits, logits[:, :-1]], dim=1)
        out = ForwardOutput(logits, state, executed, keys)
        for obs in observers:
            obs.on_forward_end(ctx, out)
        return out
