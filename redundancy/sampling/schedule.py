"""How many answer tokens to commit at each step of a block.

``linear`` is LLaDA's even split. ``shift``, ``cosine`` and ``logit_normal`` are the non-uniform
schedules of LaViDa's sampler (its ``schedule`` keyword; LaViDa's own scripts use ``shift`` with
shift 3): a curve ``sigma(t)`` on ``t = 0, 1/S, ..., 1`` with ``S = min(steps, n)`` gives the
cumulative number of committed tokens ``floor(sigma(t) * n)``; every step commits at least one token
(the excess is taken back one token at a time, cycling from the first step over those with more than
one), and the order is reversed, so a concave ``sigma`` commits few tokens first and many at the end.
``dream`` is Dream's rule (also Dimple's ``dream`` pipeline): on ``t = linspace(1, 1e-3, steps + 1)``
step ``i`` commits ``int(m * (1 - t[i+1] / t[i]))`` of the ``m`` tokens still masked, and the last step
all that remain; the truncation makes it uneven (it can even commit nothing at the first step).

:func:`fallback_count` is Dimple's fallback for confident decoding (``threshold_fallback: schedule``):
when no token passes the threshold, it walks the same Dream time grid from the current mask ratio.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "shift", "cosine", "logit_normal", "dream")
DREAM_EPS = 1e-3


def _sigma(schedule: str, t: torch.Tensor, shift: float) -> torch.Tensor:
    if schedule == "shift":
        return shift * t / (1 + (shift - 1) * t)
    if schedule == "cosine":
        return 1 - 0.5 * (1 + torch.cos(math.pi * t))
    # logit_normal: the standard normal CDF of logit(t) (0 at t = 0, 1 at t = 1)
    logit = torch.log(t / (1 - t))
    return 0.5 * (1 + torch.erf(logit / math.sqrt(2.0)))


def transfer_counts(n_masked: int, steps: int, schedule: str = "linear", shift: float = 3.0) -> list[int]:
    """Split ``n_masked`` commits over at most ``steps`` steps following ``schedule``.

    >>> transfer_counts(10, 4)
    [3, 3, 2, 2]
    >>> transfer_counts(16, 8, "shift")
    [1, 1, 1, 1, 2, 2, 4, 4]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if schedule == "linear" or n_masked == 0:
        base, rem = divmod(n_masked, steps)
        return [base + (1 if i < rem else 0) for i in range(steps)]
    if schedule == "dream":
        counts, left = [], n_masked
        for i in range(steps):
            k = dream_count(left, i, steps)
            counts.append(k)
            left -= k
        return counts
    if shift <= 0:
        raise ValueError(f"schedule shift must be > 0, got {shift}")
    s = min(steps, n_masked)
    t = torch.linspace(0, 1, s + 1)  # float32, as the reference sampler computes it
    cum = (_sigma(schedule, t, shift) * n_masked).to(torch.int64)
    counts = [max(1, int(c)) for c in cum[1:] - cum[:-1]]
    excess, j = sum(counts) - n_masked, 0
    while excess > 0:
        if counts[j % s] > 1:
            counts[j % s] -= 1
            excess -= 1
        j += 1
    return counts[::-1]


def dream_count(n_masked: int, step: int, steps: int) -> int:
    """Dream's count at ``step`` of ``steps`` with ``n_masked`` slots masked now: on
    ``t = linspace(1, 1e-3, steps + 1)`` (float32, as Dream computes it), ``int(n_masked * (1 - t[i+1] / t[i]))``,
    and every slot still masked at the last step (LaViDa ``dream/generation_utils.py`` 511-514).

    >>> [dream_count(8, i, 4) for i in range(3)], dream_count(5, 3, 4)
    ([1, 2, 3], 5)
    """
    if step >= steps - 1:
        return n_masked
    t = torch.linspace(1, DREAM_EPS, steps + 1)
    return int(n_masked * (1 - t[step + 1] / t[step]))


def fallback_count(n_masked: int, n_total: int, step: int, steps: int) -> int:
    """Tokens Dimple's confident decoding commits at ``step`` when no token passes the threshold.

    ``n_masked`` of the block's ``n_total`` answer tokens are still masked. On the grid
    ``t = linspace(1, 1e-3, steps + 1)``, the current ratio ``r = n_masked / n_total`` plays the
    time: the first grid point ``s`` below ``r`` and after ``step`` that yields
    ``int(n_masked * (1 - s / r)) >= 1`` gives the count; the grid's last point commits all.

    >>> [fallback_count(m, 4, i, 4) for i, m in enumerate((4, 3, 2))]
    [1, 1, 2]
    """
    if not 1 <= n_masked <= n_total:
        raise ValueError(f"need 1 <= n_masked <= n_total, got {n_masked} of {n_total}")
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}), got {step}")
    t = torch.linspace(1, DREAM_EPS, steps + 1)  # float32, as Dimple computes it
    ratio = torch.tensor(n_masked / n_total, dtype=torch.float32)
    below = (t < ratio).nonzero()
    start = max(int(below.min()) if below.numel() else steps, step + 1)
    for j in range(start, steps + 1):
        if j == steps:
            return n_masked
        k = int(n_masked * (1 - t[j] / ratio))
        if k >= 1:
            return k
    return n_masked
