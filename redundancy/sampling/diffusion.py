"""Masked-diffusion decoding: semi-autoregressive blocks, remasking strategies, confident decoding.

The sampler only sees a *logits source*: a callable ``(x, step) -> logits`` returning
[batch, answer_len, vocab] aligned to the answer slots. :class:`EngineSource` provides it from an
engine (with an optional prefix cache); tests may rig it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .schedule import SCHEDULES, dream_count, fallback_count, transfer_counts

STRATEGIES = ("low_confidence", "random", "topk_margin", "entropy", "threshold")
THRESHOLD_FALLBACKS = ("one", "schedule")
THRESHOLD_ON = ("probability", "margin")
# confidences live in [-log V, 1]; this offset ranks every end/pad prediction below all content
_SUPPRESS = 1.0e4

LogitsSource = Callable[[Tensor, int], Tensor]


@dataclass
class SamplerConfig:
    """Settings of a denoising loop (every field is a config value).

    ``steps`` total denoising steps (default: answer_len / ``tokens_per_step``); ``block_length``
    the semi-autoregressive block (default: the whole answer); ``strategy`` how positions are chosen
    for commitment; ``threshold`` for confident decoding; ``suppress_end`` holds the confidence of
    end / padding predictions below every content token; ``prefix_cache`` runs the prompt once;
    ``schedule`` how many tokens each step of a block commits (:mod:`.schedule`: ``linear`` is
    LLaDA's even split, ``shift`` LaViDa's, with ``schedule_shift``); ``threshold_fallback`` what
    confident decoding commits when no slot reaches the threshold: ``one`` the most confident slot
    (and it ignores ``steps``), ``schedule`` Dimple's rule (a strict ``>`` threshold, a fallback count
    from :func:`.schedule.fallback_count`, everything left at the block's last step).
    ``confidence_eos_eot_inf`` is LLaDA's rule of that name (ML-GSAI/LLaDA ``generate.py`` 97-98): the
    confidence softmax sees ``-inf`` at the end-of-turn id (the first end id) and, at temperature 0,
    at the end-of-text id (the second end id), so every slot's confidence is renormalised without them.
    ``threshold_on`` what confident decoding compares with the threshold and ranks its fallback by:
    ``probability`` (Dimple's ``maskgit_plus``) or ``margin``, top-1 minus top-2 probability
    (Dimple's ``alg=topk_margin``: Dimple ``generation_utils.py`` 611, 618-630, 670-673).
    ``cap_steps`` runs at most as many steps as there are answer slots (LaViDa's Dream sampler:
    ``steps = min(steps, max_new_tokens)``, LaViDa ``dream/generation_utils.py`` 400).
    ``prefill_first_token`` is LaViDa's ``prefix_lm=True`` (``dream/generation_utils.py`` 421-428):
    with a prefix cache, answer slot 0 is committed from the argmax of the prompt-only prefill's last
    row before step 0 (no step of its own), and the schedule covers the other slots.
    ``top_k`` keeps only the k largest logits of every slot before proposing and scoring (Dream's
    ``sample_tokens``, LaViDa ``dream/generation_utils.py`` 64-66; LaViDa-Dream runs with the
    generation default ``top_k=50`` its model config carries, 227-229).
    ``top_p`` keeps the smallest set of most likely tokens whose probability passes ``top_p`` (the
    first always; applied before ``top_k``, as Dream's and Dimple's ``sample_tokens`` do: Dimple
    ``generation_utils.py`` 42-53, 71-74). Dimple's eval (``top_p=0.01`` with
    ``use_original_confidence=False``) thereby makes every confidence 1.0.
    With ``schedule: dream`` each step's count is taken from the slots still masked at that step
    (Dream recounts them: a committed mask id stays masked), and the slots are ranked among the
    masked ones only (Dream's ``torch.topk`` over the compacted confidences of the masked slots, so
    equal confidences are ordered as Dream orders them).
    ``stop_at_end`` is LLaDA-V's ``stopping_criteria=['<|eot_id|>']`` (LLaDA-V ``modeling_llada.py``
    ``generate_with_embeds`` 1355-1480): once an end-of-turn token is committed, only the slots before
    the first one are decoded, the block ends when they are all filled, later blocks are skipped and
    the slots after it are filled with the end id.
    """

    strategy: str = "low_confidence"
    steps: int | None = None
    tokens_per_step: int = 2
    block_length: int | None = None
    temperature: float = 0.0
    threshold: float = 0.9
    suppress_end: bool = False
    prefix_cache: bool = False
    seed: int = 0
    schedule: str = "linear"
    schedule_shift: float = 3.0
    threshold_fallback: str = "one"
    confidence_eos_eot_inf: bool = False
    stop_at_end: bool = False
    threshold_on: str = "probability"
    cap_steps: bool = False
    prefill_first_token: bool = False
    top_k: int | None = None
    top_p: float | None = None

    def resolve(self, answer_length: int) -> tuple[int, int, int]:
        """Validate against an answer length; return (steps, block_length, n_blocks)."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if answer_length < 1:
            raise ValueError(f"answer length must be >= 1, got {answer_length}")
        if self.tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be >= 1, got {self.tokens_per_step}")
        steps = self.steps if self.steps is not None else max(1, -(-answer_length // self.tokens_per_step))
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if self.cap_steps:
            steps = min(steps, answer_length)
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (or null), got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or null), got {self.top_k}")
        if self.prefill_first_token and not self.prefix_cache:
            raise ValueError("prefill_first_token commits slot 0 from the prefix cache's prefill: set prefix_cache=true")
        block = self.block_length if self.block_length is not None else answer_length
        if block < 1 or answer_length % block:
            raise ValueError(
                f"block_length {block} must be >= 1 and divide the answer length {answer_length}"
            )
        n_blocks = answer_length // block
        if self.threshold_fallback not in THRESHOLD_FALLBACKS:
            raise ValueError(f"unknown threshold_fallback {self.threshold_fallback!r}; "
                             f"choose one of: {', '.join(THRESHOLD_FALLBACKS)}")
        stepped = self.strategy != "threshold" or self.threshold_fallback == "schedule"
        if stepped and steps % n_blocks:
            raise ValueError(f"steps {steps} is not divisible by the number of blocks {n_blocks}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.threshold_on not in THRESHOLD_ON:
            raise ValueError(f"unknown threshold_on {self.threshold_on!r}; choose one of: {', '.join(THRESHOLD_ON)}")
        if self.schedule_shift <= 0:
            raise ValueError(f"schedule_shift must be > 0, got {self.schedule_shift}")
        return steps, block, n_blocks


@dataclass
class StepRecord:
    """What happened at one global denoising step."""

    step: int
    block: int
    x_before: Tensor
    x_after: Tensor
    committed: Tensor  # bool [batch, L]
    confidence: Tensor  # [batch, L], nan where not masked
    logits: Tensor | None = None  # [batch, L, V] (only passed to listeners, not kept)


@dataclass
class Trajectory:
    """A finished generation: the answer and the step-by-step record."""

    tokens: Tensor  # [batch, L]
    steps: list[StepRecord] = field(default_factory=list)
    n_forward: int = 0

    @property
    def commit_step(self) -> Tensor:
        """[batch, L]: the global step at which each position was committed (-1 if never)."""
        out = torch.full(self.tokens.shape, -1, dtype=torch.long)
        for r in self.steps:
            out[r.committed.cpu()] = r.step
        return out


def _confidence(strategy: str, logits: Tensor, x0: Tensor, gen: torch.Generator | None) -> Tensor:
    probs = torch.softmax(logits.float(), dim=-1)
    if strategy in ("low_confidence", "threshold"):
        return probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    if strategy == "random":
        return torch.rand(x0.shape, generator=gen, device=x0.device)
    if strategy == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if strategy == "entropy":
        return (probs * torch.log(probs.clamp_min(1e-12))).sum(-1)  # minus entropy
    raise ValueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")


def _top_p(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering: ``-inf`` outside the smallest set of most likely tokens whose probability
    exceeds ``top_p`` (the most likely token always stays)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = torch.softmax(sorted_logits.float(), dim=-1).cumsum(-1)
    drop = cum > top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -torch.inf)


def _propose(logits: Tensor, temperature: float, gen: torch.Generator | None) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    # Gumbel-max sampling at the given temperature, in float64 as LLaDA recommends
    u = torch.rand(logits.shape, generator=gen, dtype=torch.float64, device=logits.device).clamp_min(1e-20)
    g = -torch.log(-torch.log(u))
    return (logits.double() / temperature + g).argmax(-1)


class DiffusionSampler:
    """Masked-diffusion decoding of the answer slots (LLaDA / Dream / Dimple style)."""

    def __init__(self, config: SamplerConfig | None = None, **kwargs):
        self.config = config or SamplerConfig(**kwargs)

    def check(self, answer_length: int) -> tuple[int, int, int]:
        """Validate before any compute."""
        return self.config.resolve(answer_length)

    def generate(
        self,
        source: LogitsSource,
        x: Tensor,
        mask_id: int,
        end_ids: Sequence[int] = (),
        listeners: Sequence = (),
        keep_logits: bool = False,
    ) -> Trajectory:
        """Decode every masked slot of ``x`` [batch, L] (ids, ``mask_id`` where undecided)."""
        cfg = self.config
        L = x.shape[1]
        steps, block, n_blocks = self.check(L)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        x = x.clone()
        traj = Trajectory(tokens=x)
        end_t = torch.tensor(sorted(set(end_ids)), dtype=torch.long, device=x.device)
        stop = None  # [batch] first committed end-of-turn slot (stop_at_end), L where none yet
        if cfg.prefill_first_token:
            first = getattr(source, "prefill_logits", None)
            if first is None:
                raise ValueError("prefill_first_token needs a logits source with a prefix-cache prefill (EngineSource)")
            x[:, 0] = torch.where(x[:, 0] == mask_id, first(x, 0)[:, 0].argmax(-1), x[:, 0])
        g = 0
        for b in range(n_blocks):
            lo, hi = b * block, (b + 1) * block
            in_block = torch.zeros(L, dtype=torch.bool, device=x.device)
            in_block[lo:hi] = True
            n_steps = steps // n_blocks
            n_total = (x[:, lo:hi] == mask_id).sum(1)
            plan = None
            if cfg.strategy != "threshold":
                plan = transfer_counts(int(n_total.max()), n_steps, cfg.schedule, cfg.schedule_shift)
            dimple = cfg.strategy == "threshold" and cfg.threshold_fallback == "schedule"
            limit = len(plan) if plan is not None else n_steps if dimple else math.inf
            s = 0
            while True:
                masked = (x == mask_id) & in_block
                if stop is not None:
                    masked = masked & (torch.arange(L, device=x.device) < stop.unsqueeze(1))
                if not bool(masked.any()) or s >= limit:
                    break
                logits = source(x, g)
                traj.n_forward += 1
                scored = logits  # what proposals and confidences see (the records keep the raw logits)
                if cfg.top_p is not None and cfg.top_p < 1:
                    scored = _top_p(scored, cfg.top_p)
                if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
                    kth = scored.topk(cfg.top_k, dim=-1).values[..., -1:]
                    scored = scored.masked_fill(scored < kth, -torch.inf)
                x0 = _propose(scored, cfg.temperature, gen)
                conf_logits = scored
                if cfg.confidence_eos_eot_inf and end_t.numel():
                    conf_logits = scored.clone()
                    conf_logits[..., int(end_ids[0])] = -torch.inf
                    if cfg.temperature == 0 and len(end_ids) > 1:  # the noisy logits are the logits themselves
                        conf_logits[..., int(end_ids[1])] = -torch.inf
                measure = "topk_margin" if cfg.strategy == "threshold" and cfg.threshold_on == "margin" else cfg.strategy
                conf = _confidence(measure, conf_logits, x0, gen)
                if cfg.suppress_end and end_t.numel():
                    conf = torch.where(torch.isin(x0, end_t), conf - _SUPPRESS, conf)
                if stop is not None:  # LLaDA-V's stopping criteria: only the slots before the first end
                    masked = masked & (torch.arange(L, device=x.device) < stop.unsqueeze(1))
                conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
                commit = torch.zeros_like(masked)
                if plan is None:
                    p = (_confidence("topk_margin", scored, x0, gen) if cfg.threshold_on == "margin"
                         else torch.softmax(scored.float(), -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1))
                    if not dimple:  # at least the single most confident slot
                        commit = masked & (p >= cfg.threshold)
                        best = conf.argmax(1)
                        rows = masked.any(1)
                        commit[rows, best[rows]] = True
                    elif s == n_steps - 1:  # Dimple commits everything at the last step
                        commit = masked.clone()
                    else:
                        commit = masked & (p > cfg.threshold)
                        for r in range(x.shape[0]):
                            m = int(masked[r].sum())
                            if m and not bool(commit[r].any()):
                                k = fallback_count(m, int(n_total[r]), s, n_steps)
                                commit[r, conf[r].topk(k).indices] = True
                else:
                    k = plan[s]
                    for r in range(x.shape[0]):
                        if cfg.schedule == "dream":  # recounted from the slots masked now
                            m = int(masked[r].sum())
                            k = dream_count(m, s, len(plan))
                        kr = min(k, int(masked[r].sum()))
                        if kr and cfg.schedule == "dream":  # ranked among the masked slots, as Dream does
                            idx = masked[r].nonzero(as_tuple=True)[0]
                            commit[r, idx[conf[r, idx].topk(kr).indices]] = True
                        elif kr:
                            commit[r, conf[r].topk(kr).indices] = True
                x_before = x.clone()
                x = torch.where(commit, x0, x)
                if cfg.stop_at_end and len(end_ids):
                    pos = torch.where(x == int(end_ids[0]), torch.arange(L, device=x.device), L).min(1).values
                    stop = pos if stop is None else torch.minimum(stop, pos)
                rec = StepRecord(
                    step=g, block=b, x_before=x_before, x_after=x.clone(), committed=commit,
                    confidence=torch.where(masked, conf, torch.full_like(conf, float("nan"))),
                    logits=logits,
                )
                for lst in listeners:
                    lst.on_step_end(rec)
                if not keep_logits:
                    rec.logits = None
                traj.steps.append(rec)
                g += 1
                s += 1
        if stop is not None:  # what the original returns ends before the stop; the slots after it hold the end id
            after = torch.arange(L, device=x.device) > stop.unsqueeze(1)
            x = torch.where(after, torch.full_like(x, int(end_ids[0])), x)
        traj.tokens = x
        return traj
