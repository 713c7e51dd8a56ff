"""Result tables: run identity, schema validation, atomic per-run files, loading round trips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from redundancy.results import (
    OUTCOMES_HEAD,
    OUTCOMES_TAIL,
    RUNS_FIXED,
    TIMING_COLUMNS,
    TRACES,
    ResultStore,
    Results,
    canonical_json,
    code_revision,
    coerce,
    drop_timings,
    empty_table,
    flatten_config,
    load_results,
    make_run_row,
    run_id,
    runs_frame,
    validate,
    write_table,
)

VERSIONS = {"version.python": "3.11.0", "version.redundancy": "0.1.0", "version.torch": "2.5.0",
            "version.transformers": "5.0.0"}

CONFIG = {
    "model": {"name": "toy-scratch", "dtype": "float32"},
    "task": {"name": "shapes_short", "answer_length": 4},
    "policy": {"kind": "fastv", "ratio": 0.5, "layers": [2, 3], "on": True},
    "sampler": {"kind": "low_confidence", "steps": 8, "temperature": None},
    "n_samples": 8,
    "seed": 0,
    "output": "/tmp/somewhere.parquet",
    "hydra": {"run": {"dir": "outputs/x"}},
}


def cfg(**changes):
    import copy

    c = copy.deepcopy(CONFIG)
    for dotted, v in changes.items():
        *path, last = dotted.split("__")
        d = c
        for p in path:
            d = d.setdefault(p, {})
        d[last] = v
    return c


def row(config=CONFIG, created="2025-01-01T00:00:00+00:00", **kw):
    return make_run_row(config, weights_hash="abc123", created=created, code_rev="deadbeef", versions=VERSIONS, **kw)


def traces_for(rid, time_value=0.1, n_samples=2):
    rows = []
    for s in range(n_samples):
        sid = f"s{s}"
        for step in range(2):
            for layer in range(2):
                rows.append(dict(run_id=rid, sample_id=sid, step=step, layer=layer, head=None, token=None,
                                 query_group="masked", mode="mean", metric="visual_mass", value=0.25 * layer + s))
                rows.append(dict(run_id=rid, sample_id=sid, step=step, layer=layer, head=layer, token=3,
                                 query_group=None, mode=None, metric="score", value=np.nan if layer else 1.5))
            rows.append(dict(run_id=rid, sample_id=sid, step=step, layer=None, head=None, token=None,
                             query_group=None, mode=None, metric="time_step_s", value=time_value * (step + 1)))
    return pd.DataFrame(rows)


def outcomes_for(rid, seconds=1.0, n_samples=2, metrics=("exact_match",)):
    rows = []
    for s in range(n_samples):
        r = dict(run_id=rid, sample_id=f"s{s}", answer=f"red {s}", reference=None if s else "red 0",
                 qtype="colour")
        for m in metrics:
            r[m] = float(s == 0)
        r.update(n_visual_kept=16 if s else None, tokens_executed=1000 + s, flops=1.5e9, seconds=seconds * (s + 1),
                 peak_memory_mb=None, baseline_run_id=None if s else "0123456789abcdef",
                 image_ref=f"shapes_short/test/{s}", grid_h=4, grid_w=4)
        rows.append(r)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ run_id


def test_run_id_is_16_hex_and_stable_under_key_order():
    rid = run_id(CONFIG)
    assert len(rid) == 16 and all(ch in "0123456789abcdef" for ch in rid)
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(CONFIG.items())}
    assert run_id(reordered) == rid


@pytest.mark.parametrize("key,value", [
    ("output", "/elsewhere.parquet"), ("hydra__run__dir", "outputs/y"), ("hydra__job__name", "other"),
    ("output_dir", "a"), ("results_dir", "b"), ("logging", {"level": "DEBUG"}), ("launcher", "submitit"),
    ("progress", False), ("sampler__progress", True), ("model__output_dir", "c"),
])
def test_run_id_ignores_excluded_keys(key, value):
    assert run_id(cfg(**{key: value})) == run_id(CONFIG)


@pytest.mark.parametrize("key,value", [
    ("model__name", "toy-ar2diff"), ("policy__ratio", 0.25), ("policy__layers", [3, 2]), ("policy__on", False),
    ("sampler__steps", 16), ("sampler__temperature", 0.0), ("seed", 1), ("n_samples", 9), ("new_key", 1),
    ("policy__ratio", "0.5"), ("seed", 0.0), ("policy__on", 1), ("model__output", "x"),
])
def test_run_id_changes_with_any_other_value(key, value):
    assert run_id(cfg(**{key: value})) != run_id(CONFIG)


def test_run_id_float_canonical_and_plain_types():
    assert run_id({"a": 0.5}) == run_id({"a": 0.50}) == run_id({"a": np.float64(0.5)})
    assert run_id({"a": 1e-3}) == run_id({"a": 0.001})
    assert run_id({"a": 0.0}) == run_id({"a": -0.0})
    assert run_id({"a": (1, 2)}) == run_id({"a": [1, 2]}) == run_id({"a": [np.int64(1), 2]})
    assert run_id({"a": 1}) != run_id({"a": 1.0})
    assert canonical_json({"b": 1, "a": [0.5, None]}) == '{"a":[0.5,null],"b":1}'
    with pytest.raises(TypeError):
        run_id({"a": object()})


def test_run_id_accepts_omegaconf():
    omegaconf = pytest.importorskip("omegaconf")
    conf = omegaconf.OmegaConf.create({"x": 2, "y": "${x}", "hydra": {"a": 1}})
    assert run_id(conf) == run_id({"x": 2, "y": 2})


def test_flatten_config():
    flat = flatten_config(CONFIG)
    assert flat["model.name"] == "toy-scratch" and flat["policy.ratio"] == 0.5 and flat["sampler.steps"] == 8
    assert flat["policy.layers"] == "[2,3]" and flat["sampler.temperature"] is None
    assert not any(k.startswith(("hydra", "output")) for k in flat)
    with pytest.raises(ValueError, match="a.b"):
        flatten_config({"a.b": 1, "a": {"b": 2}})


def test_make_run_row_columns():
    r = row()
    assert r["run_id"] == run_id(CONFIG)
    keys = list(r)
    assert keys[:2] == ["run_id", "created"] and keys[-2:] == ["weights_hash", "code_revision"]
    for v in VERSIONS:
        assert v in r
    with pytest.raises(ValueError, match="weights_hash"):
        make_run_row({"weights_hash": 1}, versions=VERSIONS, code_rev="x")
    default = make_run_row({"a": 1}, code_rev="x")
    assert set(VERSIONS) <= set(default) and default["version.python"].count(".") == 2


def test_code_revision_reads_git_dir(tmp_path):
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("0123abcd\n")
    (tmp_path / "repo" / "pkg").mkdir()
    assert code_revision(tmp_path / "repo" / "pkg") == "0123abcd"
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text("# pack-refs\nfeedbeef refs/heads/main\n")
    assert code_revision(tmp_path / "repo") == "feedbeef"
    (git / "HEAD").write_text("cafe1234\n")
    assert code_revision(tmp_path / "repo") == "cafe1234"


# ------------------------------------------------------------------------------------------ schema


def test_schema_orders_and_dtypes():
    tr = coerce(traces_for("r1"), "traces")
    assert list(tr.columns) == [c.name for c in TRACES]
    assert {c: str(tr[c].dtype) for c in ("step", "layer", "head", "token", "value")} == {
        "step": "Int64", "layer": "Int64", "head": "Int64", "token": "Int64", "value": "float64"}
    assert tr["query_group"].dtype == pd.StringDtype() and tr["head"].isna().any()
    out = coerce(outcomes_for("r1", metrics=("vqa", "exact_match")), "outcomes")
    assert list(out.columns) == ([c.name for c in OUTCOMES_HEAD] + ["vqa", "exact_match"]
                                 + [c.name for c in OUTCOMES_TAIL])
    assert str(out["n_visual_kept"].dtype) == "Int64" and out["peak_memory_mb"].dtype == np.float64
    runs = runs_frame([row()])
    assert str(runs["sampler.steps"].dtype) == "Int64" and runs["policy.ratio"].dtype == np.float64
    assert str(runs["policy.on"].dtype) == "boolean" and runs["model.name"].dtype == pd.StringDtype()
    assert list(runs.columns[:2]) == ["run_id", "created"] and list(runs.columns[-2:]) == ["weights_hash", "code_revision"]
    for t in ("runs", "traces", "outcomes"):
        validate(empty_table(t), t)


def test_validation_names_bad_columns():
    tr = coerce(traces_for("r1"), "traces")
    with pytest.raises(ValueError, match="missing.*'layer'"):
        validate(tr.drop(columns=["layer"]), "traces")
    with pytest.raises(ValueError, match="unexpected.*'bogus'"):
        validate(tr.assign(bogus=1.0), "traces")
    with pytest.raises(ValueError, match="missing.*'metric'"):
        coerce(traces_for("r1").drop(columns=["metric"]), "traces")
    with pytest.raises(ValueError, match="head"):
        validate(tr.astype({"head": "float64"}), "traces")
    with pytest.raises(ValueError, match="out of order"):
        validate(tr[list(reversed(tr.columns))], "traces")
    with pytest.raises(ValueError, match="step"):
        coerce(traces_for("r1").assign(step=0.5), "traces")
    with pytest.raises(ValueError, match="sample_id"):
        validate(tr.assign(sample_id=pd.array([None] * len(tr), dtype="string")), "traces")
    out = outcomes_for("r1")
    with pytest.raises(ValueError, match="missing.*'image_ref'"):
        coerce(out.drop(columns=["image_ref"]), "outcomes")
    with pytest.raises(ValueError, match="unexpected.*'notes'"):
        coerce(out.assign(notes="colour"), "outcomes")
    with pytest.raises(ValueError, match="duplicate"):
        coerce(pd.concat([out, out]), "outcomes")
    with pytest.raises(ValueError, match="missing.*'code_revision'"):
        validate(runs_frame([row()]).drop(columns=["code_revision"]), "runs")
    with pytest.raises(ValueError, match="x.y"):
        runs_frame([{**row(), "x.y": [1, 2]}])


# ---------------------------------------------------------------------------------- atomic writes


def test_write_table_atomic(tmp_path):
    df = coerce(traces_for("r1"), "traces")
    path = write_table(df, tmp_path / "sub" / "t.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)


def test_write_table_crash_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="killed"):
        write_table(coerce(traces_for("r1"), "traces"), tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_run_leaves_run_incomplete(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    r = row()
    real = os.replace

    def replace(src, dst):
        if Path(dst).parent.name == "runs":
            raise OSError("killed")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        store.write_run(r, traces_for(r["run_id"]), outcomes_for(r["run_id"]))
    monkeypatch.setattr(os, "replace", real)
    assert not store.is_done(r["run_id"]) and store.done_ids() == []
    assert len(load_results(tmp_path).outcomes) == 0  # partial files of unfinished runs are ignored
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    store.write_run(r, traces_for(r["run_id"]), outcomes_for(r["run_id"]))  # the rerun completes it
    assert store.is_done(r["run_id"])


# ------------------------------------------------------------------------------------------ store


def test_store_done_ids_and_is_done(tmp_path):
    store = ResultStore(tmp_path / "res")
    assert store.done_ids() == [] and not store.is_done("abc")
    ids = []
    for seed in (2, 1, 0):
        r = row(cfg(seed=seed))
        assert not store.is_done(r["run_id"])
        assert store.write_run(r, traces_for(r["run_id"]), outcomes_for(r["run_id"])) == r["run_id"]
        assert store.is_done(r["run_id"])
        ids.append(r["run_id"])
    assert store.done_ids() == sorted(ids)
    for t in ("runs", "traces", "outcomes"):
        assert sorted(p.stem for p in (tmp_path / "res" / t).iterdir()) == sorted(ids)
    with pytest.raises(FileExistsError):
        store.write_run(row(cfg(seed=0)), traces_for(ids[-1]), outcomes_for(ids[-1]))
    store.write_run(row(cfg(seed=0)), traces_for(ids[-1]), outcomes_for(ids[-1]), overwrite=True)


def test_write_run_checks_run_id_and_fills_it(tmp_path):
    store = ResultStore(tmp_path)
    r = row()
    with pytest.raises(ValueError, match="run_id"):
        store.write_run(r, traces_for("someoneelse"), outcomes_for(r["run_id"]))
    with pytest.raises(ValueError, match="notes"):
        store.write_run(r, traces_for(r["run_id"]), outcomes_for(r["run_id"]).assign(notes="x"))
    assert store.done_ids() == []
    store.write_run(r, traces_for(r["run_id"]).drop(columns=["run_id"]), outcomes_for(r["run_id"]).drop(columns=["run_id"]))
    res = load_results(tmp_path)
    assert set(res.traces["run_id"]) == {r["run_id"]} == set(res.outcomes["run_id"])


def test_round_trip_exact(tmp_path):
    store = ResultStore(tmp_path)
    rows, trs, outs = [], [], []
    configs = [cfg(seed=3), cfg(**{"policy__ratio": None, "seed": 1}), cfg(seed=2, extra={"k": "v"})]
    for i, c in enumerate(configs):
        r = row(c)
        metrics = ("exact_match",) if i != 1 else ("exact_match", "vqa")
        tr, out = traces_for(r["run_id"]), outcomes_for(r["run_id"], metrics=metrics)
        if i == 2:
            tr = tr.iloc[:0]  # a run without traces
        store.write_run(r, tr, out)
        rows.append(r), trs.append(tr), outs.append(out)
    order = sorted(range(3), key=lambda i: rows[i]["run_id"])
    res = load_results(tmp_path)
    assert isinstance(res, Results)
    pd.testing.assert_frame_equal(res.runs, runs_frame([rows[i] for i in order]))
    exp_tr = coerce(pd.concat([trs[i] for i in order if len(trs[i])], ignore_index=True), "traces")
    pd.testing.assert_frame_equal(res.traces, exp_tr)
    exp_out = coerce(pd.concat([outs[i] for i in order], ignore_index=True), "outcomes")
    pd.testing.assert_frame_equal(res.outcomes, exp_out)
    assert res.traces["head"].isna().any() and res.traces["value"].isna().any()
    assert res.outcomes["vqa"].isna().sum() == 4 and res.outcomes["peak_memory_mb"].isna().all()
    assert res.runs["policy.ratio"].isna().sum() == 1 and res.runs["extra.k"].isna().sum() == 2
    # a single run's files round-trip exactly too
    one = ResultStore(tmp_path / "one")
    one.write_run(rows[0], trs[0], outs[0])
    res1 = one.load()
    pd.testing.assert_frame_equal(res1.runs, runs_frame([rows[0]]))
    pd.testing.assert_frame_equal(res1.traces, coerce(trs[0], "traces"))
    pd.testing.assert_frame_equal(res1.outcomes, coerce(outs[0], "outcomes"))
    # several roots merge, duplicates counted once
    both = load_results([tmp_path, tmp_path / "one"])
    assert len(both.runs) == 3 and len(both.outcomes) == len(res.outcomes)


def test_load_empty_and_merged(tmp_path):
    res = load_results(tmp_path / "nothing")
    for t in ("runs", "traces", "outcomes"):
        pd.testing.assert_frame_equal(getattr(res, t), empty_table(t))
    store = ResultStore(tmp_path)
    r = row()
    store.write_run(r, traces_for(r["run_id"]), outcomes_for(r["run_id"]))
    res = load_results(tmp_path)
    m = res.merged("outcomes")
    assert len(m) == len(res.outcomes) and (m["model.name"] == "toy-scratch").all()
    assert list(m.columns[: len(res.outcomes.columns)]) == list(res.outcomes.columns)
    assert len(res.merged("traces")) == len(res.traces)
    with pytest.raises(ValueError):
        res.merged("runs")


def test_drop_timings_makes_reruns_equal(tmp_path):
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    ra, rb = row(created="2025-01-01T00:00:00+00:00"), row(created="2025-06-01T12:00:00+00:00")
    assert ra["run_id"] == rb["run_id"]
    a.write_run(ra, traces_for(ra["run_id"], time_value=0.1), outcomes_for(ra["run_id"], seconds=1.0))
    b.write_run(rb, traces_for(rb["run_id"], time_value=0.7), outcomes_for(rb["run_id"], seconds=3.0))
    ea, eb = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(ea.traces, eb.traces)
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(ea.outcomes, eb.outcomes)
    for t in ("runs", "traces", "outcomes"):
        pd.testing.assert_frame_equal(drop_timings(getattr(ea, t)), drop_timings(getattr(eb, t)))
    dropped = drop_timings(ea.traces)
    assert not dropped["metric"].str.startswith("time_").any() and len(dropped) < len(ea.traces)
    assert not set(TIMING_COLUMNS) & (set(drop_timings(ea.outcomes).columns) | set(drop_timings(ea.runs).columns))


def test_docs_describe_every_column():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    for c in RUNS_FIXED + TRACES + OUTCOMES_HEAD + OUTCOMES_TAIL:
        assert f"`{c.name}`" in doc, c.name
