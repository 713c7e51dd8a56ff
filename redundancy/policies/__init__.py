"""Interventions: visual-token pruning / merging / withdrawal, step schedules and layer skipping."""

from __future__ import annotations

from typing import Any, Mapping

from ..engine.events import NoPolicy, Policy
from .compose import CompositePolicy
from .pruning import PERSIST, SCHEDULES, PruneConfig, PruningPolicy
from .reduce import Decision, apply_decision
from .scorers import SCORERS
from .skip import POSITIONS, LayerSkipPolicy, SkipConfig, layers_at


def _checked(d: Mapping[str, Any], cls: type, what: str) -> dict:
    """Reject unknown keys with the valid ones named (instead of a TypeError)."""
    from dataclasses import fields

    valid = {f.name for f in fields(cls)}
    bad = sorted(set(d) - valid)
    if bad:
        raise ValueError(f"unknown {what} setting(s) {bad}; valid: {', '.join(sorted(valid))}")
    return dict(d)


def make_policy(prune: Mapping[str, Any] | None = None, skip: Mapping[str, Any] | None = None) -> Policy:
    """A policy from config dicts: pruning, layer skipping, both (combined) or neither."""
    parts: list[Policy] = []
    if prune:
        parts.append(PruningPolicy(PruneConfig(**_checked(prune, PruneConfig, "prune"))))
    if skip:
        parts.append(LayerSkipPolicy(SkipConfig(**_checked(skip, SkipConfig, "skip"))))
    if not parts:
        return NoPolicy()
    return parts[0] if len(parts) == 1 else CompositePolicy(parts)


__all__ = [
    "CompositePolicy", "PERSIST", "SCHEDULES", "PruneConfig", "PruningPolicy", "Decision", "apply_decision",
    "SCORERS", "POSITIONS", "LayerSkipPolicy", "SkipConfig", "layers_at", "make_policy", "NoPolicy",
]
