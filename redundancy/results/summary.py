"""The per-run summary of a results folder (``summary.parquet``): pandas only, no model needed."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from .store import Results, load_results, write_table

#: the metric reported as accuracy per task
HEADLINE: dict[str, str] = {"shapes_short": "exact_match", "shapes_long": "object_recall"}

SUMMARY_COLUMNS = ("model", "task", "policy", "schedule", "retention", "layer", "skip_n", "accuracy", "ci_low",
                   "ci_high", "n", "rel_flops", "rel_seconds", "baseline_agreement")


def headline_metric(task: object) -> str:
    """The metric reported as accuracy for a task (``exact_match`` for unknown tasks)."""
    return HEADLINE.get(str(task), "exact_match")


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (seeded)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarize_results(res: Results) -> pd.DataFrame:
    """One row per run: labels, accuracy with n and bootstrap CI, FLOPs and time relative to the
    run's unpruned baseline (1 for a baseline, NaN when that baseline is not loaded), and the share
    of samples whose final answer equals the baseline's."""
    if res.runs.empty:
        return pd.DataFrame()
    runs = res.runs.set_index("run_id")
    outcomes = res.outcomes
    rows = []
    for rid, g in outcomes.groupby("run_id", sort=False):
        r = runs.loc[rid]
        task = r.get("task.name")
        label = r.get("label.headline")  # runs that name their headline (lmms-eval tasks) use it
        metric = label if isinstance(label, str) and label else headline_metric(task)
        acc = g[metric].to_numpy(dtype=float) if metric in g else np.full(len(g), np.nan)
        lo, hi = bootstrap_ci(acc)
        base_id = g["baseline_run_id"].dropna().unique()
        rel_flops = rel_time = float("nan")
        if len(base_id) and (outcomes["run_id"] == base_id[0]).any():
            b = outcomes[outcomes["run_id"] == base_id[0]]
            rel_flops = g["flops"].sum() / b["flops"].sum()
            rel_time = g["seconds"].sum() / b["seconds"].sum()
        elif not len(base_id):
            rel_flops = rel_time = 1.0
        rows.append({
            "run_id": rid, "model": r.get("model.name"), "family": r.get("label.family", "unknown"), "task": task,
            "policy": r.get("label.policy"), "method": r.get("label.method"), "schedule": r.get("label.schedule"),
            "retention": r.get("label.ratio"), "layer": r.get("label.layer"),
            "skip_n": r.get("label.skip_n"), "skip_position": r.get("label.skip_position"),
            "metric": metric, "accuracy": float(acc.mean()), "n": len(acc), "ci_low": lo, "ci_high": hi,
            "rel_flops": rel_flops, "rel_seconds": rel_time,
            "baseline_agreement": float(g["baseline_agreement"].mean()) if "baseline_agreement" in g else float("nan"),
        })
    return pd.DataFrame(rows)


def summarize(root: str | PathLike) -> pd.DataFrame:
    """:func:`summarize_results` of a results folder."""
    return summarize_results(load_results(root))


def write_summary(root: str | PathLike, echo: bool = True) -> pd.DataFrame:
    """Write ``summary.parquet`` of a results folder (atomically) and print it."""
    df = summarize(root)
    if df.empty:
        return df
    write_table(df, Path(root) / "summary.parquet")
    if echo:
        with pd.option_context("display.width", 220, "display.max_rows", 2000, "display.float_format", "{:.3f}".format):
            print(df[list(SUMMARY_COLUMNS)].to_string(index=False))
    return df
