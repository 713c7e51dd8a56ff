"""``python -m experiments.run task=lmms task.name=<task>``: an lmms-eval task run in-process by the
Hydra job, with this run's model, sampler, policy and probes, written as the usual three tables.

The run builds :class:`~redundancy.lmms.model.DMLLMRedundancy` from the composed config (the same
cached model a sweep uses), hands the live instance to ``lmms_eval.evaluator.simple_evaluate`` and
turns what comes back into the tables of ``docs/results.md``:

- ``outcomes``: one row per document, ``sample_id`` ``<task>/<split>/<doc_id>``; the answer, the
  target, the question type when the document has one, every numeric per-document metric lmms-eval
  logged (a mapping-valued metric gives one column per numeric field, ``<metric>.<field>``) and the
  model's cost counters, visual tokens kept and agreement with the unpruned baseline;
- ``traces``: the probes' rows, plus one row per aggregate lmms-eval metric (``sample_id`` = the
  task, ``mode`` = ``aggregate``), since scores such as MME's are defined only over the whole task;
- ``runs``: the identity (``task.kind: lmms``), labels (``label.headline`` is the reported metric)
  and versions, ``version.lmms_eval`` included.

With no ``task.include_path`` the synthetic tasks (``shapes_short``, ``shapes_long``, group
``dmllm_shapes``) are exported once to ``<results_dir>/lmms_tasks`` and read from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import INSTALL_HINT
from .settings import BridgeSettings

TASK_KIND = "lmms"
#: keys of an lmms-eval logged sample that are not metrics
_SAMPLE_KEYS = frozenset({"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "token_counts",
                          "doc_hash", "input_media"})
#: outcome columns a metric must not overwrite (it is written as ``lmms.<name>`` instead)
_RESERVED = frozenset({"run_id", "sample_id", "answer", "reference", "qtype", "baseline_agreement", "n_visual_kept",
                       "tokens_executed", "flops", "seconds", "peak_memory_mb", "baseline_run_id", "image_ref",
                       "grid_h", "grid_w"})


def is_lmms(cfg: Any) -> bool:
    """Whether a config's task is an lmms-eval task (``task.kind: lmms``)."""
    task = cfg.get("task") if hasattr(cfg, "get") else None
    return bool(task) and task.get("kind", "shapes") == TASK_KIND


@dataclass
class LmmsPlan:
    """Everything an lmms run needs, validated before any evaluation."""

    config: dict
    identity: dict
    run_id: str
    baseline_run_id: str
    task: str
    include_path: str | None
    limit: int | None
    settings: BridgeSettings


def _policy_identity(pc: Mapping[str, Any]) -> dict | None:
    """What the policy does, independent of any task's step count (that varies per lmms task)."""
    if pc.get("blind"):
        return {"blind": True}
    prune, skip = dict(pc.get("prune") or {}), dict(pc.get("skip") or {})
    out: dict[str, Any] = {}
    if prune.get("method", "none") != "none":
        out["prune"] = prune
    if any(skip.get(k) is not None for k in ("layers", "n", "fraction")):
        out["skip"] = skip
    return out or None


def limit_of(c: Mapping[str, Any]) -> int | None:
    """Documents to evaluate: ``task.n_samples``, else the ``samples[size]`` preset of the task, else all."""
    t = c["task"]
    if t.get("n_samples"):
        n = int(t["n_samples"])
        if n < 1:
            raise ValueError(f"task.n_samples must be >= 1, got {n}")
        return n
    size = c.get("size", "small")
    preset = (c.get("samples") or {}).get(size) or {}
    return int(preset[t["name"]]) if t["name"] in preset else None


def plan_lmms(cfg: Any) -> LmmsPlan:
    """Validate an lmms config and derive its identity (raises ValueError naming any bad value)."""
    from ..config import to_plain
    from ..experiment import build_policy, get_model
    from ..results import run_id
    from ..sampling import make_sampler

    c = to_plain(cfg)
    t = c["task"]
    if not t.get("name"):
        raise ValueError("task.name must name an lmms-eval task (e.g. shapes_short, mme_local, chartqa)")
    kind = t.get("answer_type")
    gen = c["model"].get("generation") or {}
    if kind is not None and kind not in gen:
        raise ValueError(f"task.answer_type {kind!r} has no model.generation entry for model {c['model']['name']!r}; "
                         f"it has: {', '.join(sorted(gen)) or 'none'}")
    include = t.get("include_path")
    if include is not None and not Path(include).is_dir():
        raise ValueError(f"task.include_path {include!r} is not a directory (write one with "
                         "python -m redundancy.lmms.export --out DIR)")
    sc = dict(c["sampler"])
    skind = sc.pop("kind", "diffusion")
    if skind == "autoregressive":
        sc = {}
    make_sampler("diffusion" if skind == "native" else skind, **sc)
    policy = build_policy(c["policy"])
    if c["policy"].get("blind") and policy is not None:
        raise ValueError("policy.blind withdraws every visual token; it cannot be combined with prune or skip")
    get_model(c["model"])
    limit = limit_of(c)
    model_id = {k: c["model"].get(k) for k in ("name", "checkpoint", "dtype")}
    for k in ("options", "generation"):  # adapter options; the per-task table that sets answer lengths
        if c["model"].get(k):
            model_id[k] = c["model"][k]
    task_id = {"kind": TASK_KIND, "name": t["name"], "limit": limit, "answer_type": kind}
    if include is not None:
        task_id["include_path"] = str(Path(include).resolve())
    ident = {
        "model": model_id,
        "task": task_id,
        "sampler": {"kind": skind, **sc},
        "policy": _policy_identity(c["policy"]),
        "probe": c.get("probe"),
        "batch_size": c.get("batch_size", 16),
    }
    base = {**ident, "policy": None}
    return LmmsPlan(c, ident, run_id(ident), run_id(base), t["name"], include, limit, BridgeSettings(answer_type=kind))


def default_include_path(c: Mapping[str, Any], task: str) -> str | None:
    """The exported shapes tasks under ``<results_dir>/lmms_tasks`` (written on first use) when
    ``task`` is one of them; None for any other task (lmms-eval's built-ins)."""
    from .export import SHAPES_GROUP, SHAPES_TASKS, export_shapes

    if task not in (*SHAPES_TASKS, SHAPES_GROUP):
        return None
    root = Path(c.get("results_dir", "results")) / "lmms_tasks"
    if not all((root / "shapes" / f"{t}.yaml").is_file() for t in SHAPES_TASKS) or \
            not (root / "shapes" / f"_{SHAPES_GROUP}.yaml").is_file():
        export_shapes(root)
    return str(root.resolve())


def task_manager(include: str | None, task: str):
    """A TaskManager that knows ``task`` (only the include path when it has it: indexing the
    built-ins takes seconds), or ValueError listing what the include path offers."""
    from lmms_eval.tasks import TaskManager

    if include is not None:
        tm = TaskManager("WARNING", include_path=include, include_defaults=False)
        if task in tm.all_tasks:
            return tm
    tm = TaskManager("WARNING", include_path=include)
    if task not in tm.all_tasks:
        where = ""
        if include:
            local = sorted(TaskManager("WARNING", include_path=include, include_defaults=False).all_tasks)
            where = f"; {include} has: {', '.join(local) or 'nothing'}"
        raise ValueError(f"unknown lmms-eval task {task!r}{where} (lmms-eval tasks list shows the built-ins)")
    return tm


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " | ".join(str(v) for v in value)
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        import numpy as np

        if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    return None


def sample_metrics(sample: Mapping[str, Any]) -> dict[str, float]:
    """The numeric per-document metrics of an lmms-eval logged sample (mappings flattened one level)."""
    out: dict[str, float] = {}
    for k, v in sample.items():
        if k in _SAMPLE_KEYS:
            continue
        name = f"lmms.{k}" if k in _RESERVED else k
        x = _number(v)
        if x is not None:
            out[name] = x
        elif isinstance(v, Mapping):
            for f, fv in v.items():
                fx = _number(fv)
                if fx is not None:
                    out[f"{name}.{f}"] = fx
    return out


def aggregate_rows(results: Mapping[str, Any]) -> list[dict]:
    """Trace rows of lmms-eval's aggregate metrics (stderr entries left out)."""
    rows = []
    for task, metrics in (results.get("results") or {}).items():
        for key, value in metrics.items():
            name, _, filt = str(key).partition(",")
            x = _number(value)
            if x is None or name.endswith("_stderr") or name.endswith("_stderr_clt") or name == "alias":
                continue
            rows.append(dict(sample_id=task, step=None, layer=None, head=None, token=None,
                             query_group=filt or None, mode="aggregate", metric=name, value=x))
    return rows


def tables(results: Mapping[str, Any], lm: Any, baseline_run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(traces, outcomes) of one lmms-eval evaluation with ``log_samples`` and the model's records."""
    from .export import SHAPES_TASKS
    from .model import question_type

    records = {(r["task"], int(r["doc_id"])): r for r in lm.records}
    outcomes = []
    for task, logged in (results.get("samples") or {}).items():
        for s in logged:
            doc_id = int(s["doc_id"])
            rec = records.get((task, doc_id), {})
            doc = s.get("doc") or {}
            split = rec.get("split") or doc.get("split") or "?"
            sid = rec.get("sample_id") or f"{task}/{split}/{doc_id}"
            answer = rec.get("answer")
            if answer is None:
                resp = s.get("filtered_resps") or [None]
                answer = _text(resp[0])
            qtype = rec.get("qtype") or question_type(doc)
            row = {"sample_id": sid, "answer": answer, "reference": _text(s.get("target")), "qtype": qtype,
                   **sample_metrics(s), "baseline_agreement": rec.get("baseline_agreement", math.nan),
                   "n_visual_kept": rec.get("n_visual_kept"), "tokens_executed": rec.get("tokens_executed"),
                   "flops": rec.get("flops", math.nan), "seconds": rec.get("seconds", math.nan),
                   "peak_memory_mb": rec.get("peak_memory_mb", math.nan),
                   "baseline_run_id": baseline_run_id if rec.get("has_policy") else None,
                   # the shapes tasks' ids redraw their pictures (analysis.figures); others only name them
                   "image_ref": sid if task in SHAPES_TASKS else f"lmms:{sid}",
                   "grid_h": rec.get("grid_h"), "grid_w": rec.get("grid_w")}
            outcomes.append(row)
    if not outcomes:
        raise ValueError("lmms-eval logged no sample (was the task empty, or its output type not generate_until?)")
    out_df = pd.DataFrame(outcomes)
    cols = ["sample_id", "step", "layer", "head", "token", "query_group", "mode", "metric", "value"]
    tr_df = pd.DataFrame([*lm.trace_rows, *aggregate_rows(results)], columns=cols)
    return tr_df, out_df


def run_lmms(cfg: Any, store: Any = None) -> pd.DataFrame:
    """Run one lmms config (or reuse its finished tables) and return its outcome table."""
    from ..experiment import _label, weights_fingerprint
    from ..results import ResultStore, make_run_row, read_table

    p = plan_lmms(cfg)
    c = p.config
    store = store or ResultStore(Path(c.get("results_dir", "results")) / c.get("study", "single"))
    if store.is_done(p.run_id):
        table = read_table(store.path("outcomes", p.run_id))
        _report(c, table, p, reused=True)
        return table
    try:
        import lmms_eval
        from lmms_eval import evaluator
    except ImportError as e:
        raise ValueError(f"task.kind=lmms needs lmms-eval: {INSTALL_HINT} ({e})") from None
    from .model import DMLLMRedundancy

    include = p.include_path or default_include_path(c, p.task)
    tm = task_manager(include, p.task)
    lm = DMLLMRedundancy.from_config(c, p.settings)
    results = evaluator.simple_evaluate(
        model=lm, tasks=[p.task], task_manager=tm, limit=p.limit, batch_size=lm.batch_size,
        device=c["model"].get("device"), log_samples=True, bootstrap_iters=0, verbosity="WARNING",
    )
    if results is None:
        raise RuntimeError("lmms-eval returned no results (this process is not its main rank)")
    traces, outcomes = tables(results, lm, p.baseline_run_id)
    label = {**_label(c, p.identity, lm.family), "headline": c["task"].get("headline")}
    row = make_run_row({**p.identity, "label": label}, weights_hash=weights_fingerprint(c["model"]))
    row["run_id"] = p.run_id
    row["version.lmms_eval"] = str(getattr(lmms_eval, "__version__", None) or _dist_version("lmms-eval"))
    store.write_run(row, traces, outcomes)
    table = read_table(store.path("outcomes", p.run_id))
    _report(c, table, p, reused=False)
    return table


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _report(c: Mapping[str, Any], table: pd.DataFrame, p: LmmsPlan, reused: bool) -> None:
    """Sweep progress, the optional extra outcome copy and the one-line report (as for the shapes tasks)."""
    from .. import experiment

    if experiment._SWEEP["bar"] is not None:
        experiment._SWEEP["bar"].update(1)
    if c.get("output"):
        from ..results import write_table

        write_table(table, c["output"])
    if c.get("print_answers", True):
        head = c["task"].get("headline")
        note = " (finished earlier, reused)" if reused else ""
        if head in table.columns:
            score = f"{head}={table[head].mean():.3f}"
        else:
            skip = {"sample_id", "answer", "reference", "qtype", "baseline_run_id", "image_ref", "run_id"}
            found = [m for m in table.columns if m not in skip and table[m].dtype.kind == "f"]
            score = f"headline {head!r} not logged per sample (numeric columns: {', '.join(found)})"
        print(f"[{p.run_id}] {c['model']['name']} lmms:{p.task} policy={c['policy'].get('name')}: "
              f"{score} over {len(table)} samples{note}")
