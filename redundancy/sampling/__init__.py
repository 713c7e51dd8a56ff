"""Denoising loops over answer slots, and the autoregressive baseline."""

from __future__ import annotations

from .autoregressive import AutoregressiveSampler
from .diffusion import STRATEGIES, DiffusionSampler, SamplerConfig, StepRecord, Trajectory
from .schedule import fallback_count, transfer_counts
from .source import EngineSource

SAMPLERS = ("diffusion", "autoregressive")


def make_sampler(kind: str = "diffusion", **kwargs):
    """Build a sampler by kind; unknown kinds raise ValueError listing the valid ones."""
    if kind == "diffusion":
        return DiffusionSampler(SamplerConfig(**kwargs))
    if kind == "autoregressive":
        return AutoregressiveSampler(**kwargs)
    raise ValueError(f"unknown sampler {kind!r}; choose one of: {', '.join(SAMPLERS)}")


__all__ = [
    "AutoregressiveSampler", "DiffusionSampler", "SamplerConfig", "StepRecord", "Trajectory", "STRATEGIES",
    "transfer_counts", "fallback_count", "EngineSource", "make_sampler", "SAMPLERS",
]
