"""Test parameters shared by the golden comparisons: (dtype, image) cases with their known mismatches."""

from __future__ import annotations

import pytest

from redundancy.models.goldens import DTYPES, IMAGES

NAMES = sorted(IMAGES)


def xfail(reason: str):
    """A known mismatch with the original: strict, so the case fails once the toolkit is fixed."""
    return pytest.mark.xfail(strict=True, reason=reason)


def cases(known: dict | None = None, dtypes=DTYPES, names=NAMES):
    """(dtype, image) params; ``known`` maps (dtype, image), dtype, image or '*' -> xfail reason."""
    known = known or {}
    out = []
    for dt in dtypes:
        for n in names:
            r = known.get((dt, n), known.get(dt, known.get(n, known.get("*"))))
            out.append(pytest.param(dt, n, id=f"{dt}-{n}", marks=[xfail(r)] if r else []))
    return out
