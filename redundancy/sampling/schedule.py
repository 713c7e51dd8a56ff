"""How many answer tokens to commit at each step of a block (LLaDA's schedule)."""

from __future__ import annotations


def transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Split ``n_masked`` commits over ``steps`` as evenly as possible, the remainder going first.

    >>> transfer_counts(10, 4)
    [3, 3, 2, 2]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base, rem = divmod(n_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]
