"""Loading result tables for analysis: results folders, per-run identity, per-run summary, per-sample pairs.

The label columns of the runs table (``label.*``) carry the config defaults even where they mean
nothing (a baseline has ``label.ratio = 0.5`` and ``label.schedule = once``), so everything here
derives what a run *did* from its identity columns (``policy.prune.decisions``, ``policy.skip.layers``,
``policy.blind``) and uses the labels only for what the identity does not keep (the schedule name
and the skip position).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from redundancy.results import Results, load_results

__all__ = [
    "HEADLINE", "FAMILIES", "load_results", "load", "results_dirs", "summary", "family_of", "headline_metric",
    "run_info", "enrich_summary", "samples", "paired", "parse_json", "bootstrap_mean", "pareto_front",
    "summarize_results", "summary_from_results",
]

from redundancy.results.summary import HEADLINE, summarize_results  # noqa: E402  (pandas only, no torch)
#: order of the model families in every figure
FAMILIES: tuple[str, ...] = ("from_scratch", "ar_to_diffusion", "autoregressive")

# real dMLLM names -> family (checked in order; the first substring that matches wins)
_NAME_FAMILIES: tuple[tuple[str, str], ...] = (
    ("toy-scratch", "from_scratch"), ("random-llama", "from_scratch"),
    ("toy-ar2diff", "ar_to_diffusion"), ("random-qwen2", "ar_to_diffusion"),
    ("toy-ar", "autoregressive"),
    ("lavida-dream", "ar_to_diffusion"), ("dream", "ar_to_diffusion"), ("dimple", "ar_to_diffusion"),
    ("lavida-llada", "from_scratch"), ("llada", "from_scratch"), ("mmada", "from_scratch"),
    ("llava", "autoregressive"), ("qwen", "autoregressive"),
)


def family_of(model_name: Any) -> str:
    """``from_scratch`` | ``ar_to_diffusion`` | ``autoregressive`` | ``unknown`` for a model name.

    Zoo names (``toy-scratch@1``...) and the real dMLLMs of the study (LLaDA-V, LaViDa-Dream, Dimple,
    MMaDA) are known by name; another zoo folder is read from its ``config.json``; no model is loaded.
    """
    if model_name is None or (isinstance(model_name, float) and math.isnan(model_name)) or model_name is pd.NA:
        return "unknown"
    name = str(model_name).lower()
    for pattern, fam in _NAME_FAMILIES:
        if name.startswith(pattern) or pattern in name.split("/")[-1]:
            return fam
    try:
        from redundancy.models.registry import WEIGHTS_DIR

        cfg = WEIGHTS_DIR / str(model_name) / "config.json"
        if cfg.is_file():
            return str(json.loads(cfg.read_text()).get("family", "unknown"))
    except Exception:  # noqa: BLE001 - a name we cannot resolve is simply unknown
        pass
    return "unknown"


from redundancy.results.summary import headline_metric  # noqa: E402


# -- folders --------------------------------------------------------------------------------------
def results_dirs(path: str | Path | Iterable[str | Path]) -> list[Path]:
    """The results folders under ``path``: itself if it has ``runs/``, else its sub-folders that have one.

    So ``results/paper`` and ``results`` (holding ``pruning/``, ``attention/``...) both work.
    """
    if not isinstance(path, (str, Path)):
        return [d for p in path for d in results_dirs(p)]
    p = Path(path)
    if (p / "runs").is_dir():
        return [p]
    subs = sorted(d for d in p.iterdir() if (d / "runs").is_dir()) if p.is_dir() else []
    return subs or [p]


def load(path: str | Path | Iterable[str | Path]) -> Results:
    """``load_results`` over every results folder under ``path`` (see :func:`results_dirs`)."""
    return load_results([str(d) for d in results_dirs(path)])


# -- identity of a run ----------------------------------------------------------------------------
def parse_json(value: Any) -> Any:
    """A JSON string column value to Python (NA / None / '' -> None)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        if not value:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _get(row: pd.Series, key: str) -> Any:
    v = row.get(key, None)
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _n_steps(row: pd.Series) -> int | None:
    from redundancy.tasks import ANSWER_LENGTH

    L = ANSWER_LENGTH.get(str(_get(row, "task.name")))
    steps = _get(row, "sampler.steps")
    if steps is not None:
        return int(steps)
    if L is None:
        return None
    if _get(row, "sampler.kind") == "autoregressive":
        return int(L)
    tps = _get(row, "sampler.tokens_per_step") or 1
    return max(1, -(-int(L) // int(tps)))


def run_info(runs: pd.DataFrame, traces: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run (index ``run_id``) with what the run did, derived from its identity columns.

    Columns: ``model``, ``family``, ``task``, ``headline`` (metric name), ``strategy`` (``baseline`` |
    ``blind`` | ``skip`` | a pruning method | ``<method>+skip``), ``method`` (pruning method or
    ``none``), ``schedule`` (``once``/``late``/``progressive``/... or NA without pruning),
    ``retention`` (final kept fraction: 1 without pruning, 0 for blind and VTW), ``prune_layer``,
    ``decisions`` (list of [step, ratio]), ``prune_step`` (first decision step), ``n_steps``,
    ``start_fraction`` (prune_step / n_steps), ``skip_layers`` (list), ``skip_n`` (0 without
    skipping), ``skip_position``, ``probe_attention``, ``probe_signals``, ``probe_recovery``.
    ``n_steps`` comes from the sampler config, or from the traces' steps when given.
    """
    rows = []
    max_step = {}
    if traces is not None and len(traces):
        st = traces.dropna(subset=["step"])
        max_step = st.groupby("run_id")["step"].max().to_dict()
    for _, r in runs.iterrows():
        rid = r["run_id"]
        model = _get(r, "model.name")
        task = _get(r, "task.name")
        method = _get(r, "policy.prune.method")
        decisions = parse_json(_get(r, "policy.prune.decisions")) or []
        skip_layers = parse_json(_get(r, "policy.skip.layers")) or []
        blind = bool(_get(r, "policy.blind") or False)
        n_steps = _n_steps(r)
        if n_steps is None and rid in max_step:
            n_steps = int(max_step[rid]) + 1
        # VTW stores the decision steps only (it keeps no visual token whatever the ratio)
        steps_ = [d[0] if isinstance(d, (list, tuple)) else d for d in decisions]
        ratios = [d[1] for d in decisions if isinstance(d, (list, tuple)) and len(d) > 1]
        if blind:
            strategy, retention = "blind", 0.0
        elif method:
            strategy = method + ("+skip" if skip_layers else "")
            retention = 0.0 if method == "vtw" else (float(min(ratios)) if ratios else _label_ratio(r))
        elif skip_layers:
            strategy, retention = "skip", 1.0
        else:
            strategy, retention = "baseline", 1.0
        prune_step = int(steps_[0]) if steps_ else None
        schedule = _get(r, "label.schedule") if method else None
        info_loss = parse_json(_get(r, "probe.information_loss")) or []
        rows.append({
            "run_id": rid, "model": model, "family": family_of(model), "task": task,
            "headline": headline_metric(task), "strategy": strategy, "method": method or "none",
            "schedule": schedule, "retention": retention,
            "prune_layer": _get(r, "policy.prune.layer") if method else None,
            "decisions": decisions if method else None,
            "prune_step": prune_step, "n_steps": n_steps,
            "start_fraction": (prune_step / n_steps) if (prune_step is not None and n_steps) else np.nan,
            "skip_layers": skip_layers or None, "skip_n": len(skip_layers),
            "skip_position": (_get(r, "label.skip_position") or "middle") if skip_layers else None,
            "probe_attention": bool(_get(r, "probe.attention") or False),
            "probe_signals": bool(_get(r, "probe.signals") or False),
            "probe_recovery": bool(info_loss),
        })
    cols = ["run_id", "model", "family", "task", "headline", "strategy", "method", "schedule", "retention",
            "prune_layer", "decisions", "prune_step", "n_steps", "start_fraction", "skip_layers", "skip_n",
            "skip_position", "probe_attention", "probe_signals", "probe_recovery"]
    out = pd.DataFrame(rows, columns=cols)
    for c in ("prune_layer", "prune_step", "n_steps", "skip_n"):
        out[c] = out[c].astype("Int64")
    for c in ("retention", "start_fraction"):
        out[c] = out[c].astype(float)
    return out.set_index("run_id")


def _label_ratio(r: pd.Series) -> float:
    v = _get(r, "label.ratio")
    return float(v) if v is not None else np.nan


# -- summary --------------------------------------------------------------------------------------
_INFO_COLS = ["strategy", "method", "schedule", "retention", "prune_layer", "prune_step", "n_steps",
              "start_fraction", "skip_n", "skip_position", "decisions", "skip_layers"]


def summary(path: str | Path | Iterable[str | Path], results: Results | None = None) -> pd.DataFrame:
    """One row per run: ``summary.parquet`` of each folder (computed by ``redundancy.results.summary.summarize``
    when missing or stale), with the identity-derived columns of :func:`run_info` replacing the
    label defaults (``method``, ``schedule``, ``retention``, ``skip_n``, ``skip_position``) and added
    (``strategy``, ``prune_step``, ``start_fraction``...); ``speedup_flops`` = 1/rel_flops and
    ``speedup_seconds`` = 1/rel_seconds.
    """
    frames = []
    for d in results_dirs(path):
        f = d / "summary.parquet"
        ids = {p.stem for p in (d / "runs").glob("*.parquet")} if (d / "runs").is_dir() else set()
        df = None
        if f.is_file():
            df = pd.read_parquet(f)
            if set(df["run_id"].astype(str)) != ids:
                df = None  # stale: runs were added since it was written
        if df is None and ids:
            from redundancy.results.summary import summarize

            df = summarize(d)
        if df is not None and len(df):
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True).drop_duplicates("run_id")
    res = results if results is not None else load(path)
    return enrich_summary(df, res.runs, res.outcomes)


def enrich_summary(df: pd.DataFrame, runs: pd.DataFrame, outcomes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Replace the label columns of a ``summarize`` frame by what the runs' identities say; with the
    outcomes, add ``baseline_run_id``, ``baseline_accuracy`` and ``delta`` (accuracy - baseline's)."""
    info = run_info(runs)
    df = df.copy()
    df["run_id"] = df["run_id"].astype(str)
    df = df.drop(columns=[c for c in _INFO_COLS + ["layer", "baseline_run_id", "baseline_accuracy", "delta"]
                          if c in df.columns])
    df = df.join(info[_INFO_COLS], on="run_id")
    fam = df["model"].map(family_of)
    df["family"] = np.where(fam != "unknown", fam, df.get("family", fam))
    df["speedup_flops"] = 1.0 / df["rel_flops"].astype(float)
    df["speedup_seconds"] = 1.0 / df["rel_seconds"].astype(float)
    if outcomes is not None and len(outcomes):
        base = outcomes.dropna(subset=["baseline_run_id"]).groupby("run_id")["baseline_run_id"].first()
        df["baseline_run_id"] = df["run_id"].map(base).astype(object)
        acc = df.set_index("run_id")["accuracy"]
        df["baseline_accuracy"] = df["baseline_run_id"].map(acc).astype(float)
        df.loc[df["strategy"] == "baseline", "baseline_accuracy"] = df.loc[df["strategy"] == "baseline", "accuracy"]
        df["delta"] = df["accuracy"] - df["baseline_accuracy"]
    return df


# -- per-sample tables ----------------------------------------------------------------------------
def samples(res: Results) -> pd.DataFrame:
    """Outcomes joined with :func:`run_info`, with ``score`` = the task's headline metric."""
    info = run_info(res.runs)
    out = res.outcomes.join(info, on="run_id")
    score = np.full(len(out), np.nan)
    for metric in out["headline"].dropna().unique():
        if metric in out.columns:
            m = (out["headline"] == metric).to_numpy()
            score[m] = out.loc[m, metric].to_numpy(dtype=float, na_value=np.nan)
    out["score"] = score
    return out


def paired(res: Results) -> pd.DataFrame:
    """Per sample of every run that has a baseline: its score next to the baseline's on the same sample.

    Adds ``base_score``, ``diff`` (score - base_score), ``base_flops``, ``base_seconds``.
    Runs whose baseline is not loaded are left out.
    """
    s = samples(res)
    base = s[["run_id", "sample_id", "score", "flops", "seconds"]].rename(
        columns={"run_id": "baseline_run_id", "score": "base_score", "flops": "base_flops", "seconds": "base_seconds"})
    p = s[s["baseline_run_id"].notna()].merge(base, on=["baseline_run_id", "sample_id"], how="inner")
    p["diff"] = p["score"] - p["base_score"]
    return p


# -- statistics -----------------------------------------------------------------------------------
def bootstrap_mean(values: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                   clusters: Any = None) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean (resampling ``clusters`` if given)."""
    v = np.asarray(values, dtype=float)
    keep = ~np.isnan(v)
    v = v[keep]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    a = (1 - level) / 2
    if clusters is None:
        idx = rng.integers(0, len(v), size=(n_boot, len(v)))
        means = v[idx].mean(1)
    else:
        cl = np.asarray(clusters)[keep]
        codes, uniq = pd.factorize(cl)
        sums = np.bincount(codes, weights=v)
        cnts = np.bincount(codes).astype(float)
        pick = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
        means = sums[pick].sum(1) / cnts[pick].sum(1)
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def pareto_front(cost: Any, value: Any) -> np.ndarray:
    """Indices of the points not dominated (lower cost and higher value), sorted by cost."""
    c = np.asarray(cost, dtype=float)
    v = np.asarray(value, dtype=float)
    ok = np.flatnonzero(~(np.isnan(c) | np.isnan(v)))
    order = ok[np.lexsort((-v[ok], c[ok]))]
    front, best = [], -np.inf
    for i in order:
        if v[i] > best:
            front.append(i)
            best = v[i]
    return np.asarray(front, dtype=int)


def summary_from_results(res: Results) -> pd.DataFrame:
    """:func:`summary` of tables already loaded (computed with :func:`summarize_results`, no file, no torch)."""
    df = summarize_results(res)
    return enrich_summary(df, res.runs, res.outcomes) if len(df) else df
