"""One call from (model, images, questions) to answers: prompt, engine, sampler wired together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .engine import Engine, Listener, Policy
from .models.base import Adapter, ImageLike, Prompt
from .sampling import AutoregressiveSampler, DiffusionSampler, EngineSource, SamplerConfig, Trajectory


@dataclass
class Generation:
    """Decoded answers with the trajectory and cost counters of the run."""

    texts: list[str]
    trajectory: Trajectory
    prompt: Prompt
    tokens_executed: list[list[int]]  # per forward pass, per layer


def default_sampler(adapter: Adapter) -> DiffusionSampler | AutoregressiveSampler:
    """Autoregressive models decode greedily; diffusion models by low-confidence remasking."""
    if adapter.family == "autoregressive":
        return AutoregressiveSampler()
    return DiffusionSampler(SamplerConfig())


def end_ids(adapter: Adapter) -> list[int]:
    """Token ids that pad the answer slots (end first)."""
    tok = adapter.tokenizer
    return [tok.end_id] + ([tok.pad_id] if tok.pad_id != tok.end_id else [])


@torch.no_grad()
def generate_from_prompt(
    adapter: Adapter,
    prompt: Prompt,
    sampler: DiffusionSampler | AutoregressiveSampler | None = None,
    policy: Policy | None = None,
    listeners: Sequence[Listener] = (),
    keep_logits: bool = False,
    tag: str = "decode",
) -> Generation:
    """Decode the answer slots of a built prompt."""
    sampler = sampler or default_sampler(adapter)
    causal = isinstance(sampler, AutoregressiveSampler)
    if causal and adapter.logit_shift != 1:
        raise ValueError(f"autoregressive decoding needs a model with logit shift 1; {adapter.name} has 0")
    steps, _, _ = sampler.check(prompt.answer_length)
    prefix = bool(getattr(getattr(sampler, "config", None), "prefix_cache", False))
    if policy is not None:
        policy.validate(adapter.num_layers, steps, prefix)  # bad settings fail before any compute
    engine = Engine(adapter, listeners=listeners, policy=policy, causal=causal)
    source = EngineSource(engine, prompt, prefix_cache=prefix, tag=tag)
    observers = [*listeners] + ([policy] if policy is not None else [])
    for obs in observers:
        obs.on_generation_start(prompt, sampler)
    x = prompt.input_ids[:, prompt.answer_index]
    traj = sampler.generate(source, x, prompt.mask_id, end_ids(adapter), observers, keep_logits=keep_logits)
    for obs in observers:
        obs.on_generation_end(traj)
    texts = [adapter.tokenizer.decode(row.tolist()) for row in traj.tokens]
    return Generation(texts, traj, prompt, source.tokens_executed)


def generate(
    adapter: Adapter,
    images: Sequence[ImageLike],
    questions: Sequence[str],
    answer_length: int,
    sampler: DiffusionSampler | AutoregressiveSampler | None = None,
    policy: Policy | None = None,
    listeners: Sequence[Listener] = (),
) -> Generation:
    """Build the prompt and decode; invalid sampler settings fail before any compute."""
    sampler = sampler or default_sampler(adapter)
    sampler.check(answer_length)
    prompt = adapter.build_prompt(images, questions, answer_length)
    return generate_from_prompt(adapter, prompt, sampler, policy, listeners)
