"""The three result tables (runs, traces, outcomes): column order, dtypes, casting and validation.

Dtypes are pandas dtype names: ``"string"`` (``pd.StringDtype``, missing = ``pd.NA``), ``"Int64"``
(nullable integer), ``"float64"`` (missing = NaN), ``"boolean"`` (nullable bool, config columns only).
See ``docs/results.md`` for the meaning of every column.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

STRING = "string"
INT = "Int64"
FLOAT = "float64"
BOOL = "boolean"


@dataclass(frozen=True)
class Column:
    """One fixed column of a result table."""

    name: str
    dtype: str
    nullable: bool
    doc: str


# --------------------------------------------------------------------------------------------- runs

RUNS_HEAD: tuple[Column, ...] = (
    Column("run_id", STRING, False, "sha256 of the canonical identity config, first 16 hex chars"),
    Column("created", STRING, False, "UTC time the run row was made, ISO 8601 (timing)"),
)
VERSION_PREFIX = "version."
VERSION_COLUMNS: tuple[Column, ...] = (
    Column("version.python", STRING, False, "Python version"),
    Column("version.redundancy", STRING, False, "version of this package"),
    Column("version.torch", STRING, False, "torch version, or 'unknown'"),
    Column("version.transformers", STRING, False, "transformers version, or 'unknown'"),
)
RUNS_TAIL: tuple[Column, ...] = (
    Column("weights_hash", STRING, False, "hash of the model weights used, or 'unknown'"),
    Column("code_revision", STRING, False, "git commit of the code, or 'unknown'"),
)
RUNS_FIXED: tuple[Column, ...] = RUNS_HEAD + VERSION_COLUMNS + RUNS_TAIL

# ------------------------------------------------------------------------------------------- traces

# the key columns every per-run table starts with
_RUN_KEY: tuple[Column, ...] = (
    Column("run_id", STRING, False, "the run (joins runs.run_id)"),
    Column("sample_id", STRING, False, "the sample within the task"),
)

TRACES: tuple[Column, ...] = _RUN_KEY + (
    Column("step", INT, True, "denoising step, 0-based; NA for per-sample metrics"),
    Column("layer", INT, True, "decoder layer, 0-based; NA for metrics with no layer"),
    Column("head", INT, True, "attention head; NA when reduced over heads"),
    Column("token", INT, True, "visual token index in the original grid (row-major); NA when reduced over tokens"),
    Column("query_group", STRING, True, "who is looking: e.g. masked, decoded, text, all; NA when not applicable"),
    Column("mode", STRING, True, "variant of the metric, e.g. the reduction; NA when not applicable"),
    Column("metric", STRING, False, "metric name; names starting with 'time_' are timings"),
    Column("value", FLOAT, True, "the value"),
)

# ----------------------------------------------------------------------------------------- outcomes

OUTCOMES_HEAD: tuple[Column, ...] = _RUN_KEY + (
    Column("answer", STRING, True, "decoded answer text"),
    Column("reference", STRING, True, "reference answer text"),
    Column("qtype", STRING, True, "question type of the sample (e.g. count, colour, describe)"),
)
OUTCOMES_TAIL: tuple[Column, ...] = (
    Column("n_visual_kept", INT, True, "visual tokens still alive at the end of the forward pass"),
    Column("tokens_executed", INT, True, "token-layer evaluations executed over the whole decode"),
    Column("flops", FLOAT, True, "estimated FLOPs of the whole decode"),
    Column("seconds", FLOAT, True, "wall-clock seconds of the decode (timing)"),
    Column("peak_memory_mb", FLOAT, True, "peak accelerator memory in MiB; NaN on CPU (timing)"),
    Column("baseline_run_id", STRING, True, "run_id of the unpruned baseline run; NA for a baseline"),
    Column("image_ref", STRING, False, "how to redraw the image, e.g. 'shapes_short/test/17'"),
    Column("grid_h", INT, True, "visual token grid height"),
    Column("grid_w", INT, True, "visual token grid width"),
)

TABLES: tuple[str, ...] = ("runs", "traces", "outcomes")

# --------------------------------------------------------------------------------------------- timing

TIMING_COLUMNS: tuple[str, ...] = ("created", "seconds", "peak_memory_mb")
"""Columns allowed to differ between two runs of the same config."""
TIMING_METRIC_PREFIX = "time_"
"""Trace rows whose ``metric`` starts with this (and outcome columns named so) are timings too."""


def is_timing_column(name: str) -> bool:
    """True when a column holds timings (listed in TIMING_COLUMNS or named ``time_*``)."""
    return name in TIMING_COLUMNS or name.startswith(TIMING_METRIC_PREFIX)


def drop_timings(df: pd.DataFrame) -> pd.DataFrame:
    """Remove timing columns and timing trace rows, reset the index, for exact comparisons."""
    out = df.drop(columns=[c for c in df.columns if is_timing_column(str(c))])
    if "metric" in out.columns:
        out = out[~out["metric"].astype(STRING).str.startswith(TIMING_METRIC_PREFIX).fillna(False).astype(bool)]
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------------------- helpers


def _fixed(table: str) -> tuple[Column, ...]:
    if table == "runs":
        return RUNS_FIXED
    if table == "traces":
        return TRACES
    if table == "outcomes":
        return OUTCOMES_HEAD + OUTCOMES_TAIL
    raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")


def fixed_columns(table: str) -> dict[str, str]:
    """The fixed columns of ``table`` and their dtypes, in order (runs: without config columns)."""
    return {c.name: c.dtype for c in _fixed(table)}


def empty_table(table: str) -> pd.DataFrame:
    """An empty DataFrame with the fixed columns and dtypes of ``table``."""
    return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in _fixed(table)})


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def _scalar(v: Any) -> Any:
    """numpy scalars -> Python scalars; missing values -> None."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if _is_missing(v) else v


def config_series(values: Iterable[Any], name: str = "") -> pd.Series:
    """Type one runs config column by its values: bool->boolean, int->Int64, number->float64, str->string."""
    vals = [_scalar(v) for v in values]
    present = [v for v in vals if v is not None]
    for v in present:
        if not isinstance(v, (bool, numbers.Real, str)):
            raise ValueError(f"runs: config column {name!r} holds a non-scalar {type(v).__name__}; flatten it first")
    if not present:
        return pd.Series(vals, dtype=object, name=name)
    if all(isinstance(v, bool) for v in present):
        return pd.Series(vals, dtype=BOOL, name=name)
    if any(isinstance(v, bool) for v in present):
        return pd.Series(vals, dtype=object, name=name)
    if all(isinstance(v, numbers.Integral) for v in present):
        return pd.Series(vals, dtype=INT, name=name)
    if all(isinstance(v, numbers.Real) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in vals], dtype=FLOAT, name=name)
    if all(isinstance(v, str) for v in present):
        return pd.Series(vals, dtype=STRING, name=name)
    return pd.Series(vals, dtype=object, name=name)  # mixed kinds across runs: kept as Python values


def _cast(s: pd.Series, dtype: str, table: str, name: str) -> pd.Series:
    target = pd.api.types.pandas_dtype(dtype)
    if s.dtype == target:
        return s
    try:
        if dtype == STRING:
            if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
                return s.astype(target)
            vals = [_scalar(v) for v in s.tolist()]
            bad = [v for v in vals if v is not None and not isinstance(v, str)
                   and (isinstance(v, bool) or not isinstance(v, numbers.Integral))]
            if bad:
                raise TypeError(f"non-string value {bad[0]!r}")
            return pd.Series([None if v is None else str(v) for v in vals], dtype=STRING, index=s.index, name=s.name)
        if dtype == FLOAT:
            kind = pd.api.types.infer_dtype(s, skipna=True)
            if kind not in ("floating", "integer", "mixed-integer-float", "boolean", "empty", "decimal"):
                raise TypeError(f"values of kind {kind!r} are not numbers")
            if isinstance(s.dtype, pd.api.extensions.ExtensionDtype) or s.dtype == object:
                return pd.Series([np.nan if _is_missing(v) else float(v) for v in s.tolist()],
                                 dtype=FLOAT, index=s.index, name=s.name)
            return s.astype(FLOAT)
        return s.astype(target)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{table}: column {name!r} cannot be cast to {dtype}: {e}") from None


def _column_error(table: str, missing: list[str], extra: list[str], note: str = "") -> ValueError:
    parts = []
    if missing:
        parts.append(f"missing column(s) {missing}")
    if extra:
        parts.append(f"unexpected column(s) {extra}{note}")
    return ValueError(f"{table}: " + "; ".join(parts))


def _runs_order(columns: Iterable[str]) -> list[str]:
    fixed = {c.name for c in RUNS_FIXED}
    cols = [str(c) for c in columns]
    config = sorted(c for c in cols if c not in fixed and not c.startswith(VERSION_PREFIX))
    versions = sorted(c for c in cols if c.startswith(VERSION_PREFIX))
    return [c.name for c in RUNS_HEAD] + config + versions + [c.name for c in RUNS_TAIL]


def _outcome_metrics(df: pd.DataFrame) -> list[str]:
    fixed = {c.name for c in OUTCOMES_HEAD + OUTCOMES_TAIL}
    return [str(c) for c in df.columns if c not in fixed]


def _check_duplicates(df: pd.DataFrame, table: str) -> None:
    dup = [c for c in df.columns[df.columns.duplicated()]]
    if dup:
        raise ValueError(f"{table}: duplicated column name(s) {dup}")


# ---------------------------------------------------------------------------------- coerce/validate


def coerce(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Cast ``df`` to the dtypes of ``table`` and put its columns in the documented order."""
    _check_duplicates(df, table)
    fixed = _fixed(table)
    names = [c.name for c in fixed]
    cols = [str(c) for c in df.columns]
    missing = [n for n in names if n not in cols]
    if table == "traces":
        extra = [c for c in cols if c not in names]
        if missing or extra:
            raise _column_error(table, missing, extra)
        order = names
    elif table == "outcomes":
        if missing:
            raise _column_error(table, missing, [])
        metrics = _outcome_metrics(df)
        bad = [m for m in metrics if pd.api.types.infer_dtype(df[m], skipna=True)
               not in ("floating", "integer", "mixed-integer-float", "boolean", "empty", "decimal")]
        if bad:
            raise _column_error(table, [], bad, " (task metric columns must be numbers)")
        order = [c.name for c in OUTCOMES_HEAD] + metrics + [c.name for c in OUTCOMES_TAIL]
    else:
        if missing:
            raise _column_error(table, missing, [])
        order = _runs_order(cols)
    dtypes = {c.name: c.dtype for c in fixed}
    out = {}
    for name in order:
        s = df[name]
        if name in dtypes:
            out[name] = _cast(s, dtypes[name], table, name)
        elif table == "outcomes" or (table == "runs" and name.startswith(VERSION_PREFIX)):
            out[name] = _cast(s, FLOAT if table == "outcomes" else STRING, table, name)
        else:
            out[name] = config_series(s.tolist(), name).set_axis(s.index)
    res = pd.DataFrame(out, index=df.index)
    validate(res, table)
    return res


def validate(df: pd.DataFrame, table: str) -> None:
    """Raise ValueError, naming the column(s), unless ``df`` matches the schema of ``table`` exactly."""
    _check_duplicates(df, table)
    fixed = _fixed(table)
    names = [c.name for c in fixed]
    cols = [str(c) for c in df.columns]
    missing = [n for n in names if n not in cols]
    if table == "traces":
        extra = [c for c in cols if c not in names]
        if missing or extra:
            raise _column_error(table, missing, extra)
        order = names
    elif table == "outcomes":
        if missing:
            raise _column_error(table, missing, [])
        metrics = _outcome_metrics(df)
        bad = [m for m in metrics if df[m].dtype != np.dtype(FLOAT)]
        if bad:
            raise _column_error(table, [], bad, f" (task metric columns must be {FLOAT})")
        order = [c.name for c in OUTCOMES_HEAD] + metrics + [c.name for c in OUTCOMES_TAIL]
    else:
        if missing:
            raise _column_error(table, missing, [])
        order = _runs_order(cols)
        for c in order:
            if c not in names and df[c].dtype == object:
                config_series(df[c].tolist(), c)  # raises on non-scalar cells
    if cols != order:
        raise ValueError(f"{table}: columns out of order; expected {order}, got {cols}")
    wrong = [f"{c.name} ({df[c.name].dtype}, expected {c.dtype})" for c in fixed
             if df[c.name].dtype != pd.api.types.pandas_dtype(c.dtype)]
    if table == "runs":
        wrong += [f"{c} ({df[c].dtype}, expected {STRING})" for c in cols
                  if c.startswith(VERSION_PREFIX) and c not in names and df[c].dtype != pd.api.types.pandas_dtype(STRING)]
    if wrong:
        raise ValueError(f"{table}: wrong dtype in column(s) {wrong}")
    nulls = [c.name for c in fixed if not c.nullable and bool(df[c.name].isna().any())]
    if nulls:
        raise ValueError(f"{table}: missing values in required column(s) {nulls}")
    key = {"runs": ["run_id"], "outcomes": ["run_id", "sample_id"]}.get(table)
    if key is not None and bool(df.duplicated(subset=key).any()):
        raise ValueError(f"{table}: duplicate rows for key column(s) {key}")


def runs_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build the runs table from run-row dicts (missing keys become missing values)."""
    rows = [dict(r) for r in rows]
    if not rows:
        return empty_table("runs")
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    df = pd.DataFrame({k: pd.Series([r.get(k) for r in rows], dtype=object) for k in seen})
    return coerce(df, "runs")
