"""Shared helpers of the benchmark scripts: model shapes, random prompts, timing, RESULT lines.

Importing this module puts the repository root on ``sys.path`` so the scripts run as
``python benchmarks/<script>.py`` from a checkout without an installed package.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

T = TypeVar("T")

# LLaDA-V's decoder shape scaled down to run on a CPU: 729 visual tokens (27 x 27 patches), a
# 512-wide 8-layer bidirectional Llama decoder. The vision tower is tiny: only the decoder is timed.
TINY_VISION = dict(vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64)
LLADA_V_CPU = dict(
    image_size=216, patch_size=8, **TINY_VISION,
    hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376, question_len=10,
)
# The same layout and depth at a size that runs in a second (64 visual tokens, hidden 64), so the
# quick runs exercise the same layer indices (K, skipped layers) as the full ones.
LLADA_V_QUICK = dict(
    image_size=64, patch_size=8, **TINY_VISION,
    hidden=64, layers=8, heads=4, kv_heads=4, intermediate=172, question_len=10,
)

QUESTION = "describe the image ."


def random_llama(quick: bool, seed: int = 0):
    """The randomly initialised LLaDA-V-shaped model (CPU-scaled, or tiny with ``quick``)."""
    from redundancy.models import load_model

    return load_model("random-llama", seed=seed, **(LLADA_V_QUICK if quick else LLADA_V_CPU))


def random_prompt(model, batch: int, answer_length: int, seed: int = 0, question: str = QUESTION):
    """A prompt of ``batch`` random-noise images with the same question (vision run once, here)."""
    size = model.config.image_size
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(batch)]
    return model.build_prompt(images, [question] * batch, answer_length)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of one call and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def add_threads_arg(ap) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own default, i.e. the visible cores)")


def set_threads(n: int | None) -> None:
    if n is not None:
        torch.set_num_threads(n)


def describe_threads() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"


def print_results(results: list[tuple[str, float]]) -> None:
    """The last lines of a benchmark: ``RESULT name=value``."""
    for name, value in results:
        print(f"RESULT {name}={value:.4f}", flush=True)
