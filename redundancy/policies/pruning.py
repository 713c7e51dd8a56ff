"""Visual-token pruning / merging / withdrawal at decoder layer K on a step schedule.

K is the number of decoder layers that see all visual tokens (K = 0: before the language model).
Attention-based scorers score from layer K-1's attention (so K >= 1). The retention ratio r keeps
k = max(1, floor(r x N)) of the N visual tokens of the prompt.

Schedules (the step index is global across blocks):

- ``once``: decide at step ``step``; the reduced set persists for every later step;
- ``late``: ``once`` at step round((1 - late_fraction) x S), S = the sampler's steps;
- ``from``: decide afresh at every step from ``step`` on (nothing persists);
- ``every_step``: ``from`` step 0;
- ``progressive``: persistent decisions at evenly spaced steps with retention falling along
  ``progressive_ratios``; a dropped token is never re-added.

After a persistent decision, later steps apply the kept set from the input embeddings
(``persist_from: input``, as the study's code does) or from layer K (``layer_k``: layers below K
still see every visual token). ``redvtp`` averages every layer's attention at step ``step`` and
applies its decision from step ``step + 1`` (with any schedule: a decision scored at the end of a
decision step applies from the next step). Under the prefix cache the decision is taken in the
prefill at step 0, and the kept keys/values are gathered from the cache (every layer for ``input``,
layers >= K for ``layer_k``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor

from ..engine.events import AttentionEvent, ForwardContext, Policy
from ..engine.state import TokenState
from .reduce import Decision, apply_decision
from .scorers import FASTV_QUERIES, SCORERS

SCHEDULES = ("once", "late", "from", "every_step", "progressive")
PERSIST = ("input", "layer_k")


@dataclass
class PruneConfig:
    """Every knob of a pruning policy (all are config values)."""

    method: str = "fastv"
    layer: int = 3
    ratio: float = 0.5
    schedule: str = "once"
    step: int = 0
    step_fraction: float | None = None
    late_fraction: float = 0.5
    progressive_ratios: list[float] | None = None
    persist_from: str = "input"
    seed: int = 0
    query: str = "all"
    heads_before_softmax: bool = False
    recycle: bool = True
    recycle_fraction: float = 0.3
    proportional_attention: bool = True

    def __post_init__(self) -> None:
        if self.method not in SCORERS:
            raise ValueError(f"unknown pruning method {self.method!r}; choose one of: {', '.join(sorted(SCORERS))}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.persist_from not in PERSIST:
            raise ValueError(f"unknown persist_from {self.persist_from!r}; choose one of: {', '.join(PERSIST)}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"retention ratio must be in (0, 1], got {self.ratio}")
        if self.schedule == "progressive" and self.progressive_ratios is not None:
            rs = list(self.progressive_ratios)
            if not rs or any(not 0.0 < r <= 1.0 for r in rs) or any(b > a for a, b in zip(rs, rs[1:])):
                raise ValueError(f"progressive_ratios must be non-increasing values in (0, 1], got {rs}")
        if not 0.0 < self.late_fraction <= 1.0:
            raise ValueError(f"late_fraction must be in (0, 1], got {self.late_fraction}")
        if self.step < 0:
            raise ValueError(f"step must be >= 0, got {self.step}")
        if self.step_fraction is not None and not 0.0 <= self.step_fraction < 1.0:
            raise ValueError(f"step_fraction must be in [0, 1), got {self.step_fraction}")
        if self.layer < 0:
            raise ValueError(f"layer K must be >= 0, got {self.layer}")
        if self.query not in FASTV_QUERIES:
            raise ValueError(f"unknown query choice {self.query!r}; choose one of: {', '.join(FASTV_QUERIES)}")


class PruningPolicy(Policy):
    """Reduces visual tokens at layer K by a named scorer on a step schedule."""

    def __init__(self, config: PruneConfig | None = None, **kwargs):
        self.config = config or PruneConfig(**kwargs)
        c = self.config
        self.scorer = SCORERS[c.method](seed=c.seed, query=c.query, heads_before_softmax=c.heads_before_softmax,
                                        recycle=c.recycle, recycle_fraction=c.recycle_fraction)
        self.total_steps: int | None = None
        self.decision: Decision | None = None
        self.n_visual: int | None = None
        self.decided_at: list[int] = []

    # -- set-up ---------------------------------------------------------------------------------
    def validate(self, num_layers: int, num_steps: int, prefix_cache: bool = False) -> None:
        c = self.config
        if c.layer > num_layers:
            raise ValueError(f"layer K={c.layer} is beyond the model's depth; choose 0..{num_layers}")
        if self.scorer.uses_attention and c.layer == 0:
            raise ValueError(f"method {c.method!r} scores from layer K-1's attention; K must be >= 1, got 0")
        if c.schedule in ("once", "from") and c.step_fraction is None and c.step >= num_steps:
            raise ValueError(f"step {c.step} is beyond the number of steps; choose 0..{num_steps - 1}")
        if prefix_cache:
            if self.scorer.needs_answer_rows():
                raise ValueError(
                    f"method {c.method!r} (query {c.query!r}) scores from the answer rows, which the prefill "
                    "of the prefix cache does not contain; use it without the prefix cache"
                )
            at = c.step if c.step_fraction is None else f"step_fraction {c.step_fraction}"
            if c.schedule != "once" or (c.step_fraction is None and c.step != 0) or c.step_fraction not in (None, 0.0):
                raise ValueError(
                    f"under the prefix cache pruning is decided in the prefill (schedule 'once' at step 0); "
                    f"got schedule {c.schedule!r} at {at if isinstance(at, str) else f'step {at}'}"
                )

    def on_generation_start(self, prompt, sampler) -> None:
        steps, _, _ = sampler.check(prompt.answer_length)
        self.total_steps = steps
        self.decision = None
        self.n_visual = prompt.n_visual
        self.decided_at = []
        self.scorer.reset()

    # -- schedule -------------------------------------------------------------------------------
    def _stage_steps(self) -> list[int]:
        """The change step of each progressive stage (stages may share a step when S is small)."""
        S = self.total_steps or 1
        m = len(self.ratios)
        return [min(S - 1, round(t * S / m)) for t in range(m)]

    def _change_steps(self) -> list[int]:
        return sorted(set(self._stage_steps()))

    @property
    def ratios(self) -> list[float]:
        """Progressive retention per stage: configured, or falling evenly from 1 to ``ratio`` in 3 stages."""
        c = self.config
        if c.progressive_ratios:
            return list(c.progressive_ratios)
        return [1 - (1 - c.ratio) * t / 3 for t in (1, 2, 3)]

    def _ratio_at(self, step: int) -> float:
        if self.config.schedule != "progressive":
            return self.config.ratio
        # the last stage that has started (stages collapsed onto one step take the lowest ratio)
        return min(r for r, s in zip(self.ratios, self._stage_steps()) if s <= step)

    def decisions(self, total_steps: int) -> list[tuple[int, float]]:
        """(step, retention) of every decision this policy takes over ``total_steps`` steps."""
        saved, self.total_steps = self.total_steps, total_steps
        try:
            return [(s, self._ratio_at(s)) for s in range(total_steps) if self.decides_at(s)]
        finally:
            self.total_steps = saved

    def start_step(self) -> int:
        """``step``, or ``round(step_fraction x S)`` when a fraction of the trajectory is given."""
        c = self.config
        if c.step_fraction is None:
            return c.step
        S = self.total_steps or 1
        return min(S - 1, round(c.step_fraction * S))

    def decides_at(self, step: int) -> bool:
        """Whether a new decision is taken at this step (at layer K, or at the end for redvtp)."""
        c = self.config
        if c.schedule == "once":
            return step == self.start_step()
        if c.schedule == "late":
            return step == self.late_step()
        if c.schedule == "from":
            return step >= self.start_step()
        if c.schedule == "every_step":
            return True
        return step in self._change_steps()

    def late_step(self) -> int:
        S = self.total_steps or 1
        return min(S - 1, max(0, round((1 - self.config.late_fraction) * S)))

    @property
    def persistent(self) -> bool:
        """Whether a decision carries over to later steps (RedVTP's always does)."""
        return self.config.schedule in ("once", "late", "progressive") or self.config.method == "redvtp"

    def _active(self, ctx: ForwardContext) -> bool:
        return ctx.tag == "decode" and ctx.phase in ("full", "prefill") and self.config.layer < ctx.adapter.num_layers

    def k_at(self, step: int) -> int:
        n = self.n_visual or 0
        return max(1, math.floor(self._ratio_at(step) * n))

    # -- engine events --------------------------------------------------------------------------
    def wants_attention(self, ctx: ForwardContext, layer: int) -> bool:
        if not (self._active(ctx) and self.scorer.uses_attention and self.decides_at(ctx.step)):
            return False
        return self.scorer.all_layers or layer == self.config.layer - 1

    def on_attention(self, ctx: ForwardContext, event: AttentionEvent) -> None:
        self.scorer.observe(ctx, event)

    def on_forward_start(self, ctx, state) -> None:
        if self._active(ctx) and self.decides_at(ctx.step):
            self.scorer.reset()  # scores never carry over from an earlier pass

    def on_input(self, ctx, hidden, state):
        if not self._active(ctx):
            return hidden, state
        persist_here = self.config.persist_from == "input" or self.config.layer == 0
        if self.decision is not None and persist_here:
            hidden, state = self._apply(ctx, hidden, state, self.decision)
        if self.config.layer == 0 and self.decides_at(ctx.step) and self.config.method != "redvtp":
            hidden, state = self._decide(ctx, hidden, state)
        return hidden, state

    def before_layer(self, ctx, layer, hidden, state):
        c = self.config
        if layer != c.layer or c.layer == 0 or not self._active(ctx):
            return hidden, state
        if self.decision is not None and c.persist_from == "layer_k":
            hidden, state = self._apply(ctx, hidden, state, self.decision)
        if self.decides_at(ctx.step) and c.method != "redvtp":
            hidden, state = self._decide(ctx, hidden, state)
        return hidden, state

    def on_forward_end(self, ctx, output) -> None:
        if self.config.method == "redvtp" and self._active(ctx) and self.decides_at(ctx.step) and self.scorer._acc:
            if self.n_visual is None:  # driven without a sampler
                self.n_visual = ctx.prompt.n_visual
            state = output.state
            vis = state.visual_slots(ctx.prompt.is_visual()).expand(state.batch_size, -1)
            new = self.scorer.decide(ctx, None, state, vis, self.k_at(ctx.step))
            self.decision = new if self.decision is None else self.decision.then(new)
            self.decided_at.append(ctx.step)

    def adjust_prefix(self, ctx, cache):
        if self.decision is None:
            return cache
        lo = 0 if self.config.persist_from == "input" else self.config.layer
        return cache.keep_positions(self.decision.keep, ctx.prompt.is_visual(), range(lo, len(cache.keys)))

    # -- deciding -------------------------------------------------------------------------------
    def _apply(self, ctx: ForwardContext, hidden: Tensor, state: TokenState, decision: Decision
               ) -> tuple[Tensor, TokenState]:
        hidden, state = apply_decision(hidden, state, ctx.prompt.is_visual(), decision)
        if decision.is_merge and not self.config.proportional_attention:
            state = TokenState(state.live, None)  # sizes still weight the means; no log(size) bias
        return hidden, state

    def _decide(self, ctx: ForwardContext, hidden: Tensor, state: TokenState) -> tuple[Tensor, TokenState]:
        if self.n_visual is None:  # driven without a sampler
            self.n_visual = ctx.prompt.n_visual
        vis = state.visual_slots(ctx.prompt.is_visual())
        n_alive = int(vis[0].sum())
        if n_alive == 0:
            return hidden, state
        k = 0 if self.config.method == "vtw" else self.k_at(ctx.step)
        if k >= n_alive:
            decision = Decision(state.live[:, vis[0]])
        else:
            decision = self.scorer.decide(ctx, hidden, state, vis, k)
        hidden, state = self._apply(ctx, hidden, state, decision)
        if self.persistent:
            self.decision = decision if self.decision is None else self.decision.then(decision)
        self.decided_at.append(ctx.step)
        return hidden, state

    def describe(self) -> dict:
        return asdict(self.config)
