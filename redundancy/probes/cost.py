"""Cost accounting: analytic FLOPs of the architecture actually run, tokens executed, time, memory.

FLOPs here are ``2 x multiply-adds`` of the matrix products of a Llama/Qwen2-shaped decoder layer
(q/k/v/o projections with grouped-query attention, ``QK^T`` and ``AV``, the SwiGLU MLP) and of the
LM head. Elementwise work (norms, RoPE, softmax, activations, residual adds) and biases are not
counted, which is also what :class:`torch.utils.flop_counter.FlopCounterMode` counts, so the two
agree on an eager forward. Every number is **per sample**: the rows of a batch all execute the same
live-token count, so a batch costs ``batch_size`` times as much.

The study's own formula (paper.md section 4, ``4nd^2 + 2n^2 d + 2ndm`` per layer, ``n`` the tokens in
that layer) is kept apart as ``flops_paper``: it counts multiply-adds with a two-matrix FFN and no
head, so it is comparable to the study's reported numbers, not to ``flops``.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..engine.events import ForwardContext, Listener

__all__ = [
    "CostProbe",
    "PassCost",
    "decoder_config",
    "decoder_flops",
    "forward_flops",
    "head_flops",
    "paper_flops",
    "peak_memory_mb",
]


def _head_dim(cfg: Any) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else int(cfg.hidden_size) // int(cfg.num_attention_heads)


def decoder_flops(cfg: Any, n_query: int, n_key: int, include_head_rows: int = 0) -> float:
    """FLOPs of one decoder layer: ``n_query`` new tokens attending to ``n_key`` keys (+ head rows).

    k/v are projected only for the ``n_query`` new tokens (cached keys are not recomputed);
    ``QK^T`` and ``AV`` cost ``n_query x n_key`` per query head; biases are ignored.
    """
    if n_query <= 0:
        return float(head_flops(cfg, include_head_rows)) if include_head_rows else 0.0
    d = int(cfg.hidden_size)
    h = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or h)
    hd = _head_dim(cfg)
    m = int(cfg.intermediate_size)
    nq, nk = int(n_query), int(n_key)
    proj = 2 * nq * d * (h * hd) * 2  # q and o
    proj += 2 * nq * d * (kv * hd) * 2  # k and v (grouped-query: kv heads only)
    attn = 2 * h * nq * nk * hd * 2  # QK^T and AV
    mlp = 2 * nq * d * m * 3  # gate, up, down
    total = float(proj + attn + mlp)
    if include_head_rows:
        total += head_flops(cfg, include_head_rows)
    return total


def head_flops(cfg: Any, rows: int, vocab_size: int | None = None) -> float:
    """FLOPs of the LM head on ``rows`` hidden rows: ``2 * rows * hidden * vocab``."""
    vocab = int(vocab_size if vocab_size is not None else cfg.vocab_size)
    return float(2 * int(rows) * int(cfg.hidden_size) * vocab)


def paper_flops(cfg: Any, n_query: int, n_key: int | None = None) -> float:
    """The study's per-layer formula ``4 n d^2 + 2 n n_k d + 2 n d m`` (``n_k = n`` without a cache).

    With ``n_key`` it is the per-token decoding form summed over ``n_query`` tokens; 0 for a skipped layer.
    """
    n = int(n_query)
    nk = n if n_key is None else int(n_key)
    d, m = int(cfg.hidden_size), int(cfg.intermediate_size)
    return float(4 * n * d * d + 2 * n * nk * d + 2 * n * d * m)


def decoder_config(adapter: Any) -> Any:
    """The transformers config of an adapter's decoder (``hidden_size``, heads, ``intermediate_size``...)."""
    for cand in (getattr(getattr(adapter, "lm", None), "config", None), getattr(adapter, "config", None)):
        if cand is not None and hasattr(cand, "hidden_size") and hasattr(cand, "intermediate_size"):
            return cand
    attn = adapter.layers[0].self_attn
    cfg = getattr(attn, "config", None)
    if cfg is None:
        raise ValueError(f"cannot find the decoder config of adapter {getattr(adapter, 'name', adapter)!r}")
    return cfg


def _vocab(adapter: Any, cfg: Any) -> int:
    out = getattr(getattr(adapter, "lm_head", None), "out_features", None)
    return int(out) if out is not None else int(cfg.vocab_size)


def forward_flops(
    adapter: Any,
    tokens_executed: Sequence[int],
    n_key_per_layer: Sequence[int] | None = None,
    head_rows: int = 0,
) -> float:
    """Per-sample FLOPs of one pass: every layer on its live tokens (keys = queries unless given) + head."""
    cfg = decoder_config(adapter)
    keys = tokens_executed if n_key_per_layer is None else n_key_per_layer
    if len(keys) != len(tokens_executed):
        raise ValueError(f"{len(tokens_executed)} layers of tokens but {len(keys)} key counts")
    total = sum(decoder_flops(cfg, q, k) for q, k in zip(tokens_executed, keys) if q > 0)
    if head_rows:
        total += head_flops(cfg, head_rows, _vocab(adapter, cfg))
    return float(total)


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory in MB: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak RSS.

    The RSS figure is process-wide and monotonic over the process lifetime (all allocations, not
    only this model's).
    """
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


@dataclass
class PassCost:
    """The cost of one observed forward pass (per sample)."""

    step: int
    phase: str
    tokens_executed: list[int]
    n_key: list[int]
    head_rows: int
    flops: float
    flops_paper: float


class CostProbe(Listener):
    """Records per-step/per-layer tokens executed, per-pass FLOPs, step wall-clock and peak memory.

    Tidy rows ``dict(sample=None, step, layer, head=None, token=None, query_group, metric, value)``:

    - ``tokens_executed`` per layer (0 for a skipped layer) and ``flops`` / ``flops_paper`` per pass
      (``layer=None``); ``query_group`` holds the pass phase (``full``, ``prefill`` or ``cached``),
      i.e. which tokens ran as queries, so a step's prefill and cached passes stay apart;
    - ``time_step_s`` per denoising step (``perf_counter`` between ``on_generation_start`` /
      the previous ``on_step_end`` and this ``on_step_end``; ``query_group=None``).

    ``sample`` is None because every count is per sample (all batch rows execute the same tokens).
    Only decoding passes (``ctx.tag == "decode"``) are counted, the prefill pass included. Key
    counts per layer come from ``ForwardOutput.keys_per_layer`` (a cached pass attends over the
    cached prefix of that layer plus the answer tokens).
    """

    def __init__(self, reset_cuda_peak: bool = True):
        self.reset_cuda_peak = reset_cuda_peak
        self.rows: list[dict] = []
        self.passes: list[PassCost] = []
        self.step_seconds: list[float] = []
        self._t_mark: float | None = None
        self._device: torch.device | None = None
        self._peak = 0.0

    # -- totals -------------------------------------------------------------------------------
    @property
    def total_flops(self) -> float:
        """Analytic FLOPs of every observed decoding pass, per sample."""
        return float(sum(p.flops for p in self.passes))

    @property
    def total_flops_paper(self) -> float:
        """The study's formula summed over every observed decoding pass, per sample."""
        return float(sum(p.flops_paper for p in self.passes))

    @property
    def total_tokens_executed(self) -> int:
        """Sum over passes and layers of the live tokens run as queries, per sample."""
        return int(sum(sum(p.tokens_executed) for p in self.passes))

    @property
    def seconds(self) -> float:
        """Wall-clock of the observed denoising steps."""
        return float(sum(self.step_seconds))

    @property
    def peak_memory_mb(self) -> float:
        """Peak memory (MB) seen at step/generation ends; see :func:`peak_memory_mb`."""
        return max(self._peak, peak_memory_mb(self._device))

    # -- events -------------------------------------------------------------------------------
    def on_forward_end(self, ctx: ForwardContext, output: Any) -> None:
        if not ctx.is_decode:
            return
        ad, prompt = ctx.adapter, ctx.prompt
        executed = [int(x) for x in output.tokens_executed]
        keys = [int(k) for k in output.keys_per_layer]
        if ctx.phase == "prefill":
            head_rows = 1 if ad.logit_shift else 0
        else:
            head_rows = prompt.answer_length
        cfg = decoder_config(ad)
        flops = forward_flops(ad, executed, keys, head_rows)
        fp = float(sum(paper_flops(cfg, q, k) for q, k in zip(executed, keys) if q))
        self.passes.append(PassCost(ctx.step, ctx.phase, executed, keys, head_rows, flops, fp))
        for i, q in enumerate(executed):
            self._add(ctx.step, i, ctx.phase, "tokens_executed", float(q))
        self._add(ctx.step, None, ctx.phase, "flops", flops)
        self._add(ctx.step, None, ctx.phase, "flops_paper", fp)

    def on_generation_start(self, prompt: Any, sampler: Any) -> None:
        self._device = prompt.input_ids.device
        if self.reset_cuda_peak and self._device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(self._device)
        self._t_mark = time.perf_counter()

    def on_step_end(self, record: Any) -> None:
        now = time.perf_counter()
        dt = now - (self._t_mark if self._t_mark is not None else now)
        self._t_mark = now
        self.step_seconds.append(dt)
        self._add(int(record.step), None, None, "time_step_s", dt)
        self._peak = max(self._peak, peak_memory_mb(self._device))

    def on_generation_end(self, trajectory: Any) -> None:
        self._peak = max(self._peak, peak_memory_mb(self._device))
        self._t_mark = None

    def _add(self, step: int, layer: int | None, group: str | None, metric: str, value: float) -> None:
        self.rows.append(dict(sample=None, step=step, layer=layer, head=None, token=None,
                              query_group=group, metric=metric, value=value))
