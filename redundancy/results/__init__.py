"""Result tables (runs, traces, outcomes): schema, run identity, atomic per-run parquet files, loader.

See ``docs/results.md`` for the schema and the directory layout.
"""

from .identity import (
    NUMERICS_VERSION,
    RESULTS_SCHEMA_VERSION,
    RUN_ID_EXCLUDED_NAMES,
    RUN_ID_EXCLUDED_PATHS,
    canonical_json,
    code_revision,
    file_fingerprint,
    flatten_config,
    identity_config,
    make_run_row,
    now_iso,
    package_versions,
    run_id,
)
from .schema import (
    OUTCOMES_HEAD,
    OUTCOMES_TAIL,
    RUNS_FIXED,
    TABLES,
    TIMING_COLUMNS,
    TIMING_METRIC_PREFIX,
    TRACES,
    Column,
    coerce,
    drop_timings,
    empty_table,
    fixed_columns,
    is_timing_column,
    runs_frame,
    validate,
)
from .store import ResultStore, Results, load_results, read_table, write_table

__all__ = [
    "NUMERICS_VERSION", "RESULTS_SCHEMA_VERSION", "file_fingerprint", "Column", "OUTCOMES_HEAD", "OUTCOMES_TAIL", "RUNS_FIXED", "RUN_ID_EXCLUDED_NAMES", "RUN_ID_EXCLUDED_PATHS",
    "ResultStore", "Results", "TABLES", "TIMING_COLUMNS", "TIMING_METRIC_PREFIX", "TRACES",
    "canonical_json", "code_revision", "coerce", "drop_timings", "empty_table", "fixed_columns",
    "flatten_config", "identity_config", "is_timing_column", "load_results", "make_run_row", "now_iso",
    "package_versions", "read_table", "run_id", "runs_frame", "validate", "write_table",
]
