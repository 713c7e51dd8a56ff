"""Information loss and recovery of a run with a policy against the unpruned baseline, step by step.

Per step ``s`` and sample: ``kl`` = KL(baseline || run) averaged over the answer slots still
masked in the baseline at ``s``; ``top1_agreement`` = share of those slots where both predict the
same token; per sample ``final_agreement`` = 1 when the final answers are identical. Two modes:

- ``free``: each run decodes its own tokens (the comparison at step ``s`` uses each run's own
  sequence);
- ``forced``: the run's model (with its policy) replays the baseline's partially decoded sequence
  at every step, isolating the loss from divergent decoding.

The baseline trajectory is computed once per (model, sample set, sampler settings) and reused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass

import torch
from torch import Tensor

from ..engine.engine import Engine
from ..engine.events import Listener, Policy
from ..generate import generate_from_prompt
from ..models.base import Prompt
from ..sampling import EngineSource


@dataclass
class Reference:
    """A decoded trajectory kept for comparison: per step the input answer ids, masks and log-probs."""

    x_before: list[Tensor]  # [batch, L] per step
    masked: list[Tensor]  # bool [batch, L] per step: slots still masked at the step's input
    logprobs: list[Tensor]  # [batch, L, V] per step
    tokens: Tensor  # [batch, L]


class _Keep(Listener):
    """Keeps per-step inputs, masks and log-probs."""

    def __init__(self, mask_id: int) -> None:
        self.mask_id = mask_id
        self.x, self.m, self.lp = [], [], []

    def on_step_end(self, record) -> None:
        self.x.append(record.x_before.clone())
        self.m.append(record.x_before == self.mask_id)
        self.lp.append(torch.log_softmax(record.logits.float(), -1))


def record(adapter, prompt: Prompt, sampler, policy: Policy | None = None) -> Reference:
    """Decode with ``policy`` and keep what the comparison needs."""
    keep = _Keep(prompt.mask_id)
    gen = generate_from_prompt(adapter, prompt, sampler, policy=policy, listeners=[keep], keep_logits=True)
    return Reference(keep.x, keep.m, keep.lp, gen.trajectory.tokens)


class BaselineCache:
    """Unpruned trajectories keyed by (model, samples, sampler settings), computed once.

    The model part of the key is the adapter's ``identity`` (its run-identity fields and the
    fingerprint of its files, set by :func:`redundancy.experiment.get_model`), else its name."""

    def __init__(self) -> None:
        self._store: dict[str, Reference] = {}

    @staticmethod
    def key(model_name: str, sample_ids, sampler) -> str:
        cfg = getattr(sampler, "config", None)
        cfg = asdict(cfg) if is_dataclass(cfg) else {"kind": type(sampler).__name__}
        return json.dumps([model_name, list(sample_ids), cfg], sort_keys=True)

    def get(self, adapter, prompt: Prompt, sample_ids, sampler) -> Reference:
        """The cached baseline, decoding it on first use."""
        k = self.key(getattr(adapter, "identity", None) or adapter.name, sample_ids, sampler)
        if k not in self._store:
            self._store[k] = record(adapter, prompt, sampler)
        return self._store[k]

    def __len__(self) -> int:
        return len(self._store)


@torch.no_grad()
def forced(adapter, prompt: Prompt, sampler, policy: Policy | None, baseline: Reference) -> list[Tensor]:
    """Log-probs of the run's model (with its policy) replaying the baseline's sequence at every step."""
    prefix = bool(getattr(getattr(sampler, "config", None), "prefix_cache", False))
    engine = Engine(adapter, policy=policy)
    if policy is not None:
        policy.on_generation_start(prompt, sampler)
    source = EngineSource(engine, prompt, prefix_cache=prefix, tag="decode")
    out = [torch.log_softmax(source(x, s).float(), -1) for s, x in enumerate(baseline.x_before)]
    if policy is not None:
        policy.on_generation_end(None)
    return out


def compare(baseline: Reference, logprobs: list[Tensor], mode: str, tokens: Tensor | None = None) -> list[dict]:
    """Tidy rows (sample, step, mode, metric, value): KL, top-1 agreement and final agreement."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    rows = []
    for s in range(min(len(baseline.logprobs), len(logprobs))):
        base, run = baseline.logprobs[s], logprobs[s]
        still = baseline.masked[s]
        kl = (base.exp() * (base - run)).sum(-1)  # [b, L]
        agree = (base.argmax(-1) == run.argmax(-1)).float()
        for i in range(base.shape[0]):
            m = still[i]
            if not bool(m.any()):
                continue
            rows.append(dict(sample=i, step=s, mode=mode, metric="kl", value=float(kl[i][m].mean())))
            rows.append(dict(sample=i, step=s, mode=mode, metric="top1_agreement", value=float(agree[i][m].mean())))
    if tokens is not None:
        for i in range(tokens.shape[0]):
            same = float(torch.equal(tokens[i], baseline.tokens[i]))
            rows.append(dict(sample=i, step=None, mode=mode, metric="final_agreement", value=same))
    return rows


MODES = ("free", "forced")


def information_loss(adapter, prompt: Prompt, sampler, policy: Policy, baseline: Reference,
                     modes=MODES, policy_factory=None) -> list[dict]:
    """Both modes for one run; ``policy_factory`` gives a fresh policy for the forced replay."""
    rows = []
    if "free" in modes:
        run = record(adapter, prompt, sampler, policy)
        rows += compare(baseline, run.logprobs, "free", run.tokens)
    if "forced" in modes:
        pol = policy_factory() if policy_factory is not None else policy
        rows += compare(baseline, forced(adapter, prompt, sampler, pol, baseline), "forced")
    return rows
