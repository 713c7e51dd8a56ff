"""The main job: configs, one run's tables, resume, determinism, sweeps and launchers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from redundancy.config import register_configs
from redundancy.experiment import plan, run
from redundancy.results import drop_timings, load_results

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
register_configs()


def cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[f"results_dir={tmp_path}", "progress=false",
                                                        "print_answers=false", *overrides])


def test_run_writes_tables_and_reuses_them(tmp_path):
    c = cfg(tmp_path, "task=shapes_long", "task.n_samples=3", "policy=fastv", "probe=recovery")
    table = run(c)
    assert len(table) == 3
    assert table["sample_id"].tolist() == [f"shapes_long/test/{i}" for i in range(3)]
    assert {"object_recall", "token_f1", "exact_match", "baseline_agreement", "flops"} <= set(table.columns)
    res = load_results(tmp_path / "single")
    assert len(res.runs) == 1 and res.runs["label.policy"].iloc[0] == "fastv"
    modes = set(res.traces["mode"].dropna())
    assert modes == {"free", "forced"}
    assert {"kl", "top1_agreement", "final_agreement", "flops", "tokens_executed"} <= set(res.traces["metric"])
    assert (table["baseline_run_id"] == plan(c).baseline_run_id).all()
    again = run(c)  # finished: read back, not recomputed
    pd.testing.assert_frame_equal(again, table)


def test_same_config_gives_identical_tables(tmp_path):
    over = ["task.n_samples=4", "policy=tome", "probe=attention"]
    run(cfg(tmp_path / "a", *over))
    run(cfg(tmp_path / "b", *over))
    a, b = load_results(tmp_path / "a" / "single"), load_results(tmp_path / "b" / "single")
    for name in ("runs", "traces", "outcomes"):
        pd.testing.assert_frame_equal(drop_timings(getattr(a, name)), drop_timings(getattr(b, name)))
    assert len(a.traces[a.traces.metric == "visual_share"]) > 0


def test_blind_baseline_sees_no_visual_token(tmp_path):
    table = run(cfg(tmp_path, "task.n_samples=3", "policy=blind"))
    assert (table["n_visual_kept"] == 0).all()


def test_coinciding_settings_share_one_run(tmp_path):
    base = plan(cfg(tmp_path, "policy=none")).run_id
    assert plan(cfg(tmp_path, "policy=none", "policy.prune.ratio=0.25")).run_id == base
    a = plan(cfg(tmp_path, "policy=vtw", "policy.prune.ratio=0.25")).run_id
    assert plan(cfg(tmp_path, "policy=vtw", "policy.prune.ratio=0.75")).run_id == a
    # the short task has 2 steps: progressive's last stage and 'from' at step 1 differ from 'once'
    once = plan(cfg(tmp_path, "policy=fastv")).run_id
    assert plan(cfg(tmp_path, "policy=fastv", "policy.prune.schedule=late")).run_id != once
    assert plan(cfg(tmp_path, "policy=fastv", "policy.prune.step_fraction=0.0")).run_id == once
    assert plan(cfg(tmp_path, "policy=fastv", "output=/tmp/x.parquet")).run_id == once
    # every knob that is not a scheduling knob stays in the identity
    assert plan(cfg(tmp_path, "sampler.schedule=shift")).run_id != base
    sv = plan(cfg(tmp_path, "policy=sparsevlm")).run_id
    assert plan(cfg(tmp_path, "policy=sparsevlm", "policy.prune.recycle_fraction=0.9")).run_id != sv


@pytest.mark.parametrize("overrides, match", [
    (["sampler.block_length=3"], "block_length 3"),
    (["sampler.schedule=exp"], "unknown schedule 'exp'; choose one of: linear, shift, cosine, logit_normal, dream"),
    (["policy=fastv", "policy.prune.layer=9"], "layer K=9 is beyond the model's depth"),
    (["model.checkpoint=/nonexistent/dir"], "model.checkpoint '/nonexistent/dir' is not a directory"),
    (["size=huge"], "unknown size 'huge'; choose one of: full, small"),
])
def test_bad_values_fail_before_anything_is_written(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run(cfg(tmp_path, *overrides))
    assert not (tmp_path / "single").exists()


def _cli(tmp_path, *args, flags=(), **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.run", *flags, f"results_dir={tmp_path}", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, **kw)


@pytest.mark.slow
def test_command_line_bad_input_is_one_line(tmp_path):
    out = _cli(tmp_path, "model.name=nope", f"hydra.run.dir={tmp_path}/h")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown model 'nope'; choose one of: " + out.stderr.split("choose one of: ")[1].strip()]
    assert not (tmp_path / "single").exists()
    typo = _cli(tmp_path, "policy.prune.ratoi=0.3", f"hydra.run.dir={tmp_path}/h")
    assert typo.returncode != 0 and "Key 'ratoi' not in 'PruneConf'" in typo.stderr


@pytest.mark.slow
def test_command_line_prints_answers(tmp_path):
    out = _cli(tmp_path, "task.n_samples=4", f"hydra.run.dir={tmp_path}/h", check=True)
    assert "shapes_short/test/3" in out.stdout and "exact_match=" in out.stdout


def _sweep(tmp_path, *extra, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "experiments.run", "+sweep=smoke", f"results_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/hydra", *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _tables(root):
    res = load_results(root)
    key = {"runs": ["run_id"], "traces": ["run_id", "sample_id", "metric", "step", "layer", "token", "mode"],
           "outcomes": ["run_id", "sample_id"]}
    return {n: drop_timings(getattr(res, n)).sort_values(key[n]).reset_index(drop=True) for n in key}


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_tables(tmp_path):
    full = _sweep(tmp_path / "full")
    out, err = full.communicate(timeout=900)
    assert full.returncode == 0, err[-2000:]
    assert (tmp_path / "full" / "smoke" / "summary.parquet").is_file()
    n_runs = len(list((tmp_path / "full" / "smoke" / "runs").glob("*.parquet")))
    assert n_runs == 16  # every sweep point of the smoke grid is a distinct run

    killed = _sweep(tmp_path / "resumed", start_new_session=True)
    runs_dir = tmp_path / "resumed" / "smoke" / "runs"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(runs_dir.glob("*.parquet"))) < 5:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    done = len(list(runs_dir.glob("*.parquet")))
    assert 5 <= done < n_runs
    again = _sweep(tmp_path / "resumed")
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-2000:]
    assert out.count("(finished earlier, reused)") == 0  # print_answers is off in sweeps
    a, b = _tables(tmp_path / "full" / "smoke"), _tables(tmp_path / "resumed" / "smoke")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_point_sweep(tmp_path):
    out = _cli(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
               f"hydra.sweep.dir={tmp_path}/hydra", "task.n_samples=2", "policy=none,random", "study=submitit",
               flags=["-m"], timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = load_results(tmp_path / "submitit")
    assert sorted(res.runs["label.policy"]) == ["baseline", "random"]
    assert len(res.outcomes) == 4
    assert list((tmp_path / "hydra").rglob("*_submitted.pkl")) or list((tmp_path / "hydra").rglob("*.pkl"))


def test_config_schema_matches_the_policy_configs():
    """The Hydra schema (typed for OmegaConf) and the runtime policy configs must not drift apart."""
    from dataclasses import fields

    from redundancy.config import PruneConf, SamplerConf, SkipConf
    from redundancy.policies import PruneConfig, SkipConfig
    from redundancy.sampling import SamplerConfig

    assert [f.name for f in fields(PruneConf)] == [f.name for f in fields(PruneConfig)]
    assert [f.name for f in fields(SkipConf)] == [f.name for f in fields(SkipConfig)]
    assert [f.name for f in fields(SamplerConf)] == ["kind"] + [f.name for f in fields(SamplerConfig)]
    for f in fields(SamplerConfig):  # same defaults too
        assert getattr(SamplerConf(), f.name) == getattr(SamplerConfig(), f.name), f.name


def test_command_line_model_replaces_the_sweeps_model_list():
    """``+sweep=pruning model=llada-v model.checkpoint=DIR`` sweeps the given model, not the zoo's."""
    from types import SimpleNamespace

    from hydra_plugins.redundancy_union_sweeper.union_sweeper import UnionSweeper

    s = UnionSweeper(params={"model.name": "toy-scratch,toy-ar2diff", "task": "shapes_short,shapes_long"},
                     grids=[{"policy": "none,blind"}, {"model": "toy-ar"}, {"policy": "fastv", "policy.prune.ratio": "0.5,0.25"}])
    s.hydra_context = SimpleNamespace(config_loader=None)
    jobs = s.jobs(["+sweep=pruning", "model=llada-v", "model.checkpoint=/ckpt"])
    assert not any(o.startswith("model.name=") or o == "model=toy-ar" for j in jobs for o in j)
    assert all("model=llada-v" in j and "model.checkpoint=/ckpt" in j for j in jobs)
    assert len(jobs) == 2 * 2 + 2 + 2 * 2  # the toy-ar grid collapses onto the plain (task) grid
    zoo = s.jobs(["+sweep=pruning"])
    assert len(zoo) == 2 * 2 * 2 + 2 * 2 + 2 * 2 * 2 and any("model.name=toy-ar2diff" in j for j in zoo)
