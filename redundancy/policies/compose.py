"""Several policies in one run (e.g. pruning and layer skipping): each event goes to every part."""

from __future__ import annotations

from ..engine.events import Policy


class CompositePolicy(Policy):
    """Chains reductions in order; a layer is skipped if any part skips it."""

    def __init__(self, parts: list[Policy]):
        self.parts = list(parts)

    def validate(self, num_layers, num_steps, prefix_cache=False):
        from .pruning import PruningPolicy
        from .skip import LayerSkipPolicy

        for p in self.parts:
            p.validate(num_layers, num_steps, prefix_cache)
        prunes = [p for p in self.parts if isinstance(p, PruningPolicy)]
        skips = [p for p in self.parts if isinstance(p, LayerSkipPolicy)]
        for pr in prunes:
            if not pr.scorer.uses_attention:
                continue
            need = set(range(num_layers)) if pr.scorer.all_layers else {pr.config.layer - 1}
            for sk in skips:
                clash = sorted(need & set(sk.resolve(num_layers)))
                if clash:
                    raise ValueError(
                        f"method {pr.config.method!r} scores from the attention of layer(s) {clash}, "
                        "which the layer-skipping part skips; skip other layers or choose another K"
                    )

    def initial_state(self, ctx, state):
        for p in self.parts:
            state = p.initial_state(ctx, state)
        return state

    def on_input(self, ctx, hidden, state):
        for p in self.parts:
            hidden, state = p.on_input(ctx, hidden, state)
        return hidden, state

    def before_layer(self, ctx, layer, hidden, state):
        for p in self.parts:
            hidden, state = p.before_layer(ctx, layer, hidden, state)
        return hidden, state

    def skip_layer(self, ctx, layer):
        return any(p.skip_layer(ctx, layer) for p in self.parts)

    def adjust_prefix(self, ctx, cache):
        for p in self.parts:
            cache = p.adjust_prefix(ctx, cache)
        return cache

    def wants_attention(self, ctx, layer):
        return any(p.wants_attention(ctx, layer) for p in self.parts)

    def on_attention(self, ctx, event):
        for p in self.parts:
            if p.wants_attention(ctx, event.layer):
                p.on_attention(ctx, event)

    def on_forward_start(self, ctx, state):
        for p in self.parts:
            p.on_forward_start(ctx, state)

    def on_layer_end(self, ctx, layer, hidden, state):
        for p in self.parts:
            p.on_layer_end(ctx, layer, hidden, state)

    def on_forward_end(self, ctx, output):
        for p in self.parts:
            p.on_forward_end(ctx, output)

    def on_generation_start(self, prompt, sampler):
        for p in self.parts:
            p.on_generation_start(prompt, sampler)

    def on_step_end(self, record):
        for p in self.parts:
            p.on_step_end(record)

    def on_generation_end(self, trajectory):
        for p in self.parts:
            p.on_generation_end(trajectory)
