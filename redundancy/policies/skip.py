"""Layer skipping: a set or range of decoder layers, or a fraction of the depth by position."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.events import ForwardContext, Policy

POSITIONS = ("early", "middle", "late")


@dataclass
class SkipConfig:
    """``layers`` (explicit indices) or ``n`` layers at ``position`` (or ``fraction`` of the depth);
    ``steps``: [start, end) global steps where the skip applies (None = every step)."""

    layers: list[int] | None = None
    n: int | None = None
    fraction: float | None = None
    position: str = "middle"
    steps: list[int] | None = None

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"unknown skip position {self.position!r}; choose one of: {', '.join(POSITIONS)}")
        given = [x is not None for x in (self.layers, self.n, self.fraction)]
        if sum(given) != 1:
            raise ValueError("give exactly one of skip.layers, skip.n, skip.fraction")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise ValueError(f"skip fraction must be in (0, 1), got {self.fraction}")
        if self.steps is not None and (len(self.steps) != 2 or self.steps[0] >= self.steps[1] or self.steps[0] < 0):
            raise ValueError(f"skip steps must be [start, end) with 0 <= start < end, got {self.steps}")


def layers_at(position: str, n: int, depth: int) -> list[int]:
    """The ``n`` consecutive layers at the early / middle / late part of ``depth`` layers."""
    if position == "early":
        lo = 0
    elif position == "late":
        lo = depth - n
    elif position == "middle":
        lo = (depth - n) // 2
    else:
        raise ValueError(f"unknown skip position {position!r}; choose one of: {', '.join(POSITIONS)}")
    return list(range(lo, lo + n))


class LayerSkipPolicy(Policy):
    """Skips decoder layers (whole layers: their residual update is left out)."""

    def __init__(self, config: SkipConfig | None = None, **kwargs):
        self.config = config or SkipConfig(**kwargs)
        self.skipped: set[int] = set()

    def resolve(self, depth: int) -> list[int]:
        c = self.config
        if c.layers is not None:
            bad = [i for i in c.layers if not 0 <= i < depth]
            if bad:
                raise ValueError(f"skip layers {bad} are outside the model's layers 0..{depth - 1}")
            return sorted(set(c.layers))
        n = c.n if c.n is not None else max(1, round(c.fraction * depth))
        if not 1 <= n <= depth:
            raise ValueError(f"cannot skip {n} layers of {depth}; choose 1..{depth - 1}")
        return layers_at(c.position, n, depth)

    def validate(self, num_layers: int, num_steps: int, prefix_cache: bool = False) -> None:
        layers = self.resolve(num_layers)
        if len(layers) >= num_layers:
            raise ValueError(f"skipping layers {layers} removes every layer of {num_layers}; keep at least one")
        s = self.config.steps
        if s is not None and s[0] >= num_steps:
            raise ValueError(f"skip steps start {s[0]} is beyond the number of steps; choose 0..{num_steps - 1}")
        if prefix_cache and s is not None:
            raise ValueError("under the prefix cache a layer must be skipped at every step or at none")
        self.skipped = set(layers)

    def skip_layer(self, ctx: ForwardContext, layer: int) -> bool:
        if not self.skipped:
            self.skipped = set(self.resolve(ctx.adapter.num_layers))
        s = self.config.steps
        if s is not None and not s[0] <= ctx.step < s[1]:
            return False
        return layer in self.skipped
