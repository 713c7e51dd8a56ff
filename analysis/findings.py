"""Verdicts on the study's checkable findings (paper.md section 5, numbered 1-11) from result tables.

Each finding has a check (named in ``conf/findings.yaml``) that reduces the tables to *conditions*:
an estimate with a bootstrap CI over samples, compared with a threshold. A condition is true, false,
inconclusive (the CI straddles the threshold) or missing (no data). The verdict of a finding is

- ``contradicted`` if any condition is false;
- ``not measured`` if a required condition has no data, or none has;
- ``inconclusive`` if any condition is inconclusive;
- ``supported`` otherwise.

``evaluate(results)`` returns the verdicts; ``write_findings(verdicts, path)`` writes FINDINGS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from redundancy.results import Results

from .load import paired, run_info

__all__ = [
    "VERDICTS", "Condition", "Verdict", "CHECKS", "DEFAULT_CONFIG", "load_config", "evaluate", "verdicts_frame",
    "write_findings", "render_markdown", "test_interval",
]

VERDICTS = ("supported", "contradicted", "not measured", "inconclusive")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "findings.yaml"
DIRECTIONS = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}


def test_interval(low: float, high: float, threshold: float, direction: str) -> bool | None:
    """True / False / None (inconclusive) for a CI [low, high] against ``threshold`` in ``direction``."""
    if direction == "at_least":
        return True if low >= threshold else (False if high < threshold else None)
    if direction == "above":
        return True if low > threshold else (False if high <= threshold else None)
    if direction == "at_most":
        return True if high <= threshold else (False if low > threshold else None)
    if direction == "below":
        return True if high < threshold else (False if low >= threshold else None)
    raise ValueError(f"unknown direction {direction!r}; choose one of: {', '.join(DIRECTIONS)}")


test_interval.__test__ = False  # not a pytest test


@dataclass
class Condition:
    """One measured comparison: ``estimate`` [``low``, ``high``] over ``n`` samples vs ``threshold``."""

    name: str
    threshold: float
    direction: str
    estimate: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    n: int = 0
    required: bool = True
    note: str = ""

    @property
    def missing(self) -> bool:
        return self.n == 0 or any(math.isnan(x) for x in (self.estimate, self.low, self.high))

    @property
    def outcome(self) -> bool | None | str:
        """True, False, None (inconclusive) or ``"missing"``."""
        if self.missing:
            return "missing"
        return test_interval(self.low, self.high, self.threshold, self.direction)

    @property
    def outcome_text(self) -> str:
        o = self.outcome
        return {True: "true", False: "false", None: "inconclusive", "missing": "no data"}[o]

    @property
    def test_text(self) -> str:
        return f"{DIRECTIONS[self.direction]} {self.threshold:g}"


@dataclass
class Verdict:
    number: int
    claim: str
    source: str
    check: str
    verdict: str
    criterion: str
    conditions: list[Condition] = field(default_factory=list)
    context: list[str] = field(default_factory=list)


def combine(conditions: Sequence[Condition]) -> str:
    """The verdict of a list of conditions (see the module docstring)."""
    outs = [c.outcome for c in conditions]
    if any(o is False for o in outs):
        return "contradicted"
    if not conditions or all(o == "missing" for o in outs):
        return "not measured"
    if any(o == "missing" and c.required for o, c in zip(outs, conditions)):
        return "not measured"
    if any(o is None for o in outs):
        return "inconclusive"
    return "supported"


# -- bootstrap ------------------------------------------------------------------------------------
@dataclass
class Boot:
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0

    def _pick(self, clusters: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        codes, uniq = pd.factorize(clusters)
        rng = np.random.default_rng(self.seed)
        return codes, len(uniq), rng.integers(0, len(uniq), size=(self.n_boot, len(uniq)))

    def _ci(self, stats: np.ndarray) -> tuple[float, float]:
        a = (1 - self.level) / 2
        stats = stats[~np.isnan(stats)]
        if not len(stats):
            return float("nan"), float("nan")
        return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))

    def mean(self, values: Any, clusters: Any) -> tuple[float, float, float, int]:
        """(mean, low, high, n clusters) resampling clusters (samples) with all their rows."""
        v = np.asarray(values, dtype=float)
        cl = np.asarray(clusters, dtype=object)
        ok = ~np.isnan(v)
        v, cl = v[ok], cl[ok]
        if not len(v):
            return float("nan"), float("nan"), float("nan"), 0
        codes, k, pick = self._pick(cl)
        sums, cnts = np.bincount(codes, weights=v, minlength=k), np.bincount(codes, minlength=k).astype(float)
        stats = sums[pick].sum(1) / cnts[pick].sum(1)
        lo, hi = self._ci(stats)
        return float(v.mean()), lo, hi, k

    def ratio(self, num: Any, den: Any, clusters: Any) -> tuple[float, float, float, int]:
        """(sum num / sum den, low, high, n clusters)."""
        a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
        cl = np.asarray(clusters, dtype=object)
        ok = ~(np.isnan(a) | np.isnan(b))
        a, b, cl = a[ok], b[ok], cl[ok]
        if not len(a) or b.sum() == 0:
            return float("nan"), float("nan"), float("nan"), 0
        codes, k, pick = self._pick(cl)
        sa, sb = np.bincount(codes, weights=a, minlength=k), np.bincount(codes, weights=b, minlength=k)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats = sa[pick].sum(1) / sb[pick].sum(1)
        lo, hi = self._ci(stats)
        return float(a.sum() / b.sum()), lo, hi, k

    def diff(self, a: Any, ca: Any, b: Any, cb: Any) -> tuple[float, float, float, int]:
        """(mean a - mean b, low, high, min clusters) for two independent groups."""
        ma, la, ha, ka = self.mean(a, ca)
        mb, lb, hb, kb = self.mean(b, cb)
        if not ka or not kb:
            return float("nan"), float("nan"), float("nan"), 0
        va, cla = np.asarray(a, float), np.asarray(ca, object)
        vb, clb = np.asarray(b, float), np.asarray(cb, object)
        stats = []
        for x, c, seed in ((va, cla, self.seed), (vb, clb, self.seed + 1)):
            ok = ~np.isnan(x)
            codes, uniq = pd.factorize(c[ok])
            rng = np.random.default_rng(seed)
            pick = rng.integers(0, len(uniq), size=(self.n_boot, len(uniq)))
            s = np.bincount(codes, weights=x[ok], minlength=len(uniq))
            n = np.bincount(codes, minlength=len(uniq)).astype(float)
            stats.append(s[pick].sum(1) / n[pick].sum(1))
        lo, hi = self._ci(stats[0] - stats[1])
        return ma - mb, lo, hi, min(ka, kb)


def _cond(name: str, stat: tuple[float, float, float, int], threshold: float, direction: str,
          required: bool = True, note: str = "") -> Condition:
    est, lo, hi, n = stat
    return Condition(name, float(threshold), direction, est, lo, hi, int(n), required, note)


# -- data -----------------------------------------------------------------------------------------
class Data:
    """The tables a check needs, prepared once."""

    def __init__(self, res: Results, cfg: Mapping[str, Any]):
        self.res = res
        self.cfg = cfg
        self.info = run_info(res.runs, res.traces)
        self.pairs = paired(res)
        tt = cfg.get("task_types") or {}
        self.task_type = {t: k for k, ts in tt.items() for t in (ts or [])}
        if len(self.pairs):
            self.pairs["task_type"] = self.pairs["task"].map(self.task_type)
            self.pairs["schedule"] = self.pairs["schedule"].astype(object)
        b = cfg.get("bootstrap") or {}
        self.boot = Boot(int(b.get("n_boot", 2000)), float(b.get("level", 0.95)), int(b.get("seed", 0)))
        self._div: pd.DataFrame | None = None

    def prune(self, family: str | None = None, task_type: str | None = None, schedules: Sequence[str] | None = None,
              start_step: int | None = None, retentions: Sequence[float] | None = None,
              methods: Sequence[str] | None = None) -> pd.DataFrame:
        """Paired rows of pruning runs (no layer skipping) matching the filters."""
        p = self.pairs
        if p.empty:
            return p
        p = p[(p["method"] != "none") & (p["skip_n"].fillna(0) == 0)]
        if family is not None:
            p = p[p["family"] == family]
        if task_type is not None:
            p = p[p["task_type"] == task_type]
        if schedules is not None:
            p = p[p["schedule"].isin(list(schedules))]
        if start_step is not None:
            p = p[p["prune_step"].astype("Float64").fillna(-1) == start_step]
        if retentions is not None:
            r = p["retention"].astype(float).to_numpy()
            p = p[np.isclose(r[:, None], np.asarray(list(retentions), float)[None, :]).any(1)]
        if methods is not None:
            p = p[p["method"].isin(list(methods))]
        return p

    def divergence(self) -> pd.DataFrame:
        """Divergence traces (kl, top1_agreement) of pruned runs with run info, from the pruning step on."""
        if self._div is None:
            t = self.res.traces
            t = t[t["metric"].isin(["kl", "top1_agreement"]) & t["step"].notna()]
            if len(t):
                t = t.join(self.info[["family", "task", "method", "prune_step", "n_steps", "retention"]], on="run_id")
                t = t[(t["method"] != "none") & t["prune_step"].notna()]
                t = t[t["step"] >= t["prune_step"]]
                t = t.assign(step=t["step"].astype(int), prune_step=t["prune_step"].astype(int),
                             n_steps=t["n_steps"].astype(int))
            self._div = t
        return self._div


def _boot_pairs(d: Data, p: pd.DataFrame, col: str = "diff") -> tuple[float, float, float, int]:
    if p.empty:
        return float("nan"), float("nan"), float("nan"), 0
    return d.boot.mean(p[col], p["sample_id"])


def _speedup(d: Data, p: pd.DataFrame, speed: str) -> tuple[float, float, float, int]:
    if p.empty:
        return float("nan"), float("nan"), float("nan"), 0
    num, den = ("base_seconds", "seconds") if speed == "seconds" else ("base_flops", "flops")
    return d.boot.ratio(p[num], p[den], p["sample_id"])


def _best(d: Data, p: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """The rows of the configuration with the highest mean diff, and its description."""
    if p.empty:
        return p, ""
    g = p.assign(**{k: p[k].astype(object).where(p[k].notna(), "-") for k in keys})
    means = g.groupby(list(keys))["diff"].mean()
    best = means.idxmax()
    best = best if isinstance(best, tuple) else (best,)
    mask = np.ones(len(g), bool)
    for k, v in zip(keys, best):
        mask &= (g[k] == v).to_numpy()
    return p[mask], "/".join(str(v) for v in best)


# -- checks ---------------------------------------------------------------------------------------
def _fam(cfg: Mapping, key: str) -> str:
    return (cfg.get("families") or {}).get(key, key)


def check_redundancy_scope(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    r, tol = float(q.get("retention", 0.5)), float(q.get("max_drop", 0.02))
    scheds = q.get("schedules")
    agg = q.get("aggregate", "best")
    fs, ar = _fam(d.cfg, "from_scratch"), _fam(d.cfg, "ar_to_diffusion")
    conds, ctx = [], []
    for fam, tt, present in ((fs, "long", True), (fs, "short", False), (ar, "long", False), (ar, "short", False)):
        p = d.prune(fam, tt, scheds, retentions=[r])
        label = ""
        if agg == "best" and len(p):
            p, label = _best(d, p, ["method", "schedule", "prune_step"])
        name = f"{fam}, {tt} answers: redundancy {'present' if present else 'absent'}"
        if label:
            name += f" (best config {label})"
        conds.append(_cond(name, _boot_pairs(d, p), -tol, "at_least" if present else "below"))
    crit = (f"accuracy difference pruned - baseline at retention {r:g} ({agg} over methods x schedules "
            f"{', '.join(scheds) if scheds else 'any'}); redundancy present when >= -{tol:g}, absent when < -{tol:g}; "
            "supported when present only for from-scratch on long answers")
    return conds, ctx, crit


def _per_sample_div(d: Data, family: str | None, metric: str, mode: str) -> pd.DataFrame:
    t = d.divergence()
    if t is None or t.empty:
        return pd.DataFrame(columns=["run_id", "sample_id", "family", "step", "prune_step", "n_steps", "value"])
    base_metric = "top1_agreement" if metric in ("top1_agreement", "disagreement") else metric
    t = t[(t["metric"] == base_metric) & (t["mode"] == mode)]
    if family is not None:
        t = t[t["family"] == family]
    if metric in ("top1_agreement", "disagreement"):
        t = t.assign(value=1.0 - t["value"])
    return t


def check_information_loss(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    metric, mode, kl_min = q.get("metric", "kl"), q.get("mode", "forced"), float(q.get("kl_min", 0.05))
    conds, ctx = [], []
    per: dict[str, pd.DataFrame] = {}
    for key in ("from_scratch", "ar_to_diffusion", "autoregressive"):
        fam = _fam(d.cfg, key)
        t = _per_sample_div(d, fam, metric, mode)
        per[key] = t.groupby(["run_id", "sample_id"])["value"].mean().reset_index() if len(t) else t
    for key in ("from_scratch", "ar_to_diffusion"):
        s = per[key]
        stat = d.boot.mean(s["value"], s["sample_id"]) if len(s) else (np.nan, np.nan, np.nan, 0)
        conds.append(_cond(f"{_fam(d.cfg, key)}: mean {metric} ({mode}) after pruning", stat, kl_min, "at_least"))
    if q.get("compare_autoregressive", True):
        a = per["autoregressive"]
        for key in ("from_scratch", "ar_to_diffusion"):
            s = per[key]
            if len(s) and len(a):
                stat = d.boot.diff(s["value"], s["sample_id"], a["value"], a["sample_id"])
            else:
                stat = (np.nan, np.nan, np.nan, 0)
            conds.append(_cond(f"{_fam(d.cfg, key)} - autoregressive: {metric} difference", stat, 0.0, "above",
                               required=False, note="optional: needs recovery runs of an autoregressive model"))
    for key in ("from_scratch", "ar_to_diffusion"):
        t = _per_sample_div(d, _fam(d.cfg, key), "top1_agreement", mode)
        if len(t):
            ctx.append(f"{_fam(d.cfg, key)}: mean top-1 agreement with the baseline after pruning ({mode}) = "
                       f"{1 - t['value'].mean():.3f}")
    crit = (f"{metric} between baseline and pruned predictions ({mode} mode, slots still masked in the baseline), "
            f"mean over the steps from the pruning step on, per sample; non-negligible when >= {kl_min:g} for both "
            "dMLLM families; optionally larger than for an autoregressive model")
    return conds, ctx, crit


def _recovery_rows(d: Data, family: str, q: Mapping) -> pd.DataFrame:
    """Per (run, sample): mean value over the first ``early_steps`` from the pruning step and over the
    last ``late_window`` of the steps (runs whose pruning step falls before the late window)."""
    metric, mode = q.get("metric", "kl"), q.get("mode", "forced")
    k, lw = int(q.get("early_steps", 1)), float(q.get("late_window", 0.25))
    t = _per_sample_div(d, family, metric, mode)
    if t.empty:
        return pd.DataFrame(columns=["run_id", "sample_id", "early", "late"])
    late_start = t["n_steps"] - np.ceil(lw * t["n_steps"]).astype(int)
    t = t.assign(late_start=late_start)
    t = t[t["prune_step"] + k <= t["late_start"]]
    early = t[t["step"] < t["prune_step"] + k].groupby(["run_id", "sample_id"])["value"].mean()
    late = t[t["step"] >= t["late_start"]].groupby(["run_id", "sample_id"])["value"].mean()
    out = pd.concat({"early": early, "late": late}, axis=1).dropna().reset_index()
    return out


def _recovery_stat(d: Data, rows: pd.DataFrame) -> tuple[float, float, float, int]:
    if rows.empty:
        return float("nan"), float("nan"), float("nan"), 0
    est, lo, hi, n = d.boot.ratio(rows["late"], rows["early"], rows["sample_id"])
    return 1 - est, 1 - hi, 1 - lo, n


def check_recovery(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    m = float(q.get("min_recovery", 0.5))
    conds, ctx = [], []
    for key, want in (("from_scratch", True), ("ar_to_diffusion", False)):
        fam = _fam(d.cfg, key)
        rows = _recovery_rows(d, fam, q)
        conds.append(_cond(f"{fam}: recovery ({'recovers' if want else 'does not recover'})",
                           _recovery_stat(d, rows), m, "at_least" if want else "below"))
        if len(rows):
            ctx.append(f"{fam}: mean {q.get('metric', 'kl')} right after pruning {rows['early'].mean():.3f}, "
                       f"in the late window {rows['late'].mean():.3f} ({len(rows)} run-samples)")
    crit = (f"recovery = 1 - mean {q.get('metric', 'kl')} ({q.get('mode', 'forced')} mode) over the last "
            f"{float(q.get('late_window', 0.25)):g} of the steps / mean over the first {int(q.get('early_steps', 1))} "
            f"step(s) from the pruning step; recovers when >= {m:g}; supported when only from-scratch recovers")
    return conds, ctx, crit


def check_early_pruning_hurts(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    sched, s0 = q.get("schedule", "once"), q.get("start_step", 0)
    rets, drop = q.get("retentions"), float(q.get("min_drop", 0.05))
    conds, ctx = [], []
    for key in ("from_scratch", "ar_to_diffusion"):
        fam = _fam(d.cfg, key)
        p = d.prune(fam, schedules=[sched], start_step=s0, retentions=rets)
        conds.append(_cond(f"{fam}: accuracy difference after early pruning", _boot_pairs(d, p), -drop, "at_most"))
        late = d.prune(fam, schedules=["late"], retentions=rets)
        if len(late):
            ctx.append(f"{fam}: late-step pruning at the same retentions: mean difference {late['diff'].mean():+.3f}")
    crit = (f"accuracy difference pruned - baseline, schedule {sched!r} at step {s0}, pooled over methods, task types "
            f"and retentions {rets}; significant when <= -{drop:g} for both families")
    return conds, ctx, crit


def check_scratch_half_retention(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    fam = _fam(d.cfg, q.get("family", "from_scratch"))
    sched, s0, r = q.get("schedule", "once"), q.get("start_step", 0), float(q.get("retention", 0.5))
    minor, sig = float(q.get("minor_drop", 0.05)), float(q.get("significant_drop", 0.05))
    speed, min_sp = q.get("speed", "seconds"), float(q.get("min_speedup", 1.0))
    p = d.prune(fam, schedules=[sched], start_step=s0)
    half = p[np.isclose(p["retention"].astype(float), r)] if len(p) else p
    below = p[p["retention"].astype(float) < r - 1e-9] if len(p) else p
    conds = [
        _cond(f"{fam}: accuracy difference at retention {r:g}", _boot_pairs(d, half), -minor, "at_least"),
        _cond(f"{fam}: speedup (1/rel. {speed}) at retention {r:g}", _speedup(d, half, speed), min_sp, "above"),
        _cond(f"{fam}: accuracy difference below retention {r:g}", _boot_pairs(d, below), -sig, "at_most"),
    ]
    ctx = []
    other = "flops" if speed == "seconds" else "seconds"
    if len(half):
        ctx.append(f"speedup (1/rel. {other}) at retention {r:g}: {_speedup(d, half, other)[0]:.2f}")
    crit = (f"{fam}, schedule {sched!r} at step {s0}, pooled over methods: difference at retention {r:g} >= -{minor:g}, "
            f"speedup > {min_sp:g}, and difference below {r:g} <= -{sig:g}")
    return conds, ctx, crit


def check_ar2diff_degrades(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    fam = _fam(d.cfg, q.get("family", "ar_to_diffusion"))
    sched, s0 = q.get("schedule", "once"), q.get("start_step", 0)
    sev, max_sp, speed = float(q.get("severe_drop", 0.1)), float(q.get("max_speedup", 1.2)), q.get("speed", "seconds")
    p = d.prune(fam, schedules=[sched], start_step=s0)
    conds, ctx = [], []
    rets = sorted(p["retention"].astype(float).unique(), reverse=True) if len(p) else []
    for r in rets:
        pr = p[np.isclose(p["retention"].astype(float), r)]
        conds.append(_cond(f"{fam}: accuracy difference at retention {r:g}", _boot_pairs(d, pr), -sev, "at_most"))
        conds.append(_cond(f"{fam}: speedup (1/rel. {speed}) at retention {r:g}", _speedup(d, pr, speed), max_sp,
                           "at_most"))
    if not rets:
        conds = [Condition(f"{fam}: accuracy difference at every retention", -sev, "at_most"),
                 Condition(f"{fam}: speedup at every retention", max_sp, "at_most")]
    crit = (f"{fam}, schedule {sched!r} at step {s0}, pooled over methods: at every retention the difference is "
            f"<= -{sev:g} and the speedup (1/rel. {speed}) <= {max_sp:g}")
    return conds, ctx, crit


def check_layer_skip_promising(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    fam = _fam(d.cfg, q.get("family", "ar_to_diffusion"))
    tol, min_sp, speed = float(q.get("max_drop", 0.05)), float(q.get("min_speedup", 1.1)), q.get("speed", "flops")
    conds, ctx = [], []

    def configs(f: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        p = d.pairs
        if p.empty:
            return p, pd.DataFrame()
        p = p[(p["family"] == f) & (p["skip_n"].fillna(0) > 0) & (p["method"] == "none")]
        if p.empty:
            return p, pd.DataFrame()
        num, den = ("base_seconds", "seconds") if speed == "seconds" else ("base_flops", "flops")
        g = p.groupby(["skip_n", "skip_position"]).agg(diff=("diff", "mean"), num=(num, "sum"), den=(den, "sum"))
        g["speedup"] = g["num"] / g["den"]
        return p, g

    p, g = configs(fam)
    if len(g):
        fast = g[g["speedup"] >= min_sp]
        pick = fast.sort_values(["diff", "speedup"], ascending=False).index[0] if len(fast) else g["speedup"].idxmax()
        rows = p[(p["skip_n"] == pick[0]) & (p["skip_position"] == pick[1])]
        label = f"{int(pick[0])} {pick[1]} layer(s)"
        conds.append(_cond(f"{fam}: speedup (1/rel. {speed}) of {label}", _speedup(d, rows, speed), min_sp,
                           "at_least"))
        conds.append(_cond(f"{fam}: accuracy difference of {label}", _boot_pairs(d, rows), -tol, "at_least"))
        for (n, pos), r in g.iterrows():
            ctx.append(f"{fam}: skip {int(n)} {pos}: difference {r['diff']:+.3f}, speedup {r['speedup']:.2f}")
    else:
        conds = [Condition(f"{fam}: speedup of layer skipping", min_sp, "at_least"),
                 Condition(f"{fam}: accuracy difference of layer skipping", -tol, "at_least")]
    other = _fam(d.cfg, "from_scratch")
    _, g2 = configs(other)
    for (n, pos), r in g2.iterrows():
        ctx.append(f"{other}: skip {int(n)} {pos}: difference {r['diff']:+.3f}, speedup {r['speedup']:.2f}")
    crit = (f"{fam}: among layer-skip configurations with speedup (1/rel. {speed}) >= {min_sp:g}, the most accurate "
            f"loses at most {tol:g} accuracy")
    return conds, ctx, crit


def check_late_beats_early(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    fam = _fam(d.cfg, q.get("family", "from_scratch"))
    scheds, gain = list(q.get("schedules", ["late", "progressive"])), float(q.get("min_gain", 0.0))
    early = d.prune(fam, schedules=["once"], start_step=0)
    late = d.prune(fam, schedules=scheds)
    keys = ["model", "task", "method", "retention", "sample_id"]
    conds, ctx = [], []
    if len(early) and len(late):
        m = late.merge(early[keys + ["score"]].rename(columns={"score": "early_score"}), on=keys)
        m["gain"] = m["score"] - m["early_score"]
        conds.append(_cond(f"{fam}: accuracy of {'/'.join(scheds)} - early pruning", _boot_pairs(d, m, "gain"),
                           gain, "above"))
        for s, g in m.groupby("schedule"):
            ctx.append(f"{fam}: {s} - early: {g['gain'].mean():+.3f} over {g['sample_id'].nunique()} samples")
        other = _fam(d.cfg, "ar_to_diffusion")
        e2, l2 = d.prune(other, schedules=["once"], start_step=0), d.prune(other, schedules=scheds)
        if len(e2) and len(l2):
            m2 = l2.merge(e2[keys + ["score"]].rename(columns={"score": "early_score"}), on=keys)
            ctx.append(f"{other}: {'/'.join(scheds)} - early: {(m2['score'] - m2['early_score']).mean():+.3f}")
    else:
        conds.append(Condition(f"{fam}: accuracy of {'/'.join(scheds)} - early pruning", gain, "above"))
    crit = (f"{fam}: accuracy with schedule {' or '.join(scheds)} minus accuracy with pruning once at step 0, paired "
            f"per model, task, method, retention and sample; more effective when > {gain:g}")
    return conds, ctx, crit


def check_signals_reliable(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    from .figures import signal_correlations

    sigs, oracle = list(q.get("signals", ["importance", "answer_logit"])), q.get("oracle", "drop_one_kl")
    rho_min = float(q.get("rho_min", 0.3))
    corr = signal_correlations(d.res.traces, d.res.runs, sigs + [oracle], q.get("strategy", "baseline"))
    conds, ctx = [], []
    for s in sigs:
        c = corr[((corr["a"] == s) & (corr["b"] == oracle)) | ((corr["a"] == oracle) & (corr["b"] == s))] \
            if len(corr) else corr
        fams = sorted(c["family"].unique()) if len(c) else []
        for fam in fams:
            cf = c[c["family"] == fam]
            conds.append(_cond(f"{fam}: Spearman({s}, {oracle})", d.boot.mean(cf["rho"], cf["sample_id"]), rho_min,
                               "at_least"))
        if not fams:
            conds.append(Condition(f"Spearman({s}, {oracle})", rho_min, "at_least"))
    if len(corr):
        for (a, b), g in corr.groupby(["a", "b"]):
            if oracle not in (a, b):
                ctx.append(f"Spearman({a}, {b}) = {g['rho'].mean():.3f}")
    for s, methods in (q.get("versus_random") or {}).items():
        p = d.prune(methods=list(methods) + ["random"])
        keys = ["model", "task", "retention", "schedule", "prune_step", "sample_id"]
        a = p[p["method"].isin(methods)]
        r = p[p["method"] == "random"]
        stat = (np.nan, np.nan, np.nan, 0)
        if len(a) and len(r):
            m = a.merge(r[keys + ["score"]].rename(columns={"score": "random_score"}), on=keys)
            if len(m):
                m["gain"] = m["score"] - m["random_score"]
                stat = d.boot.mean(m["gain"], m["sample_id"])
        conds.append(_cond(f"pruning by {s} ({', '.join(methods)}) - random pruning", stat, 0.0, "above",
                           required=False, note="optional: needs pruning runs of these methods and of random"))
    crit = (f"Spearman correlation across visual tokens between each signal and the {oracle} oracle, per sample and step "
            f"(signals probe, {q.get('strategy', 'baseline')} runs), per family; reliable when >= {rho_min:g}; "
            "optionally, pruning by the signal beats random pruning")
    return conds, ctx, crit


def check_restoration_driven(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    fam = _fam(d.cfg, q.get("family", "from_scratch"))
    kl_min, m, tol = float(q.get("kl_min", 0.05)), float(q.get("min_recovery", 0.5)), float(q.get("max_drop", 0.05))
    rows = _recovery_rows(d, fam, q)
    early = d.boot.mean(rows["early"], rows["sample_id"]) if len(rows) else (np.nan, np.nan, np.nan, 0)
    ids = set(rows["run_id"]) if len(rows) else set()
    p = d.pairs[d.pairs["run_id"].isin(ids)] if len(d.pairs) else d.pairs
    conds = [
        _cond(f"{fam}: {q.get('metric', 'kl')} right after pruning (information lost)", early, kl_min, "at_least"),
        _cond(f"{fam}: recovery by the late steps", _recovery_stat(d, rows), m, "at_least"),
        _cond(f"{fam}: final accuracy difference of the same runs", _boot_pairs(d, p), -tol, "at_least"),
    ]
    crit = (f"{fam} recovery runs: the pruned tokens carried information ({q.get('metric', 'kl')} right after pruning "
            f">= {kl_min:g}), which the later steps restore (recovery >= {m:g}) so that the final accuracy drops at "
            f"most {tol:g}")
    return conds, [], crit


def check_not_measurable(d: Data, q: Mapping) -> tuple[list[Condition], list[str], str]:
    return [], [], str(q.get("reason", "not measurable from the result tables"))


CHECKS: dict[str, Callable[[Data, Mapping], tuple[list[Condition], list[str], str]]] = {
    "redundancy_scope": check_redundancy_scope,
    "information_loss": check_information_loss,
    "recovery": check_recovery,
    "early_pruning_hurts": check_early_pruning_hurts,
    "scratch_half_retention": check_scratch_half_retention,
    "ar2diff_degrades": check_ar2diff_degrades,
    "layer_skip_promising": check_layer_skip_promising,
    "late_beats_early": check_late_beats_early,
    "signals_reliable": check_signals_reliable,
    "restoration_driven": check_restoration_driven,
    "not_measurable": check_not_measurable,
}


# -- entry points ---------------------------------------------------------------------------------
def load_config(config: str | Path | Mapping | None = None) -> dict:
    """The criteria: a mapping, a YAML path, or ``conf/findings.yaml``."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config) if config is not None else DEFAULT_CONFIG
    if not path.is_file() and config is None:
        path = Path("conf/findings.yaml")
    return yaml.safe_load(path.read_text())


def evaluate(res: Results, summary: pd.DataFrame | None = None, config: str | Path | Mapping | None = None,
             only: Sequence[int] | None = None) -> list[Verdict]:
    """The verdict of every finding of ``config`` (``summary`` is accepted for symmetry and unused)."""
    cfg = load_config(config)
    d = Data(res, cfg)
    out = []
    for num, spec in sorted((cfg.get("findings") or {}).items(), key=lambda kv: int(kv[0])):
        num = int(num)
        if only is not None and num not in only:
            continue
        check = spec.get("check")
        if check not in CHECKS:
            raise ValueError(f"finding {num}: unknown check {check!r}; choose one of: {', '.join(CHECKS)}")
        conds, ctx, crit = CHECKS[check](d, spec.get("params") or {})
        verdict = combine(conds) if check != "not_measurable" else "not measured"
        out.append(Verdict(num, str(spec.get("claim", "")), str(spec.get("source", "")), check, verdict, crit,
                           conds, ctx))
    return out


def verdicts_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per condition (a finding without conditions gets one row)."""
    rows = []
    for v in verdicts:
        for c in v.conditions or [None]:
            rows.append({
                "finding": v.number, "verdict": v.verdict, "claim": v.claim,
                "condition": None if c is None else c.name,
                "estimate": np.nan if c is None else c.estimate, "ci_low": np.nan if c is None else c.low,
                "ci_high": np.nan if c is None else c.high, "n": 0 if c is None else c.n,
                "test": None if c is None else c.test_text, "outcome": None if c is None else c.outcome_text,
            })
    return pd.DataFrame(rows)


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def render_markdown(verdicts: Sequence[Verdict], source: str = "", level: float = 0.95) -> str:
    """FINDINGS.md text: a summary table, then per finding its criterion and condition numbers."""
    pct = f"{level * 100:g}%"
    lines = ["# Findings", ""]
    if source:
        lines += [f"Results: `{source}`. Criteria: `conf/findings.yaml` (thresholds, bootstrap settings).", ""]
    lines += [
        "Each claim of the study (paper.md section 5) is reduced to conditions: an estimate with a "
        f"{pct} bootstrap CI over samples against a threshold. A finding is *contradicted* if any condition is "
        "false, *not measured* if a required one has no data, *inconclusive* if a CI straddles its threshold, "
        "else *supported*.", "",
        "| # | claim | verdict | conditions (true / false / inconclusive / no data) |",
        "|---|---|---|---|",
    ]
    for v in verdicts:
        cnt = {k: sum(c.outcome_text == k for c in v.conditions) for k in ("true", "false", "inconclusive", "no data")}
        lines.append(f"| {v.number} | {v.claim} | **{v.verdict}** | "
                     f"{cnt['true']} / {cnt['false']} / {cnt['inconclusive']} / {cnt['no data']} |")
    for v in verdicts:
        lines += ["", f"## {v.number}. {v.claim}", "", f"Verdict: **{v.verdict}** (source {v.source}; check "
                  f"`{v.check}`)", "", f"Criterion: {v.criterion.rstrip('.')}.", ""]
        if v.conditions:
            lines += [f"| condition | estimate | {pct} CI | samples | test | outcome |", "|---|---|---|---|---|---|"]
            for c in v.conditions:
                req = "" if c.required else " (optional)"
                lines.append(f"| {c.name}{req} | {_fmt(c.estimate)} | [{_fmt(c.low)}, {_fmt(c.high)}] | {c.n} | "
                             f"{c.test_text} | {c.outcome_text} |")
        if v.context:
            lines += ["", "Context:", ""] + [f"- {x}" for x in v.context]
    return "\n".join(lines) + "\n"


def write_findings(verdicts: Sequence[Verdict], path: str | Path, source: str = "") -> Path:
    """Write :func:`render_markdown` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(verdicts, source))
    return path
