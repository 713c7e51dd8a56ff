"""The study's figures F1-F9: one function per figure, DataFrames in, a matplotlib Figure out.

Every function takes the tables of :mod:`redundancy.results` (``runs``, ``traces``, ``outcomes``) or
the per-run summary of :func:`analysis.load.summary`, and colours methods, families, skip positions
and schedules from the one module-level :data:`PALETTE`. Data series are drawn with ``gid="series"``
(reference lines with ``gid="baseline"`` / ``"pareto"``) so tests and notebooks can count them.

Run ``python -m analysis.figures [results/<sweep>]`` to write every figure whose data is present as
PNG and PDF into ``<dir>/figures/`` plus ``<dir>/FINDINGS.md``.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .load import FAMILIES, load, pareto_front, run_info, summary as load_summary

__all__ = [
    "PALETTE", "color", "TASK_TYPES",
    "f1_attention", "attention_maps",
    "f2_retention", "f3_table", "f3_latex", "f3_method_task",
    "f4_information_loss", "recovery_curves",
    "f5_schedules", "f6_layer_skip", "f7_pareto", "pareto_points",
    "f8_signal_agreement", "signal_correlations", "signal_matrix",
    "f9_importance_grid", "f9_animation", "importance_frames", "choose_samples",
    "available", "draw_all", "main",
]

# -- palette ---------------------------------------------------------------------------------------
PALETTE: dict[str, dict[str, Any]] = {
    "method": {
        "baseline": "#000000", "none": "#000000", "blind": "#7f7f7f",
        "fastv": "#1f77b4", "redvtp": "#17becf", "answer_logit": "#d62728", "sparsevlm": "#9467bd",
        "divprune": "#2ca02c", "tome": "#ff7f0e", "trim": "#8c564b", "random": "#bcbd22", "vtw": "#e377c2",
        "skip": "#393b79",
    },
    "family": {"from_scratch": "#1b9e77", "ar_to_diffusion": "#d95f02", "autoregressive": "#7570b3",
               "unknown": "#999999"},
    "position": {"early": "#4daf4a", "middle": "#377eb8", "late": "#e41a1c"},
    "schedule": {"once": "-", "late": "-", "from": "-.", "every_step": "-.", "progressive": ":"},
    "mode": {"free": "-", "forced": "--"},
    "signal": {"importance": "attention importance", "answer_logit": "answer logit", "drop_one_kl": "drop-one KL"},
    "sequential": "viridis",
    "diverging": "vlag",
}
FALLBACK = "#999999"
#: task name -> task type shown in facet titles
TASK_TYPES: dict[str, str] = {"shapes_short": "short answer", "shapes_long": "long answer"}
TASK_ORDER: tuple[str, ...] = ("shapes_short", "shapes_long")
METHOD_ORDER = tuple(PALETTE["method"])


def color(kind: str, key: Any) -> Any:
    """The palette entry of ``key`` in ``kind`` (``method``, ``family``, ``position``...); grey if unknown."""
    k = str(key)
    if kind == "method" and k.endswith("+skip"):
        k = k[:-5]
    return PALETTE[kind].get(k, FALLBACK)


def _task_label(task: Any) -> str:
    t = str(task)
    return f"{t} ({TASK_TYPES[t]})" if t in TASK_TYPES else t


def _order(values: Iterable[Any], order: Sequence[Any]) -> list:
    vals = list(dict.fromkeys(v for v in values if v is not None and v is not pd.NA))
    pos = {v: i for i, v in enumerate(order)}
    return sorted(vals, key=lambda v: (pos.get(v, len(pos)), str(v)))


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(family, task) facets present in ``df``, families then tasks in the study's order."""
    if df.empty:
        return []
    pairs = df[["family", "task"]].drop_duplicates().astype(str).itertuples(index=False, name=None)
    fam = {f: i for i, f in enumerate(FAMILIES)}
    tsk = {t: i for i, t in enumerate(TASK_ORDER)}
    return sorted(pairs, key=lambda p: (fam.get(p[0], 99), p[0], tsk.get(p[1], 99), p[1]))


def _grid(nrows: int, ncols: int, w: float = 3.3, h: float = 2.7, **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(max(1, nrows), max(1, ncols), figsize=(w * max(1, ncols) + 1.2, h * max(1, nrows) + 0.6),
                             squeeze=False, layout="constrained", **kw)
    return fig, axes


def _empty(message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def _with_info(df: pd.DataFrame, runs: pd.DataFrame, traces: pd.DataFrame | None = None) -> pd.DataFrame:
    info = run_info(runs, traces)
    cols = [c for c in info.columns if c not in df.columns]
    return df.join(info[cols], on="run_id")


def _legend(fig: Figure, handles: list, title: str | None = None, ncol: int | None = None) -> None:
    uniq: dict[str, Any] = {}
    for h in handles:
        lab = h.get_label()
        if lab and not lab.startswith("_") and lab not in uniq:
            uniq[lab] = h
    if uniq:
        fig.legend(list(uniq.values()), list(uniq), loc="outside lower center", title=title,
                   ncol=ncol or min(6, len(uniq)), fontsize="small", frameon=False)


def _baseline_rows(summary: pd.DataFrame, runs_of: pd.DataFrame | None = None) -> pd.DataFrame:
    """Baseline runs: those the runs of ``runs_of`` were compared with when known, else every baseline."""
    b = summary[summary["strategy"] == "baseline"]
    if runs_of is not None and "baseline_run_id" in runs_of.columns:
        ids = set(runs_of["baseline_run_id"].dropna())
        if ids and b["run_id"].isin(ids).any():
            return b[b["run_id"].isin(ids)]
    return b


def _mean_by(df: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    d = df.copy()
    for k in keys:
        if d[k].dtype == object or str(d[k].dtype).startswith(("string", "str")):
            d[k] = d[k].astype(object).where(d[k].notna(), "")
    return d.groupby(keys, dropna=False)[cols].mean().reset_index()


# -- F1 attention --------------------------------------------------------------------------------
def attention_maps(traces: pd.DataFrame, runs: pd.DataFrame, metric: str = "visual_share",
                   query_group: str = "masked", strategy: str | None = "baseline") -> pd.DataFrame:
    """Mean ``metric`` per (family, task, layer, step) over runs and samples (head-averaged rows only).

    ``strategy``: keep the runs of that strategy (``baseline``) when there are any, else every run.
    """
    t = traces[(traces["metric"] == metric) & (traces["query_group"] == query_group) & traces["head"].isna()]
    if t.empty:
        return pd.DataFrame(columns=["family", "task", "layer", "step", "value"])
    t = _with_info(t, runs)
    if strategy is not None and (t["strategy"] == strategy).any():
        t = t[t["strategy"] == strategy]
    t = t.dropna(subset=["layer", "step"])
    out = t.groupby(["family", "task", "layer", "step"])["value"].mean().reset_index()
    out["layer"] = out["layer"].astype(int)
    out["step"] = out["step"].astype(int)
    return out


def f1_attention(traces: pd.DataFrame, runs: pd.DataFrame, metric: str = "visual_share",
                 query_group: str = "masked", strategy: str | None = "baseline",
                 vmin: float | None = None, vmax: float | None = None) -> Figure:
    """F1: ``metric`` (visual attention share) as layer x step heatmaps, rows = family, columns = task
    type, one shared colour scale and colour bar."""
    m = attention_maps(traces, runs, metric, query_group, strategy)
    if m.empty:
        return _empty(f"no {metric} traces for query group {query_group!r}")
    fams = _order(m["family"], FAMILIES)
    tasks = _order(m["task"], TASK_ORDER)
    lo = float(m["value"].min()) if vmin is None else vmin
    hi = float(m["value"].max()) if vmax is None else vmax
    if hi <= lo:
        hi = lo + 1e-9
    fig, axes = _grid(len(fams), len(tasks), w=3.4, h=2.6)
    im = None
    for i, fam in enumerate(fams):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            d = m[(m["family"] == fam) & (m["task"] == task)]
            ax.set_title(f"{fam} · {_task_label(task)}", fontsize="small")
            if d.empty:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            grid = d.pivot(index="layer", columns="step", values="value").sort_index().sort_index(axis=1)
            steps, layers = grid.columns.to_numpy(), grid.index.to_numpy()
            im = ax.imshow(grid.to_numpy(dtype=float), origin="lower", aspect="auto", vmin=lo, vmax=hi,
                           cmap=PALETTE["sequential"], interpolation="nearest",
                           extent=(steps.min() - 0.5, steps.max() + 0.5, layers.min() - 0.5, layers.max() + 0.5))
            ax.set_xlabel("denoising step")
            ax.set_ylabel("layer")
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label=f"{metric.replace('_', ' ')} ({query_group} queries)",
                     shrink=0.9)
    fig.suptitle(f"F1: {metric.replace('_', ' ')} to visual tokens by layer and step")
    return fig


# -- F2 accuracy and speedup against retention ---------------------------------------------------
_ROWS_F2 = (("accuracy", "accuracy"), ("speedup_flops", "speedup (1 / rel. FLOPs)"),
            ("speedup_seconds", "speedup (1 / rel. seconds)"))


def _early(summary: pd.DataFrame, schedule: str = "once", start_step: int | None = 0) -> pd.DataFrame:
    p = summary[(summary["method"] != "none") & (summary["skip_n"].fillna(0) == 0)]
    p = p[p["schedule"].astype(object) == schedule]
    if start_step is not None:
        p = p[p["prune_step"].astype("Float64").fillna(-1) == start_step]
    return p


def f2_retention(summary: pd.DataFrame, schedule: str = "once", start_step: int | None = 0,
                 methods: Sequence[str] | None = None) -> Figure:
    """F2: accuracy, FLOPs speedup and wall-clock speedup against retention for early pruning
    (``schedule`` at ``start_step``), one line per method, columns = (family, task); the baseline is a
    dashed black line."""
    p = _early(summary, schedule, start_step)
    if methods is not None:
        p = p[p["method"].isin(methods)]
    if p.empty:
        return _empty(f"no pruning runs with schedule {schedule!r} at step {start_step}")
    p = p.assign(rel_flops=p["rel_flops"].astype(float), rel_seconds=p["rel_seconds"].astype(float))
    agg = _mean_by(p, ["family", "task", "method", "retention"], ["accuracy", "rel_flops", "rel_seconds"])
    agg["speedup_flops"] = 1 / agg["rel_flops"]
    agg["speedup_seconds"] = 1 / agg["rel_seconds"]
    base = _mean_by(_baseline_rows(summary, p), ["family", "task"], ["accuracy"])
    panels = _panels(agg)
    fig, axes = _grid(len(_ROWS_F2), len(panels), w=3.0, h=2.4)
    handles = []
    for j, (fam, task) in enumerate(panels):
        d = agg[(agg["family"] == fam) & (agg["task"] == task)]
        for i, (col, label) in enumerate(_ROWS_F2):
            ax = axes[i, j]
            for meth in _order(d["method"], METHOD_ORDER):
                dm = d[d["method"] == meth].sort_values("retention")
                (ln,) = ax.plot(dm["retention"], dm[col], marker="o", color=color("method", meth), label=meth,
                                gid="series")
                handles.append(ln)
            if i == 0:
                b = base[(base["family"] == fam) & (base["task"] == task)]
                if len(b):
                    handles.append(ax.axhline(float(b["accuracy"].iloc[0]), color="k", ls="--", lw=1,
                                              label="baseline", gid="baseline"))
            elif i > 0:
                ax.axhline(1.0, color="k", ls="--", lw=1, gid="baseline")
            ax.set_xlabel("retention ratio")
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{fam} · {_task_label(task)}", fontsize="small")
    _legend(fig, handles)
    fig.suptitle(f"F2: early-step pruning (schedule {schedule!r}, step {start_step}) against retention")
    return fig


# -- F3 method x task table ----------------------------------------------------------------------
def f3_table(summary: pd.DataFrame, retention: float = 0.5, schedule: str = "once", start_step: int | None = 0,
             value: str = "accuracy", baseline: bool = True) -> pd.DataFrame:
    """F3: ``value`` (mean over seeds) per method (rows) and (family, task) (columns) at ``retention``;
    the unpruned baseline is the first row."""
    p = _early(summary, schedule, start_step)
    p = p[np.isclose(p["retention"].astype(float), retention)]
    parts = [p]
    if baseline:
        b = _baseline_rows(summary, p).assign(method="baseline")
        parts.insert(0, b)
    d = pd.concat(parts, ignore_index=True)
    if d.empty or p.empty:
        return pd.DataFrame()
    t = d.pivot_table(index="method", columns=["family", "task"], values=value, aggfunc="mean")
    t = t.reindex(_order(t.index, METHOD_ORDER))
    cols = [c for c in _panels(pd.DataFrame(list(t.columns), columns=["family", "task"])) if c in t.columns]
    t = t[cols]
    t.columns.names = ["family", "task"]
    t.index.name = "method"
    return t


def f3_latex(table: pd.DataFrame, caption: str | None = None, label: str = "tab:method-task",
             precision: int = 3) -> str:
    """The F3 table as LaTeX (booktabs rules), via ``DataFrame.style.to_latex``."""
    t = table.copy()
    esc = [None if n is None else str(n).replace("_", r"\_") for n in t.index.names]
    t.index = t.index.set_names(esc)
    t.columns = t.columns.set_names([None if n is None else str(n).replace("_", r"\_") for n in t.columns.names])
    sty = t.style.format(precision=precision, na_rep="--")
    sty = sty.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return sty.to_latex(caption=caption, label=label, hrules=True, multicol_align="c", position_float="centering")


def f3_method_task(summary: pd.DataFrame, retention: float = 0.5, schedule: str = "once",
                   start_step: int | None = 0, value: str = "accuracy") -> Figure:
    """F3 drawn as an annotated heatmap of :func:`f3_table`."""
    import seaborn as sns

    t = f3_table(summary, retention, schedule, start_step, value)
    if t.empty:
        return _empty(f"no pruning runs at retention {retention}")
    flat = t.copy()
    flat.columns = [f"{f}\n{_task_label(k)}" for f, k in t.columns]
    fig, ax = plt.subplots(figsize=(1.9 * flat.shape[1] + 2.5, 0.45 * flat.shape[0] + 1.8), layout="constrained")
    sns.heatmap(flat.astype(float), annot=True, fmt=".2f", cmap=PALETTE["sequential"], vmin=0, vmax=1,
                cbar_kws={"label": value}, ax=ax, linewidths=0.5)
    ax.set_xlabel("family · task")
    ax.set_ylabel("method")
    ax.set_title(f"F3: {value} at retention {retention} (schedule {schedule!r}, step {start_step})")
    return fig


# -- F4 information loss and recovery ------------------------------------------------------------
def recovery_curves(traces: pd.DataFrame, runs: pd.DataFrame, metrics: Sequence[str] = ("kl", "top1_agreement"),
                    method: str | None = None) -> pd.DataFrame:
    """Mean value per (family, task, prune_step, n_steps, mode, metric, step) of the pruned runs' divergence
    traces, from the pruning step on."""
    t = traces[traces["metric"].isin(metrics) & traces["step"].notna()]
    cols = ["family", "task", "prune_step", "n_steps", "mode", "metric", "step", "value"]
    if t.empty:
        return pd.DataFrame(columns=cols)
    t = _with_info(t, runs)
    t = t[t["method"] != "none"]
    if method is not None:
        t = t[t["method"] == method]
    t = t[t["prune_step"].notna() & (t["step"] >= t["prune_step"])]
    if t.empty:
        return pd.DataFrame(columns=cols)
    out = t.groupby(["family", "task", "prune_step", "n_steps", "mode", "metric", "step"])["value"].mean().reset_index()
    for c in ("prune_step", "n_steps", "step"):
        out[c] = out[c].astype(int)
    return out


def f4_information_loss(traces: pd.DataFrame, runs: pd.DataFrame, metrics: Sequence[str] = ("kl", "top1_agreement"),
                        modes: Sequence[str] = ("free", "forced"), method: str | None = None) -> Figure:
    """F4: KL to the baseline and top-1 agreement over steps after pruning at step s; rows = metric,
    columns = (family, task); colour = pruning step s (sequential), line style = mode."""
    c = recovery_curves(traces, runs, metrics, method)
    c = c[c["mode"].isin(modes)]
    if c.empty:
        return _empty("no information-loss traces of pruned runs")
    panels = _panels(c)
    mets = [m for m in metrics if (c["metric"] == m).any()]
    fig, axes = _grid(len(mets), len(panels), w=3.2, h=2.5)
    cmap = plt.get_cmap(PALETTE["sequential"])
    handles = []
    for j, (fam, task) in enumerate(panels):
        d = c[(c["family"] == fam) & (c["task"] == task)]
        n_steps = max(int(d["n_steps"].max()), 1)
        for i, met in enumerate(mets):
            ax = axes[i, j]
            dm = d[d["metric"] == met]
            for s in sorted(dm["prune_step"].unique()):
                col = cmap(0.9 * s / max(n_steps - 1, 1))
                for mode in modes:
                    ds = dm[(dm["prune_step"] == s) & (dm["mode"] == mode)].sort_values("step")
                    if ds.empty:
                        continue
                    ax.plot(ds["step"], ds["value"], color=col, ls=PALETTE["mode"].get(mode, "-"), marker=".",
                            gid="series", label=f"_s{s}-{mode}")
                ax.axvline(s, color=col, lw=0.6, ls=":", gid="prune_step")
                handles.append(Line2D([], [], color=col, label=f"pruned at step {s}"))
            ax.set_xlabel("denoising step")
            ax.set_ylabel({"kl": "KL(baseline || pruned)", "top1_agreement": "top-1 agreement"}.get(met, met))
            if i == 0:
                ax.set_title(f"{fam} · {_task_label(task)}", fontsize="small")
    handles += [Line2D([], [], color="k", ls=PALETTE["mode"].get(m, "-"), label=f"{m} mode") for m in modes]
    _legend(fig, handles)
    fig.suptitle("F4: information loss after pruning and its recovery over the remaining steps")
    return fig


# -- F5 pruning start step and progressive schedules ---------------------------------------------
def f5_schedules(summary: pd.DataFrame, retentions: Sequence[float] | None = None,
                 methods: Sequence[str] | None = None) -> Figure:
    """F5: accuracy against the pruning start (fraction of the denoising steps) for single-decision
    schedules (``once``/``late``: solid; ``from``/``every_step``: dash-dot), progressive schedules as
    dotted horizontal lines, the baseline dashed black; rows = retention, columns = (family, task)."""
    p = summary[(summary["method"] != "none") & (summary["skip_n"].fillna(0) == 0)].copy()
    if methods is not None:
        p = p[p["method"].isin(methods)]
    if retentions is not None:
        p = p[np.isin(p["retention"].astype(float).round(6), np.round(list(retentions), 6))]
    if p.empty:
        return _empty("no pruning runs")
    p["schedule"] = p["schedule"].astype(object).fillna("once")
    p["kind"] = p["schedule"].map(lambda s: "progressive" if s == "progressive" else
                                  ("repeated" if s in ("from", "every_step") else "single"))
    agg = _mean_by(p, ["family", "task", "retention", "method", "kind", "start_fraction"], ["accuracy"])
    base = _mean_by(_baseline_rows(summary, p), ["family", "task"], ["accuracy"])
    rets = sorted(agg["retention"].unique(), reverse=True)
    panels = _panels(agg)
    fig, axes = _grid(len(rets), len(panels), w=3.1, h=2.4)
    handles = []
    styles = {"single": "-", "repeated": "-.", "progressive": ":"}
    for i, r in enumerate(rets):
        for j, (fam, task) in enumerate(panels):
            ax = axes[i, j]
            d = agg[(agg["retention"] == r) & (agg["family"] == fam) & (agg["task"] == task)]
            if d.empty:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            for meth in _order(d["method"], METHOD_ORDER):
                for kind in ("single", "repeated", "progressive"):
                    dk = d[(d["method"] == meth) & (d["kind"] == kind)].sort_values("start_fraction")
                    if dk.empty:
                        continue
                    if kind == "progressive":
                        ln = ax.axhline(float(dk["accuracy"].mean()), color=color("method", meth), ls=":", lw=1.6,
                                        gid="series", label=meth)
                    else:
                        (ln,) = ax.plot(dk["start_fraction"], dk["accuracy"], color=color("method", meth),
                                        ls=styles[kind], marker="o", gid="series", label=meth)
                    handles.append(ln)
            b = base[(base["family"] == fam) & (base["task"] == task)]
            if len(b):
                ax.axhline(float(b["accuracy"].iloc[0]), color="k", ls="--", lw=1, gid="baseline", label="baseline")
            ax.set_xlim(-0.05, 1.0)
            ax.set_xlabel("pruning start (fraction of steps)")
            ax.set_ylabel(f"accuracy (retention {r:g})")
            if i == 0:
                ax.set_title(f"{fam} · {_task_label(task)}", fontsize="small")
    handles.append(Line2D([], [], color="k", ls="--", label="baseline"))
    handles += [Line2D([], [], color="grey", ls=s, label=lab) for lab, s in
                (("single decision", "-"), ("every step from start", "-."), ("progressive", ":"))]
    _legend(fig, handles)
    fig.suptitle("F5: accuracy against pruning start step and progressive schedules")
    return fig


# -- F6 layer skipping ---------------------------------------------------------------------------
def f6_layer_skip(summary: pd.DataFrame, show_speedup: bool = True) -> Figure:
    """F6: accuracy (and FLOPs speedup) against the number of skipped layers, one line per depth
    position, columns = (family, task); 0 skipped layers = the baseline."""
    s = summary[(summary["skip_n"].fillna(0) > 0) & (summary["method"] == "none")]
    if s.empty:
        return _empty("no layer-skipping runs")
    s = s.assign(speedup_flops=1 / s["rel_flops"].astype(float))
    agg = _mean_by(s, ["family", "task", "skip_position", "skip_n"], ["accuracy", "speedup_flops"])
    base = _mean_by(_baseline_rows(summary, s), ["family", "task"], ["accuracy"])
    rows = [("accuracy", "accuracy")] + ([("speedup_flops", "speedup (1 / rel. FLOPs)")] if show_speedup else [])
    panels = _panels(agg)
    fig, axes = _grid(len(rows), len(panels), w=3.1, h=2.5)
    handles = []
    for j, (fam, task) in enumerate(panels):
        d = agg[(agg["family"] == fam) & (agg["task"] == task)]
        b = base[(base["family"] == fam) & (base["task"] == task)]
        for i, (col, lab) in enumerate(rows):
            ax = axes[i, j]
            for pos in _order(d["skip_position"], tuple(PALETTE["position"])):
                dp = d[d["skip_position"] == pos].sort_values("skip_n")
                x, y = list(dp["skip_n"].astype(int)), list(dp[col])
                if len(b):
                    x, y = [0] + x, [float(b["accuracy"].iloc[0]) if col == "accuracy" else 1.0] + y
                (ln,) = ax.plot(x, y, marker="o", color=color("position", pos), label=f"{pos} layers", gid="series")
                handles.append(ln)
            ax.set_xlabel("layers skipped")
            ax.set_ylabel(lab)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if i == 0:
                ax.set_title(f"{fam} · {_task_label(task)}", fontsize="small")
    _legend(fig, handles, title="depth position")
    fig.suptitle("F6: layer skipping")
    return fig


# -- F7 Pareto front -----------------------------------------------------------------------------
def pareto_points(summary: pd.DataFrame, cost: str = "rel_flops") -> pd.DataFrame:
    """One point per (family, task, configuration), mean over seeds, with ``on_front`` marking the
    Pareto front (higher accuracy at lower ``cost``) of every configuration of the panel."""
    keys = ["family", "task", "strategy", "method", "schedule", "retention", "prune_step", "skip_n", "skip_position"]
    d = summary.copy()
    d[cost] = d[cost].astype(float)
    agg = _mean_by(d, keys, ["accuracy", cost])
    agg["on_front"] = False
    for (fam, task), g in agg.groupby(["family", "task"]):
        idx = g.index.to_numpy()[pareto_front(g[cost], g["accuracy"])]
        agg.loc[idx, "on_front"] = True
    return agg


def f7_pareto(summary: pd.DataFrame, cost: str = "rel_flops") -> Figure:
    """F7: accuracy against relative FLOPs (``cost``) of every strategy, with the Pareto front over all
    of them; one scatter series per strategy, columns = (family, task)."""
    if summary.empty:
        return _empty("no runs")
    pts = pareto_points(summary, cost)
    pts = pts[pts[cost].notna()]
    if pts.empty:
        return _empty(f"no runs with {cost}")
    panels = _panels(pts)
    fig, axes = _grid(1, len(panels), w=3.6, h=3.2)
    markers = {"baseline": "*", "blind": "X", "skip": "s"}
    handles = []
    for j, (fam, task) in enumerate(panels):
        ax = axes[0, j]
        d = pts[(pts["family"] == fam) & (pts["task"] == task)]
        for strat in _order(d["strategy"], METHOD_ORDER):
            ds = d[d["strategy"] == strat]
            sc = ax.scatter(ds[cost], ds["accuracy"], color=color("method", strat), label=strat,
                            marker=markers.get(strat, "o"), s=60 if strat == "baseline" else 30, alpha=0.85,
                            edgecolors="none", gid="series", zorder=3)
            handles.append(sc)
        f = d[d["on_front"]].sort_values(cost)
        (ln,) = ax.plot(f[cost], f["accuracy"], color="k", lw=1, drawstyle="steps-post", gid="pareto",
                        label="Pareto front", zorder=2)
        handles.append(ln)
        ax.set_xlabel("relative FLOPs" if cost == "rel_flops" else cost.replace("_", " "))
        ax.set_ylabel("accuracy")
        ax.set_title(f"{fam} · {_task_label(task)}", fontsize="small")
    _legend(fig, handles)
    fig.suptitle("F7: accuracy against compute, Pareto front over all strategies")
    return fig


# -- F8 agreement between pruning signals --------------------------------------------------------
SIGNALS = ("importance", "answer_logit", "drop_one_kl")


def _token_signals(traces: pd.DataFrame, signals: Sequence[str]) -> pd.DataFrame:
    """Per (run, sample, step, token): one column per signal (mean over layers)."""
    t = traces[traces["metric"].isin(signals) & traces["token"].notna() & traces["step"].notna()]
    if t.empty:
        return pd.DataFrame()
    w = t.pivot_table(index=["run_id", "sample_id", "step", "token"], columns="metric", values="value",
                      aggfunc="mean")
    return w.reset_index()


def signal_correlations(traces: pd.DataFrame, runs: pd.DataFrame, signals: Sequence[str] = SIGNALS,
                        strategy: str | None = "baseline", min_tokens: int = 3) -> pd.DataFrame:
    """Spearman correlation of every pair of signals across the visual tokens of each
    (run, sample, step) where both are recorded. Columns: run_id, family, task, sample_id, step,
    a, b, rho, n_tokens."""
    cols = ["run_id", "family", "task", "sample_id", "step", "a", "b", "rho", "n_tokens"]
    w = _token_signals(traces, signals)
    if w.empty:
        return pd.DataFrame(columns=cols)
    w = _with_info(w, runs)
    if strategy is not None and (w["strategy"] == strategy).any():
        w = w[w["strategy"] == strategy]
    present = [s for s in signals if s in w.columns]
    rows = []
    for (rid, sid, step), g in w.groupby(["run_id", "sample_id", "step"], sort=False):
        fam, task = g["family"].iloc[0], g["task"].iloc[0]
        ranks = g[present].rank()
        for ia, a in enumerate(present):
            for b in present[ia + 1:]:
                ok = ranks[a].notna() & ranks[b].notna()
                n = int(ok.sum())
                if n < min_tokens:
                    continue
                ra, rb = g.loc[ok, a].rank(), g.loc[ok, b].rank()
                rho = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else np.nan
                rows.append((rid, fam, task, sid, int(step), a, b, rho, n))
    return pd.DataFrame(rows, columns=cols)


def signal_matrix(corr: pd.DataFrame, signals: Sequence[str] = SIGNALS) -> pd.DataFrame:
    """Symmetric matrix of the mean Spearman correlation between signals (1 on the diagonal)."""
    present = [s for s in signals if s in set(corr["a"]) | set(corr["b"])]
    m = pd.DataFrame(np.eye(len(present)), index=present, columns=present)
    for (a, b), g in corr.groupby(["a", "b"]):
        v = float(g["rho"].mean())
        m.loc[a, b] = m.loc[b, a] = v
    return m


def f8_signal_agreement(traces: pd.DataFrame, runs: pd.DataFrame, signals: Sequence[str] = SIGNALS,
                        strategy: str | None = "baseline") -> Figure:
    """F8: mean Spearman correlation between pruning signals (attention importance, answer logit,
    drop-one oracle KL) per sample and step, one annotated heatmap per (family, task)."""
    import seaborn as sns

    corr = signal_correlations(traces, runs, signals, strategy)
    if corr.empty:
        return _empty("no pair of per-token pruning signals recorded on the same tokens")
    panels = _panels(corr)
    fig, axes = _grid(1, len(panels), w=3.6, h=3.3)
    for j, (fam, task) in enumerate(panels):
        ax = axes[0, j]
        g = corr[(corr["family"] == fam) & (corr["task"] == task)]
        m = signal_matrix(g, signals)
        m = m.rename(index=PALETTE["signal"], columns=PALETTE["signal"])
        sns.heatmap(m, vmin=-1, vmax=1, cmap=PALETTE["diverging"], annot=True, fmt=".2f", square=True, ax=ax,
                    cbar=j == len(panels) - 1, cbar_kws={"label": "Spearman rho"}, yticklabels=j == 0)
        n = g[["run_id", "sample_id", "step"]].drop_duplicates().shape[0]
        ax.set_title(f"{fam} · {_task_label(task)}\n({n} sample-steps)", fontsize="small")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("F8: agreement between pruning signals")
    return fig


# -- F9 importance over the image, step by step --------------------------------------------------
def _image(image_ref: str):
    from redundancy.tasks import make_sample

    task, split, index = str(image_ref).rsplit("/", 2)
    return make_sample(task, split, int(index)).image


def choose_samples(traces: pd.DataFrame, runs: pd.DataFrame, n: int = 2, signal: str = "importance",
                   prefer: str = "pruned") -> list[tuple[str, str]]:
    """``n`` (run_id, sample_id) pairs with per-token ``signal`` traces, from a pruned run when
    ``prefer='pruned'`` (its kept tokens are outlined) else from a baseline."""
    t = traces[(traces["metric"] == signal) & traces["token"].notna()]
    if t.empty:
        return []
    info = run_info(runs)
    cand = t[["run_id", "sample_id"]].drop_duplicates()
    cand = cand.join(info[["method"]], on="run_id")
    cand["rank"] = (cand["method"] == "none").astype(int) if prefer == "pruned" else (cand["method"] != "none").astype(int)
    cand = cand.sort_values(["rank", "run_id", "sample_id"], kind="stable")
    first = cand["run_id"].iloc[0]
    pick = cand[cand["run_id"] == first]
    return list(pick[["run_id", "sample_id"]].head(n).itertuples(index=False, name=None))


def importance_frames(traces: pd.DataFrame, outcomes: pd.DataFrame, run_id: str, sample_id: str,
                      signal: str = "importance", layer: int | None = None) -> dict:
    """Per step: the ``grid_h x grid_w`` signal map (NaN where a token was not recorded), the kept
    token set (tokens recorded at that step, when fewer than the grid), and the answer as unmasked
    after that step (from the ``committed`` rows; ``_`` for still-masked slots).

    Returns dict(image_ref, grid=(h, w), answer, reference, steps=[dict(step, map, kept, text)]).
    """
    o = outcomes[(outcomes["run_id"] == run_id) & (outcomes["sample_id"] == sample_id)]
    if o.empty:
        raise ValueError(f"no outcome for run {run_id!r} sample {sample_id!r}")
    o = o.iloc[0]
    h, w = int(o["grid_h"]), int(o["grid_w"])
    tr = traces[(traces["run_id"] == run_id) & (traces["sample_id"] == sample_id)]
    sig = tr[(tr["metric"] == signal) & tr["token"].notna() & tr["step"].notna()]
    if layer is not None:
        sig = sig[sig["layer"] == layer]
    elif sig["layer"].notna().any():
        sig = sig[sig["layer"] == sig["layer"].dropna().min()]
    com = tr[(tr["metric"] == "committed") & tr["token"].notna()]
    commit = {int(k): int(v) for k, v in zip(com["token"], com["step"])}
    answer = "" if pd.isna(o["answer"]) else str(o["answer"])
    words = answer.split()
    n_slots = max([len(words)] + [k + 1 for k in commit])
    steps = sorted(set(int(s) for s in sig["step"].unique()) | set(commit.values()))
    frames = []
    for s in steps:
        ds = sig[sig["step"] == s]
        if ds.empty and frames:
            grid, kept = frames[-1]["map"], frames[-1]["kept"]
        else:
            grid = np.full(h * w, np.nan)
            toks = ds["token"].astype(int).to_numpy()
            ok = (toks >= 0) & (toks < h * w)
            grid[toks[ok]] = ds["value"].to_numpy(dtype=float)[ok]
            grid = grid.reshape(h, w)
            kept = set(toks[ok].tolist()) if 0 < ok.sum() < h * w else None
        if commit:
            shown = []
            for slot in range(n_slots):
                if commit.get(slot, 10**9) <= s:
                    if slot < len(words):
                        shown.append(words[slot])
                else:
                    shown.append("_")
            text = " ".join(shown)
        else:
            text = answer if s == steps[-1] else ""
        frames.append({"step": s, "map": grid, "kept": kept, "text": text})
    return {"image_ref": o["image_ref"], "grid": (h, w), "answer": answer,
            "reference": None if pd.isna(o["reference"]) else str(o["reference"]), "steps": frames}


def _draw_frame(ax, img, frame: dict, grid: tuple[int, int], vmin: float, vmax: float, title: str) -> None:
    h, w = grid
    size = img.size[0] if hasattr(img, "size") else 72
    ax.imshow(img, extent=(0, size, size, 0))
    m = frame["map"]
    ax.imshow(np.ma.masked_invalid(m), extent=(0, size, size, 0), cmap="inferno", alpha=0.55, vmin=vmin, vmax=vmax,
              interpolation="nearest")
    if frame["kept"] is not None:
        ph, pw = size / h, size / w
        for t in frame["kept"]:
            r, c = divmod(int(t), w)
            ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor="cyan", lw=0.8, gid="kept"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize="small")
    ax.set_xlabel("\n".join(textwrap.wrap(frame["text"], 26)) or " ", fontsize=6, family="monospace")


def _pick_steps(frames: list[dict], max_steps: int | None) -> list[dict]:
    if max_steps is None or len(frames) <= max_steps:
        return frames
    idx = np.unique(np.linspace(0, len(frames) - 1, max_steps).round().astype(int))
    return [frames[i] for i in idx]


def f9_importance_grid(traces: pd.DataFrame, outcomes: pd.DataFrame, runs: pd.DataFrame | None = None,
                       samples: Sequence[tuple[str, str]] | None = None, signal: str = "importance",
                       max_steps: int | None = 8, layer: int | None = None) -> Figure:
    """F9: for each chosen (run_id, sample_id) a row of frames: the visual-token ``signal`` upsampled
    from the token grid onto the 72x72 image at each denoising step, tokens kept by the policy
    outlined (when known), and the answer as it is unmasked below each frame."""
    if samples is None:
        if runs is None:
            raise ValueError("give samples=[(run_id, sample_id), ...] or runs to choose them")
        samples = choose_samples(traces, runs, signal=signal)
    if not samples:
        return _empty(f"no per-token {signal} traces")
    data = [importance_frames(traces, outcomes, r, s, signal, layer) for r, s in samples]
    ncols = max(len(_pick_steps(d["steps"], max_steps)) for d in data)
    fig, axes = plt.subplots(len(data), ncols, figsize=(1.9 * ncols + 1.0, 2.9 * len(data)), squeeze=False,
                             layout="constrained")
    for i, ((rid, sid), d) in enumerate(zip(samples, data)):
        img = _image(d["image_ref"])
        vals = np.concatenate([f["map"].ravel() for f in d["steps"]]) if d["steps"] else np.array([0.0])
        vals = vals[~np.isnan(vals)]
        vmin, vmax = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
        frames = _pick_steps(d["steps"], max_steps)
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(frames):
                ax.axis("off")
                continue
            _draw_frame(ax, img, frames[j], d["grid"], vmin, vmax, f"{sid.split('/', 1)[-1]} step {frames[j]['step']}")
        axes[i, 0].set_ylabel(f"run {rid[:8]}", fontsize="small")
    fig.suptitle(f"F9: {PALETTE['signal'].get(signal, signal)} on the image per step (kept tokens outlined)")
    return fig


def f9_animation(traces: pd.DataFrame, outcomes: pd.DataFrame, run_id: str, sample_id: str, path: str | Path,
                 signal: str = "importance", fps: float = 2.0, layer: int | None = None) -> Path:
    """F9 as an animated GIF: one frame per denoising step (image, signal overlay, kept tokens, answer)."""
    from PIL import Image

    d = importance_frames(traces, outcomes, run_id, sample_id, signal, layer)
    img = _image(d["image_ref"])
    vals = np.concatenate([f["map"].ravel() for f in d["steps"]]) if d["steps"] else np.array([0.0])
    vals = vals[~np.isnan(vals)]
    vmin, vmax = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
    frames = []
    for f in d["steps"] or [{"step": 0, "map": np.full(d["grid"], np.nan), "kept": None, "text": d["answer"]}]:
        fig, ax = plt.subplots(figsize=(3.0, 3.4), dpi=90)
        _draw_frame(ax, img, f, d["grid"], vmin, vmax, f"{sample_id} step {f['step']}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        buf.seek(0)
        frames.append(Image.open(buf).convert("RGB"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


# -- command line ---------------------------------------------------------------------------------
SOURCES = {
    "F1": "attention", "F2": "pruning", "F3": "pruning", "F4": "recovery", "F5": "recovery",
    "F6": "layerskip", "F7": "pruning", "F8": "paper (probe=signals)", "F9": "paper (probe=signals)",
}


def _save(fig: Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def available(res: Any, summary: pd.DataFrame) -> dict[str, str | None]:
    """Per figure: None when its data is present, else why it is missing."""
    tr, runs = res.traces, res.runs
    has = set(tr["metric"].unique()) if len(tr) else set()
    s = summary
    why: dict[str, str | None] = {}
    why["F1"] = None if "visual_share" in has else "no visual attention traces"
    early = _early(s, "once", 0) if len(s) else s
    why["F2"] = why["F3"] = None if len(early) else "no early-step pruning runs"
    why["F4"] = None if ({"kl", "top1_agreement"} & has and not recovery_curves(tr, runs).empty) else \
        "no information-loss traces of pruned runs"
    pr = s[s["method"] != "none"] if len(s) else s
    why["F5"] = None if len(pr) and (pr["start_fraction"].nunique() > 1 or
                                     (pr["schedule"].astype(object) == "progressive").any()) else \
        "no pruning runs at several start steps or with a progressive schedule"
    why["F6"] = None if len(s) and (s["skip_n"].fillna(0) > 0).any() else "no layer-skipping runs"
    why["F7"] = None if len(s) and s["strategy"].nunique() > 1 and s["rel_flops"].notna().any() else \
        "fewer than two strategies with relative FLOPs"
    ok8 = len(set(SIGNALS) & has) >= 2 and len(signal_correlations(tr, runs)) > 0
    why["F8"] = None if ok8 else "no two per-token pruning signals on the same tokens"
    why["F9"] = None if any(s_ in has for s_ in SIGNALS) else "no per-token importance traces"
    return why


def draw_all(path: str | Path, out: str | Path | None = None, findings_config: str | Path | None = None,
             echo: Callable[[str], Any] = print) -> dict[str, list[Path]]:
    """Draw every figure whose data is present under ``path`` into ``out`` (default ``<path>/figures``)
    and write ``<path>/FINDINGS.md``; return {figure: written paths}. Missing data prints a line
    naming the sweep that produces it."""
    from .findings import evaluate, write_findings

    path = Path(path)
    out = Path(out) if out is not None else path / "figures"
    res = load(path)
    if res.runs.empty:
        echo(f"no complete runs under {path}; run a sweep first, e.g. python -m experiments.run +sweep=paper")
        return {}
    summ = load_summary(path, res)
    tr, runs, outc = res.traces, res.runs, res.outcomes
    written: dict[str, list[Path]] = {}
    why = available(res, summ)
    for fig_id, reason in why.items():
        if reason is not None:
            echo(f"{fig_id} skipped: {reason}; the {SOURCES[fig_id]} sweep produces it "
                 f"(python -m experiments.run +sweep={SOURCES[fig_id].split()[0]})")
    if why["F1"] is None:
        written["F1"] = _save(f1_attention(tr, runs), out, "F1_attention")
    if why["F2"] is None:
        written["F2"] = _save(f2_retention(summ), out, "F2_retention")
        rets = sorted(_early(summ, "once", 0)["retention"].dropna().unique())
        r = 0.5 if any(np.isclose(rets, 0.5)) else rets[len(rets) // 2]
        table = f3_table(summ, retention=float(r))
        written["F3"] = _save(f3_method_task(summ, retention=float(r)), out, "F3_method_task")
        (out / "F3_method_task.tex").write_text(f3_latex(table, caption=f"Accuracy at retention {r:g}"))
        table.to_csv(out / "F3_method_task.csv")
        written["F3"] += [out / "F3_method_task.tex", out / "F3_method_task.csv"]
    if why["F4"] is None:
        written["F4"] = _save(f4_information_loss(tr, runs), out, "F4_information_loss")
    if why["F5"] is None:
        written["F5"] = _save(f5_schedules(summ), out, "F5_schedules")
    if why["F6"] is None:
        written["F6"] = _save(f6_layer_skip(summ), out, "F6_layer_skip")
    if why["F7"] is None:
        written["F7"] = _save(f7_pareto(summ), out, "F7_pareto")
    if why["F8"] is None:
        written["F8"] = _save(f8_signal_agreement(tr, runs), out, "F8_signal_agreement")
    if why["F9"] is None:
        sig = next(s for s in SIGNALS if s in set(tr["metric"].unique()))
        chosen = choose_samples(tr, runs, signal=sig)
        written["F9"] = _save(f9_importance_grid(tr, outc, runs, chosen, signal=sig), out, "F9_importance")
        written["F9"].append(f9_animation(tr, outc, chosen[0][0], chosen[0][1], out / "F9_importance.gif", signal=sig))
    verdicts = evaluate(res, summ, config=findings_config)
    written["FINDINGS"] = [write_findings(verdicts, path / "FINDINGS.md", source=str(path))]
    for k, v in written.items():
        echo(f"{k}: " + ", ".join(str(p) for p in v))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.figures [results/<sweep>] [--out DIR] [--findings conf/findings.yaml]``."""
    ap = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="results/paper", help="results folder (default results/paper)")
    ap.add_argument("--out", default=None, help="figure folder (default <results>/figures)")
    ap.add_argument("--findings", default=None, help="criteria YAML (default conf/findings.yaml)")
    a = ap.parse_args(argv)
    matplotlib.use("Agg")
    if not Path(a.results).exists():
        print(f"no results folder {a.results}; run a sweep first, e.g. python -m experiments.run +sweep=paper",
              file=sys.stderr)
        return 1
    draw_all(a.results, a.out, a.findings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
