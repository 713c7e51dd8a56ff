"""The benchmark scripts stay alive: each runs with ``--quick`` and ends with well-formed RESULT lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULT = re.compile(r"^RESULT ([\w.\-@]+)=([-0-9.e]+)$")


def run_quick(script: str, timeout: float = 600) -> list[str]:
    """Run ``benchmarks/<script> --quick`` from the repository root; return its stdout lines."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"{script} printed nothing"
    return lines


def trailing_results(lines: list[str]) -> dict[str, float]:
    """The RESULT lines at the end of the output, in order (every one must be well formed)."""
    tail: list[str] = []
    for ln in reversed(lines):
        if not ln.startswith("RESULT "):
            break
        tail.append(ln)
    tail.reverse()
    assert tail, f"no RESULT lines at the end of the output; last line: {lines[-1]!r}"
    out: dict[str, float] = {}
    for ln in tail:
        m = RESULT.match(ln)
        assert m, f"malformed RESULT line {ln!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def test_pruning_speedup_quick():
    res = trailing_results(run_quick("pruning_speedup.py"))
    names = [f"speedup_over_flops.{c}" for c in ("fastv_r0.5", "fastv_r0.25", "vtw_k4", "skip2_middle")]
    assert list(res) == names
    assert all(v > 0 for v in res.values())


def test_probe_overhead_quick():
    res = trailing_results(run_quick("probe_overhead.py"))
    assert list(res) == ["probe_overhead.zoo", "probe_overhead"]
    assert all(v > 0 for v in res.values())


@pytest.mark.slow
def test_zoo_eval_quick():
    res = trailing_results(run_quick("zoo_eval.py"))
    models = {name.split(".")[0] for name in res}
    assert len(models) == 1 and next(iter(models)).startswith("toy-")
    (model,) = models
    assert f"{model}.shapes_short.exact_match" in res
    assert f"{model}.shapes_long.object_recall" in res
    assert all(0.0 <= v <= 1.0 for v in res.values())


def test_gpu_smoke_runs_on_cpu_tiny():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--device", "cpu", "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = trailing_results([ln for ln in proc.stdout.splitlines() if ln.strip()])
    assert set(res) == {"gpu_smoke.build_s", "gpu_smoke.forward_s", "gpu_smoke.pruned_generation_s",
                        "gpu_smoke.tokens_executed_ratio"}
    # FastV at K=2 of 4 layers keeps 4 of 16 visual tokens: at step 0 layers 2-3 run 48 of 60 tokens;
    # the 15 later steps drop them at the input (persist_from=input)
    assert abs(res["gpu_smoke.tokens_executed_ratio"] - (2 * 60 + 2 * 48 + 15 * 4 * 48) / (16 * 4 * 60)) < 1e-3
