"""Crafted result folders with known effects, written through the real result store (tests, notebook, demos).

``make_results(root, effect=...)`` writes runs, traces and outcomes in the schema of
``docs/results.md`` (and a ``summary.parquet``), with the identity columns a real sweep writes:
baselines, blind runs, pruning runs (methods x retentions x schedules), layer-skipping runs,
attention-probe baselines, recovery-probe runs pruned at several steps, and signals-probe runs. Scores
are per-sample ``base + delta + noise``, so a claim's numbers are what ``effect`` says they are.

``effect(ctx) -> dict`` gets the run's context (``family``, ``task``, ``task_type`` short/long,
``strategy``, ``method``, ``schedule``, ``retention``, ``prune_step``, ``start_fraction``, ``skip_n``,
``skip_position``) and returns any of ``delta`` (accuracy change), ``rel_flops``, ``rel_seconds``,
``kl_early`` (KL right after pruning) and ``kl_late`` (KL at the last step). :func:`paper_effect`
follows every measurable claim of the study; :func:`opposite_effect` contradicts them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from redundancy.results import (
    Results,
    ResultStore,
    coerce,
    empty_table,
    load_results,
    make_run_row,
    run_id,
    runs_frame,
    write_table,
)

from .load import family_of, summarize_results

__all__ = ["make_results", "make_tables", "paper_effect", "opposite_effect", "SAMPLER", "DEPTH"]

DEPTH = 4
SAMPLER = {"kind": "diffusion", "strategy": "low_confidence", "steps": None, "tokens_per_step": 2, "block_length": None,
           "temperature": 0.0, "threshold": 0.9, "suppress_end": False, "prefix_cache": False, "seed": 0,
           "schedule": "linear", "schedule_shift": 3.0, "threshold_fallback": "one"}
ANSWER = {"shapes_short": 4, "shapes_long": 32}
METRIC = {"shapes_short": "exact_match", "shapes_long": "object_recall"}
TASK_TYPE = {"shapes_short": "short", "shapes_long": "long"}
PROBES = {
    "default": {"cost": True},
    "attention": {"cost": True, "attention": True, "importance_steps": [0]},
    "signals": {"cost": True, "attention": True, "importance_steps": None, "importance_layers": [1], "signals": True,
                "answer_logit_layers": [1], "oracle_steps": [0]},
    "recovery": {"cost": True, "information_loss": ["free", "forced"]},
}
VERSIONS = {"version.python": "3", "version.redundancy": "synthetic", "version.torch": "unknown",
            "version.transformers": "unknown"}


def paper_effect(ctx: Mapping[str, Any]) -> dict:
    """Effects that make every measurable finding of the study hold."""
    fam, tt, strat = ctx["family"], ctx["task_type"], ctx["strategy"]
    r = ctx.get("retention", 1.0)
    if strat == "blind":
        return {"delta": -0.3, "rel_flops": 0.3, "rel_seconds": 0.3}
    if strat == "skip":
        n = ctx["skip_n"]
        return {"delta": -0.01 if fam == "ar_to_diffusion" else -0.15, "rel_flops": 1 - n / DEPTH,
                "rel_seconds": 1 - n / DEPTH}
    if strat == "baseline":
        return {}
    early = (ctx.get("prune_step") or 0) == 0 and ctx.get("schedule") == "once"
    worse = -0.02 if ctx.get("method") == "random" else 0.0  # signal-based pruning beats random pruning
    if fam == "from_scratch":
        if early:  # minor loss at 50% retention (none on long answers), significant below
            delta = {0.75: -0.06, 0.5: -0.01}.get(r, -0.25) if tt == "long" else {0.75: -0.1, 0.5: -0.03}.get(r, -0.3)
        else:  # late / progressive pruning keeps long answers intact
            delta = 0.0 if tt == "long" else -0.05
        rel = 1 - 0.5 * (1 - r) * (1 - (ctx.get("start_fraction") or 0.0))
        return {"delta": delta + worse, "rel_flops": rel, "rel_seconds": rel + 0.05, "kl_early": 0.8, "kl_late": 0.1}
    return {"delta": (-0.3 if early else -0.2) + worse, "rel_flops": 0.7, "rel_seconds": 1.05, "kl_early": 0.8,
            "kl_late": 0.9}


def opposite_effect(ctx: Mapping[str, Any]) -> dict:
    """Effects that contradict every measurable finding of the study."""
    fam, _tt, strat = ctx["family"], ctx["task_type"], ctx["strategy"]
    if strat == "blind":
        return {"delta": -0.3, "rel_flops": 0.3, "rel_seconds": 0.3}
    if strat == "skip":
        return {"delta": -0.3 if fam == "ar_to_diffusion" else 0.0, "rel_flops": 1 - ctx["skip_n"] / DEPTH,
                "rel_seconds": 1 - ctx["skip_n"] / DEPTH}
    if strat == "baseline":
        return {}
    early = (ctx.get("prune_step") or 0) == 0 and ctx.get("schedule") == "once"
    if fam == "from_scratch":
        # no loss anywhere (so no redundancy "scope"), late pruning worse than early, no recovery
        return {"delta": 0.0 if early else -0.2, "rel_flops": 0.5, "rel_seconds": 0.5, "kl_early": 0.01,
                "kl_late": 0.02}
    return {"delta": 0.0, "rel_flops": 0.4, "rel_seconds": 0.4, "kl_early": 0.8, "kl_late": 0.05}


def _steps(task: str) -> int:
    return max(1, -(-ANSWER[task] // SAMPLER["tokens_per_step"]))


def _decisions(schedule: str, ratio: float, steps: int, start: int = 0, method: str = "fastv") -> list:
    if schedule == "once":
        d = [[start, ratio]]
    elif schedule == "late":
        d = [[min(steps - 1, max(0, round(0.5 * steps))), ratio]]
    elif schedule == "progressive":
        rs = [1 - (1 - ratio) * t / 3 for t in (1, 2, 3)]
        st = [min(steps - 1, round(t * steps / 3)) for t in range(3)]
        d = [[s, min(r for r, s2 in zip(rs, st) if s2 <= s)] for s in sorted(set(st))]
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return [s for s, _ in d] if method == "vtw" else d


class _Writer:
    def __init__(self, n: int, effect: Callable, seed: int, noise: float):
        self.runs: dict[str, tuple[dict, pd.DataFrame, pd.DataFrame]] = {}
        self.n, self.effect, self.seed, self.noise = n, effect, seed, noise
        self.base_scores: dict[tuple, np.ndarray] = {}
        self.samples: dict[str, list] = {}

    def sample_rows(self, task: str) -> list:
        if task not in self.samples:
            from redundancy.tasks import make_sample

            self.samples[task] = [make_sample(task, "test", i) for i in range(self.n)]
        return self.samples[task]

    def ident(self, model: str, task: str, policy: Any, probe: str) -> dict:
        return {"model": {"name": model, "checkpoint": None, "dtype": "float32"},
                "task": {"name": task, "split": "test", "n": self.n}, "sampler": dict(SAMPLER),
                "policy": policy, "probe": dict(PROBES[probe]), "batch_size": 16}

    def write(self, model: str, task: str, policy: Any, probe: str, label: dict, ctx: dict,
              traces: list[dict] | None = None, kept: int | None = None) -> str:
        ident = self.ident(model, task, policy, probe)
        rid = run_id(ident)
        base_id = run_id({**ident, "policy": None})
        fam = family_of(model)
        eff = self.effect({**ctx, "family": fam, "task": task, "task_type": TASK_TYPE[task]}) if policy else {}
        key = (model, task)
        rng = np.random.default_rng([self.seed, int(rid[:8], 16)])
        if key not in self.base_scores:
            self.base_scores[key] = np.random.default_rng([self.seed, len(self.base_scores)]).uniform(0.3, 0.7, self.n)
        base = self.base_scores[key]
        noise = rng.normal(0, self.noise, self.n) if policy else np.zeros(self.n)
        score = np.clip(base + eff.get("delta", 0.0) + noise, 0.0, 1.0)
        flops0, sec0 = 1e9 * _steps(task), 0.01 * _steps(task)
        rows = []
        for i, s in enumerate(self.sample_rows(task)):
            rows.append({
                "sample_id": s.sample_id, "answer": s.answer, "reference": s.answer, "qtype": s.qtype,
                METRIC[task]: float(score[i]),
                "baseline_agreement": 1.0 if not policy else float(abs(score[i] - base[i]) < 1e-9),
                "n_visual_kept": kept if kept is not None else 81, "tokens_executed": 1000,
                "flops": flops0 * eff.get("rel_flops", 1.0), "seconds": sec0 * eff.get("rel_seconds", 1.0),
                "peak_memory_mb": float("nan"), "baseline_run_id": base_id if policy else None,
                "image_ref": s.sample_id, "grid_h": 9, "grid_w": 9,
            })
        tr = pd.DataFrame(traces or [], columns=["sample_id", "step", "layer", "head", "token", "query_group", "mode",
                                                 "metric", "value"])
        row = make_run_row({**ident, "label": label}, weights_hash="synthetic", created="2026-01-01T00:00:00+00:00",
                           code_rev="synthetic", versions=VERSIONS)
        row["run_id"] = rid
        self.runs[rid] = (row, tr, pd.DataFrame(rows))
        return rid


def _label(name: str, method: str = "none", schedule: str = "once", ratio: float = 0.5, skip_n: int | None = None,
           position: str = "middle") -> dict:
    return {"policy": name, "method": method, "schedule": schedule, "ratio": ratio, "layer": 2 if method != "none" else 3,
            "skip_n": skip_n, "skip_position": position}


def _attention_traces(fam: str, task: str, n: int, ids: list[str]) -> list[dict]:
    out = []
    S = _steps(task)
    lvl = 0.7 if fam == "from_scratch" else 0.4
    for sid in ids:
        for step in range(S):
            for layer in range(DEPTH):
                for g, off in (("masked", 0.0), ("decoded", -0.1), ("text", -0.2)):
                    if g == "decoded" and step == 0:
                        continue
                    v = lvl + off + 0.05 * layer - 0.1 * step / max(S, 1)
                    out.append(dict(sample_id=sid, step=step, layer=layer, head=None, token=None, query_group=g,
                                    mode=None, metric="visual_share", value=v))
                    out.append(dict(sample_id=sid, step=step, layer=layer, head=None, token=None, query_group=g,
                                    mode=None, metric="visual_entropy", value=3.0 + off))
    return out


def _signal_traces(task: str, ids: list[str], noise: float, seed: int, kept_after: int | None = None,
                   answers: list[str] | None = None) -> list[dict]:
    out = []
    S, L = _steps(task), ANSWER[task]
    for k, sid in enumerate(ids):
        rng = np.random.default_rng([seed, 7, k])
        z = rng.normal(size=81)
        alive = np.arange(81)
        for step in range(S):
            if kept_after is not None and step >= 1:
                alive = np.argsort(-z)[:kept_after]
            e1, e2 = rng.normal(size=81), rng.normal(size=81)
            imp = np.exp(z + noise * e1)
            imp = imp / imp.sum()
            lg = z + noise * e2 - 10.0
            for t in alive:
                out.append(dict(sample_id=sid, step=step, layer=1, head=None, token=int(t), query_group="answer",
                                mode=None, metric="importance", value=float(imp[t])))
                out.append(dict(sample_id=sid, step=step, layer=1, head=None, token=int(t), query_group="visual",
                                mode=None, metric="answer_logit", value=float(lg[t])))
            if step == 0:
                for t in range(81):
                    out.append(dict(sample_id=sid, step=0, layer=None, head=None, token=t, query_group="visual",
                                    mode=None, metric="drop_one_kl", value=float(1e-3 * math.exp(z[t]))))
        n_words = len((answers[k] if answers else "").split())
        order = list(range(n_words, L)) + list(range(n_words))  # end tokens first, as a diffusion decoder does
        for j, slot in enumerate(order):
            step = min(S - 1, j // SAMPLER["tokens_per_step"])
            out.append(dict(sample_id=sid, step=step, layer=None, head=None, token=slot, query_group="answer_slot",
                            mode=None, metric="committed", value=1.0))
    return out


def _recovery_traces(task: str, ids: list[str], start: int, kl_early: float, kl_late: float) -> list[dict]:
    out = []
    S = _steps(task)
    for sid in ids:
        for step in range(S):
            if step < start:
                kl = 0.0
            else:
                frac = (step - start) / max(S - 1 - start, 1)
                kl = kl_early + (kl_late - kl_early) * frac
            for mode, f in (("free", 1.2), ("forced", 1.0)):
                out.append(dict(sample_id=sid, step=step, layer=None, head=None, token=None, query_group=None,
                                mode=mode, metric="kl", value=kl * f))
                out.append(dict(sample_id=sid, step=step, layer=None, head=None, token=None, query_group=None,
                                mode=mode, metric="top1_agreement", value=1 / (1 + kl * f)))
        out.append(dict(sample_id=sid, step=None, layer=None, head=None, token=None, query_group=None, mode="free",
                        metric="final_agreement", value=float(kl_late < 0.2)))
    return out


def _build(
    *,
    models: Sequence[str] = ("toy-scratch", "toy-ar2diff"),
    tasks: Sequence[str] = ("shapes_short", "shapes_long"),
    n_samples: int = 8,
    methods: Sequence[str] = ("fastv", "random"),
    retentions: Sequence[float] = (0.75, 0.5, 0.25),
    schedules: Sequence[str] = ("once", "late", "progressive"),
    skips: Sequence[tuple[int, str]] = ((1, "early"), (1, "middle"), (2, "middle")),
    recovery_starts: Sequence[float] = (0.0, 0.5),
    recovery_models: Sequence[str] | None = None,
    attention: bool = True,
    signals: bool = True,
    signal_noise: float | Mapping[str, float] = 0.5,
    effect: Callable[[Mapping[str, Any]], dict] = paper_effect,
    noise: float = 0.01,
    blind: bool = True,
    seed: int = 0,
) -> Path:
    w = _Writer(n_samples, effect, seed, noise)
    for model in models:
        fam = family_of(model)
        for task in tasks:
            S = _steps(task)
            ids = [s.sample_id for s in w.sample_rows(task)]
            answers = [s.answer for s in w.sample_rows(task)]
            base_ctx = {"strategy": "baseline"}
            w.write(model, task, None, "default", _label("baseline"), base_ctx)
            if blind:
                w.write(model, task, {"blind": True}, "default", _label("blind"), {"strategy": "blind", "retention": 0.0})
            for m in methods:
                for sched in schedules:
                    for r in ([0.5] if m == "vtw" else retentions):
                        dec = _decisions(sched, r, S, method=m)
                        first = dec[0] if m == "vtw" else dec[0][0]
                        pol = {"prune": {"method": m, "layer": 2, "decisions": dec, "persistent": True,
                                         "persist_from": "input"}}
                        ret = 0.0 if m == "vtw" else min(d[1] for d in dec)
                        ctx = {"strategy": m, "method": m, "schedule": sched, "retention": ret, "prune_step": first,
                               "start_fraction": first / S}
                        w.write(model, task, pol, "default", _label(m, m, sched, r), ctx, kept=int(81 * ret))
            for n, pos in skips:
                lo = {"early": 0, "late": DEPTH - n}.get(pos, (DEPTH - n) // 2)
                pol = {"skip": {"layers": list(range(lo, lo + n)), "steps": None}}
                ctx = {"strategy": "skip", "skip_n": n, "skip_position": pos, "retention": 1.0}
                w.write(model, task, pol, "default", _label("skip", skip_n=n, position=pos), ctx)
            if attention:
                w.write(model, task, None, "attention", _label("baseline"), base_ctx,
                        traces=_attention_traces(fam, task, n_samples, ids))
            if recovery_starts and (recovery_models is None or model in recovery_models):
                w.write(model, task, None, "recovery", _label("baseline"), base_ctx)
                for f in recovery_starts:
                    start = min(S - 1, round(f * S))
                    pol = {"prune": {"method": "fastv", "layer": 2, "decisions": [[start, 0.5]], "persistent": True,
                                     "persist_from": "input"}}
                    ctx = {"strategy": "fastv", "method": "fastv", "schedule": "once", "retention": 0.5,
                           "prune_step": start, "start_fraction": start / S}
                    eff = effect({**ctx, "family": fam, "task": task, "task_type": TASK_TYPE[task]})
                    tr = _recovery_traces(task, ids, start, eff.get("kl_early", 0.5), eff.get("kl_late", 0.5))
                    w.write(model, task, pol, "recovery", _label("fastv", "fastv", "once", 0.5), ctx, traces=tr, kept=40)
            if signals and task == tasks[-1]:
                sn = signal_noise.get(fam, 0.5) if isinstance(signal_noise, Mapping) else signal_noise
                w.write(model, task, None, "signals", _label("baseline"), base_ctx,
                        traces=_signal_traces(task, ids, sn, seed, None, answers))
                pol = {"prune": {"method": "fastv", "layer": 2, "decisions": [[0, 0.5]], "persistent": True,
                                 "persist_from": "input"}}
                ctx = {"strategy": "fastv", "method": "fastv", "schedule": "once", "retention": 0.5, "prune_step": 0,
                       "start_fraction": 0.0}
                w.write(model, task, pol, "signals", _label("fastv", "fastv", "once", 0.5), ctx,
                        traces=_signal_traces(task, ids, sn, seed, 40, answers), kept=40)
    return w.runs


def make_tables(**kwargs: Any) -> Results:
    """The crafted tables in memory, as ``load_results`` would return them (arguments of :func:`make_results`)."""
    runs = _build(**kwargs)
    ids = sorted(runs)

    def cat(k: int, table: str) -> pd.DataFrame:
        frames = [runs[r][k].assign(run_id=r) for r in ids if len(runs[r][k])]
        if not frames:
            return empty_table(table)
        return coerce(pd.concat(frames, ignore_index=True, sort=False), table)

    return Results(runs=runs_frame(runs[r][0] for r in ids), traces=cat(1, "traces"), outcomes=cat(2, "outcomes"))


def make_results(root: str | Path, **kwargs: Any) -> Path:
    """Write a crafted results folder at ``root`` through ``ResultStore`` plus its ``summary.parquet``
    (see the module docstring for the arguments: models, tasks, n_samples, methods, retentions,
    schedules, skips, recovery_starts, recovery_models, attention, signals, signal_noise, effect, noise,
    blind, seed); return ``root``."""
    root = Path(root)
    store = ResultStore(root)
    for rid, (row, tr, out) in sorted(_build(**kwargs).items()):
        store.write_run(row, tr, out, overwrite=True)
    summ = summarize_results(load_results(root))
    if len(summ):
        write_table(summ, root / "summary.parquet")
    return root
