"""Evaluate a model on the shapes benchmark: accuracy per task type and question type."""

from __future__ import annotations

from collections import defaultdict

import torch

from ..generate import generate_from_prompt
from ..models.base import Adapter
from ..sampling import AutoregressiveSampler, DiffusionSampler, SamplerConfig
from ..tasks import ANSWER_LENGTH, generate_batch, score_answer


def default_eval_sampler(model: Adapter, **kwargs):
    """The study's default: low-confidence remasking, one block, two tokens per step (greedy for AR)."""
    if model.family == "autoregressive":
        return AutoregressiveSampler()
    return DiffusionSampler(SamplerConfig(**kwargs))


@torch.no_grad()
def evaluate(
    model: Adapter,
    task: str,
    n: int = 200,
    split: str = "test",
    sampler=None,
    batch_size: int = 50,
    blind: bool = False,
) -> dict[str, float]:
    """Mean metrics on the first ``n`` samples of a split, per question type too (``<metric>/<qtype>``).

    With ``blind`` every visual token is withdrawn before the language model.
    """
    sampler = sampler or default_eval_sampler(model)
    L = ANSWER_LENGTH[task]
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for lo in range(0, n, batch_size):
        batch = generate_batch(task, split, range(lo, min(n, lo + batch_size)))
        pixels = model.pixels_from_uint8(batch.images)
        prompt = model.build_prompt(
            [None] * len(batch), batch.questions, L, visual_embeds=model.encode_images(pixels)
        )
        if blind:
            prompt = prompt.without_visual()
        texts = generate_from_prompt(model, prompt, sampler).texts
        for s, pred in zip(batch.samples, texts):
            for k, v in score_answer(task, pred, s.answer).items():
                for key in (k, f"{k}/{s.qtype}"):
                    sums[key] += v
                    counts[key] += 1
    return {k: sums[k] / counts[k] for k in sorted(sums)}
