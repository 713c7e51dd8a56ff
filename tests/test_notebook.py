"""notebooks/analysis.ipynb runs end to end (nbclient) against a small crafted results folder."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from analysis.synthetic import make_results

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/markdown", ""))
    return "\n".join(parts)


def test_notebook_runs_on_a_small_results_folder(tmp_path):
    results = make_results(tmp_path / "paper", tasks=("shapes_short",), methods=("fastv",), retentions=(0.5,),
                           schedules=("once", "late"), skips=((1, "middle"),), n_samples=3)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "RESULTS" in first.source
    first.source = f"RESULTS = {str(results)!r}"  # the path of this test's folder, whatever the default
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = _outputs_text(nb)
    assert "skipped" not in text  # every figure had its data
    outputs = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]
    assert sum("image/png" in d for d in outputs) >= 9  # F1-F9
    assert sum("image/gif" in d for d in outputs) == 1  # the F9 animation
    assert "# Findings" in text and "## 11. " in text

