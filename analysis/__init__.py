"""Analysis of result tables: loading (:mod:`analysis.load`), the study's figures F1-F9
(:mod:`analysis.figures`) and verdicts on its findings (:mod:`analysis.findings`).

``python -m analysis [results/<sweep>]`` (or ``python -m analysis.figures``) writes every figure whose
data is present into ``<dir>/figures/`` and ``<dir>/FINDINGS.md``.
"""

from .load import (
    FAMILIES,
    HEADLINE,
    bootstrap_mean,
    enrich_summary,
    family_of,
    headline_metric,
    load,
    load_results,
    paired,
    pareto_front,
    results_dirs,
    run_info,
    samples,
    summarize_results,
    summary,
    summary_from_results,
)

__all__ = [
    "FAMILIES", "HEADLINE", "bootstrap_mean", "enrich_summary", "family_of", "headline_metric", "load",
    "load_results", "paired", "pareto_front", "results_dirs", "run_info", "samples", "summarize_results", "summary",
    "summary_from_results",
]
