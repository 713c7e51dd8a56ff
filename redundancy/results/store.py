"""Atomic parquet writers, the per-run results directory, and the loader.

Layout of a results directory ``root``::

    root/traces/<run_id>.parquet     written first
    root/outcomes/<run_id>.parquet   written second
    root/runs/<run_id>.parquet       written last: a run is complete iff this file exists

Every file is written to a temporary file in the same folder and renamed over the target with
``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .schema import TABLES, coerce, empty_table, runs_frame, validate

TEMP_SUFFIX = ".tmp"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_table(df: pd.DataFrame, path: str | PathLike) -> Path:
    """Write ``df`` to parquet at ``path`` atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            df.to_parquet(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def read_table(path: str | PathLike) -> pd.DataFrame:
    """Read one parquet table written by ``write_table``."""
    return pd.read_parquet(path)


@dataclass
class Results:
    """The three result tables of one or more results directories."""

    runs: pd.DataFrame = field(default_factory=lambda: empty_table("runs"))
    traces: pd.DataFrame = field(default_factory=lambda: empty_table("traces"))
    outcomes: pd.DataFrame = field(default_factory=lambda: empty_table("outcomes"))

    def merged(self, table: str) -> pd.DataFrame:
        """``traces`` or ``outcomes`` with the runs columns joined on run_id (clashing run columns get '.run')."""
        if table not in ("traces", "outcomes"):
            raise ValueError(f"merged() takes 'traces' or 'outcomes', not {table!r}")
        return getattr(self, table).merge(self.runs, on="run_id", how="left", suffixes=("", ".run"),
                                          validate="many_to_one")


class ResultStore:
    """A results directory with one parquet file per run and table; resumable by run_id."""

    def __init__(self, root: str | PathLike) -> None:
        """Use ``root`` (created on the first write)."""
        self.root = Path(root)

    def path(self, table: str, run_id: str) -> Path:
        """Where the ``table`` file of ``run_id`` lives."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
        if not run_id or any(ch in run_id for ch in "/\\") or run_id.startswith("."):
            raise ValueError(f"bad run_id {run_id!r}")
        return self.root / table / f"{run_id}.parquet"

    def is_done(self, run_id: str) -> bool:
        """True iff the run's runs-file exists (it is written last)."""
        return self.path("runs", run_id).is_file()

    def done_ids(self) -> list[str]:
        """The run_ids of all complete runs, sorted."""
        folder = self.root / "runs"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.parquet") if not p.name.startswith("."))

    def write_run(self, run_row: Mapping[str, Any], traces: pd.DataFrame, outcomes: pd.DataFrame,
                  *, overwrite: bool = False) -> str:
        """Validate, then write traces, outcomes and last the runs row; return the run_id."""
        runs = runs_frame([run_row])
        rid = str(runs["run_id"].iloc[0])
        traces = coerce(self._with_run_id(traces, rid, "traces"), "traces").reset_index(drop=True)
        outcomes = coerce(self._with_run_id(outcomes, rid, "outcomes"), "outcomes").reset_index(drop=True)
        if self.is_done(rid):
            if not overwrite:
                raise FileExistsError(f"run {rid} is already complete in {self.root}; pass overwrite=True")
            self.path("runs", rid).unlink()  # mark incomplete before replacing its tables
        write_table(traces, self.path("traces", rid))
        write_table(outcomes, self.path("outcomes", rid))
        write_table(runs, self.path("runs", rid))
        return rid

    @staticmethod
    def _with_run_id(df: pd.DataFrame, rid: str, table: str) -> pd.DataFrame:
        if "run_id" not in df.columns:
            return pd.concat([pd.DataFrame({"run_id": [rid] * len(df)}, index=df.index), df], axis=1)
        ids = set(df["run_id"].dropna().astype(str).unique())
        if ids - {rid}:
            raise ValueError(f"{table}: run_id column holds {sorted(ids - {rid})}, expected only {rid!r}")
        return df

    def load(self) -> Results:
        """All complete runs of this directory (see ``load_results``)."""
        return load_results(self.root)


def _concat(frames: list[pd.DataFrame], table: str) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_table(table)
    if len(frames) == 1:
        return coerce(frames[0].reset_index(drop=True), table)
    return coerce(pd.concat(frames, ignore_index=True, sort=False), table)


def load_results(path: str | PathLike | Iterable[str | PathLike]) -> Results:
    """Load every complete run under one results directory (or several; first copy of a run_id wins)."""
    roots = [Path(path)] if isinstance(path, (str, PathLike)) else [Path(p) for p in path]
    found: dict[str, tuple[list[dict[str, Any]], pd.DataFrame, pd.DataFrame]] = {}
    for root in roots:
        store = ResultStore(root)
        for rid in store.done_ids():
            if rid in found:
                continue
            run = read_table(store.path("runs", rid))
            validate(run, "runs")
            parts = []
            for table in ("traces", "outcomes"):
                p = store.path(table, rid)
                if not p.is_file():
                    raise FileNotFoundError(f"run {rid} is marked complete but {p} is missing")
                parts.append(read_table(p))
            found[rid] = (run.to_dict("records"), parts[0], parts[1])
    ids = sorted(found)
    return Results(
        runs=runs_frame(row for rid in ids for row in found[rid][0]),
        traces=_concat([found[rid][1] for rid in ids], "traces"),
        outcomes=_concat([found[rid][2] for rid in ids], "outcomes"),
    )
