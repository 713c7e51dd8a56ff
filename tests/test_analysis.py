"""The analysis package on crafted tables: loading helpers, figures F1-F9, findings verdicts, the CLI."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from analysis import figures as F  # noqa: E402
from analysis import findings as FD  # noqa: E402
from analysis.load import (  # noqa: E402
    bootstrap_mean,
    family_of,
    paired,
    pareto_front,
    run_info,
    summary,
    summary_from_results,
)
from analysis.synthetic import make_results, make_tables, opposite_effect  # noqa: E402
from redundancy.results import Results  # noqa: E402

MEASURABLE = list(range(1, 11))


@pytest.fixture(scope="module")
def paper() -> Results:
    return make_tables()


@pytest.fixture(scope="module")
def opposite() -> Results:
    return make_tables(effect=opposite_effect, signal_noise=10.0)


@pytest.fixture(scope="module")
def summ(paper) -> pd.DataFrame:
    return summary_from_results(paper)


@pytest.fixture(scope="module")
def paper_verdicts(paper):
    return {v.number: v for v in FD.evaluate(paper)}


@pytest.fixture(scope="module")
def opposite_verdicts(opposite):
    return {v.number: v for v in FD.evaluate(opposite)}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def series(ax) -> list:
    return [ln for ln in ax.get_lines() if ln.get_gid() == "series"]


def data_axes(fig) -> list:
    """Axes of a figure that are not colour bars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# -- loading --------------------------------------------------------------------------------------
def test_family_of_names():
    assert family_of("toy-scratch") == "from_scratch"
    assert family_of("toy-scratch@2") == "from_scratch"
    assert family_of("toy-ar2diff@1") == "ar_to_diffusion"
    assert family_of("toy-ar") == "autoregressive"
    assert family_of("GSAI-ML/LLaDA-V") == "from_scratch"
    assert family_of("jacklishufan/lavida-dream-v1.0-instruct") == "ar_to_diffusion"
    assert family_of("something-else") == "unknown"
    assert family_of(None) == "unknown"


def test_run_info_reads_identity_not_label_defaults(paper):
    info = run_info(paper.runs)
    base = info[info["strategy"] == "baseline"]
    assert (base["retention"] == 1.0).all() and base["schedule"].isna().all() and (base["skip_n"] == 0).all()
    assert (info.loc[info["strategy"] == "blind", "retention"] == 0.0).all()
    prog = info[info["schedule"] == "progressive"]
    assert sorted(prog["retention"].round(6).unique()) == [0.25, 0.5, 0.75]  # the final stage's ratio
    late = info[(info["schedule"] == "late") & (info["task"] == "shapes_long")]
    assert (late["prune_step"] == 8).all() and np.allclose(late["start_fraction"], 0.5)
    skip = info[info["strategy"] == "skip"]
    assert set(zip(skip["skip_n"], skip["skip_position"])) == {(1, "early"), (1, "middle"), (2, "middle")}
    assert set(info["n_steps"]) == {2, 16}


def test_paired_and_summary(paper, summ):
    p = paired(paper)
    assert p["baseline_run_id"].notna().all() and not p["run_id"].isin(p["baseline_run_id"]).any()
    assert np.allclose(p["diff"], p["score"] - p["base_score"])
    assert set(summ["strategy"]) >= {"baseline", "blind", "fastv", "random", "skip"}
    b = summ[summ["strategy"] == "baseline"]
    assert np.allclose(b["rel_flops"], 1.0) and np.allclose(b["delta"], 0.0)
    assert np.allclose(summ["speedup_flops"], 1 / summ["rel_flops"])


def test_summary_reads_or_recomputes_the_file(tmp_path):
    root = make_results(tmp_path / "r", models=("toy-scratch",), tasks=("shapes_short",), methods=("fastv",),
                        retentions=(0.5,), schedules=("once",), skips=(), recovery_starts=(), attention=False,
                        signals=False, n_samples=3)
    s = summary(root)
    assert len(s) == 3 and set(s["strategy"]) == {"baseline", "blind", "fastv"}
    # a folder of sweep folders works too
    assert len(summary(tmp_path)) == 3


def test_bootstrap_and_pareto():
    m, lo, hi = bootstrap_mean([1.0, 1.0, 1.0])
    assert (m, lo, hi) == (1.0, 1.0, 1.0)
    m, lo, hi = bootstrap_mean(np.r_[np.zeros(50), np.ones(50)])
    assert lo < m < hi
    front = pareto_front([1.0, 0.5, 0.6, 0.2, 0.9], [0.9, 0.8, 0.7, 0.3, 0.95])
    assert list(front) == [3, 1, 4]


# -- figures --------------------------------------------------------------------------------------
def test_palette_is_consistent(summ):
    f2 = F.f2_retention(summ)
    f7 = F.f7_pareto(summ)
    for ln in series(f2.axes[0]):
        assert to_hex(ln.get_color()) == F.PALETTE["method"][ln.get_label()]
    for sc in [c for c in f7.axes[0].collections if c.get_gid() == "series"]:
        assert to_hex(sc.get_facecolor()[0]) == F.PALETTE["method"][sc.get_label()]
    assert F.color("method", "unknown-method") == F.FALLBACK and F.color("method", "fastv+skip") == F.color("method", "fastv")


def test_f1_attention_heatmaps(paper):
    fig = F.f1_attention(paper.traces, paper.runs)
    axes = data_axes(fig)
    assert len(axes) == 4  # 2 families x 2 task types
    assert [ax.get_title() for ax in axes[:2]] == ["from_scratch · shapes_short (short answer)",
                                                   "from_scratch · shapes_long (long answer)"]
    clims = {ax.images[0].get_clim() for ax in axes}
    assert len(clims) == 1  # one shared colour scale
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    assert all(ax.get_xlabel() == "denoising step" and ax.get_ylabel() == "layer" for ax in axes)
    assert axes[1].images[0].get_array().shape == (4, 16)  # layers x steps
    m = F.attention_maps(paper.traces, paper.runs)
    assert set(m["family"]) == {"from_scratch", "ar_to_diffusion"}


def test_f2_retention(summ):
    fig = F.f2_retention(summ)
    axes = data_axes(fig)
    assert len(axes) == 12  # 3 rows (accuracy, FLOPs speedup, time speedup) x 4 (family, task) columns
    assert axes[0].get_ylabel() == "accuracy"
    assert axes[4].get_ylabel() == "speedup (1 / rel. FLOPs)" and axes[8].get_ylabel() == "speedup (1 / rel. seconds)"
    assert all(ax.get_xlabel() == "retention ratio" for ax in axes)
    for ax in axes:
        assert sorted(ln.get_label() for ln in series(ax)) == ["fastv", "random"]
        assert len(series(ax)[0].get_xdata()) == 3  # retentions 0.25, 0.5, 0.75
    assert any(ln.get_gid() == "baseline" for ln in axes[0].get_lines())


def test_f3_table_and_latex(summ):
    t = F.f3_table(summ, retention=0.5)
    assert list(t.index) == ["baseline", "fastv", "random"]
    assert list(t.columns) == [("from_scratch", "shapes_short"), ("from_scratch", "shapes_long"),
                               ("ar_to_diffusion", "shapes_short"), ("ar_to_diffusion", "shapes_long")]
    assert t.loc["fastv", ("ar_to_diffusion", "shapes_long")] < t.loc["baseline", ("ar_to_diffusion", "shapes_long")]
    tex = F.f3_latex(t)
    assert "\\toprule" in tex and "from\\_scratch" in tex and "\\begin{tabular}" in tex
    fig = F.f3_method_task(summ, retention=0.5)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "method" and len(ax.texts) == 12  # 3 rows x 4 columns annotated


def test_f4_information_loss(paper):
    fig = F.f4_information_loss(paper.traces, paper.runs)
    axes = data_axes(fig)
    assert len(axes) == 8  # 2 metrics x 4 (family, task)
    assert axes[0].get_ylabel() == "KL(baseline || pruned)" and axes[4].get_ylabel() == "top-1 agreement"
    for ax in axes:
        assert len(series(ax)) == 4  # 2 pruning steps x 2 modes
        assert {ln.get_linestyle() for ln in series(ax)} == {"-", "--"}
    c = F.recovery_curves(paper.traces, paper.runs)
    assert (c["step"] >= c["prune_step"]).all()


def test_f5_schedules(summ):
    fig = F.f5_schedules(summ)
    axes = data_axes(fig)
    assert len(axes) == 12  # 3 retentions x 4 (family, task)
    assert axes[0].get_ylabel() == "accuracy (retention 0.75)"
    assert axes[0].get_xlabel() == "pruning start (fraction of steps)"
    for ax in axes:
        s = series(ax)
        assert len(s) == 4  # (fastv, random) x (single-decision curve, progressive line)
        assert sorted(ln.get_linestyle() for ln in s) == ["-", "-", ":", ":"]
    mid = axes[4]  # retention 0.5, from_scratch short: once at 0 + late at 0.5 + recovery run at 0.5
    curve = [ln for ln in series(mid) if ln.get_linestyle() == "-"][0]
    assert list(curve.get_xdata()) == [0.0, 0.5]


def test_f6_layer_skip(summ):
    fig = F.f6_layer_skip(summ)
    axes = data_axes(fig)
    assert len(axes) == 8  # accuracy + speedup rows x 4 columns
    assert axes[0].get_xlabel() == "layers skipped" and axes[0].get_ylabel() == "accuracy"
    for ax in axes:
        labels = sorted(ln.get_label() for ln in series(ax))
        assert labels == ["early layers", "middle layers"]
        mid = [ln for ln in series(ax) if ln.get_label() == "middle layers"][0]
        assert list(mid.get_xdata()) == [0, 1, 2]  # 0 = the baseline


def test_f7_pareto(summ):
    fig = F.f7_pareto(summ)
    axes = data_axes(fig)
    assert len(axes) == 4
    for ax in axes:
        scat = [c for c in ax.collections if c.get_gid() == "series"]
        assert sorted(c.get_label() for c in scat) == ["baseline", "blind", "fastv", "random", "skip"]
        front = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto"]
        assert len(front) == 1
        x, y = front[0].get_xdata(), front[0].get_ydata()
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
    assert axes[0].get_xlabel() == "relative FLOPs" and axes[0].get_ylabel() == "accuracy"
    pts = F.pareto_points(summ)
    # nothing off the front beats a front point at no more cost
    for (_, _), g in pts.groupby(["family", "task"]):
        for _, r in g[~g["on_front"]].iterrows():
            f = g[g["on_front"] & (g["rel_flops"] <= r["rel_flops"])]
            assert len(f) and f["accuracy"].max() >= r["accuracy"]


def test_f8_signal_agreement(paper, opposite):
    fig = F.f8_signal_agreement(paper.traces, paper.runs)
    axes = data_axes(fig)
    assert len(axes) == 2  # signals recorded on long answers, both families
    assert len(axes[0].texts) == 9  # 3 x 3 annotated matrix
    assert "sample-steps" in axes[0].get_title()
    c = F.signal_correlations(paper.traces, paper.runs)
    assert set(zip(c["a"], c["b"])) == {("importance", "answer_logit"), ("importance", "drop_one_kl"),
                                        ("answer_logit", "drop_one_kl")}  # in the order of F.SIGNALS
    m = F.signal_matrix(c)
    assert m.shape == (3, 3) and np.allclose(np.diag(m), 1) and (m.to_numpy() > 0.6).all()
    low = F.signal_matrix(F.signal_correlations(opposite.traces, opposite.runs))
    assert abs(low.loc["importance", "drop_one_kl"]) < 0.3


def test_f9_importance_grid_and_gif(paper, tmp_path):
    chosen = F.choose_samples(paper.traces, paper.runs, n=2)
    info = run_info(paper.runs)
    assert len(chosen) == 2 and info.loc[chosen[0][0], "method"] == "fastv"  # a pruned run is preferred
    fig = F.f9_importance_grid(paper.traces, paper.outcomes, paper.runs, chosen, max_steps=8)
    assert len(fig.axes) == 16  # 2 samples x 8 steps
    first, later = fig.axes[0], fig.axes[1]
    assert len(first.images) == 2 and len(later.images) == 2  # image + overlay
    assert not [p for p in first.patches if p.get_gid() == "kept"]  # before the pruning decision takes effect
    assert len([p for p in later.patches if p.get_gid() == "kept"]) == 40  # kept tokens outlined
    assert first.images[0].get_array().shape[:2] == (72, 72)
    frames = F.importance_frames(paper.traces, paper.outcomes, *chosen[0])
    ans = paper.outcomes.set_index(["run_id", "sample_id"]).loc[chosen[0], "answer"]
    assert frames["steps"][-1]["text"] == ans  # fully unmasked at the last step
    assert "_" in frames["steps"][0]["text"]  # still masked early on
    gif = F.f9_animation(paper.traces, paper.outcomes, *chosen[0], tmp_path / "f9.gif")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 16


def test_figures_say_when_data_is_missing():
    empty = Results()
    fig = F.f1_attention(empty.traces, empty.runs)
    assert "no visual_share" in fig.axes[0].texts[0].get_text()
    assert F.f3_table(pd.DataFrame(columns=["strategy", "method", "skip_n", "schedule", "prune_step", "retention",
                                            "family", "task", "accuracy"])).empty


# -- findings -------------------------------------------------------------------------------------
def test_interval_logic():
    assert FD.test_interval(0.1, 0.2, 0.0, "at_least") is True
    assert FD.test_interval(-0.2, -0.1, 0.0, "at_least") is False
    assert FD.test_interval(-0.1, 0.1, 0.0, "at_least") is None
    assert FD.test_interval(0.0, 0.0, 0.0, "above") is False and FD.test_interval(0.0, 0.0, 0.0, "at_least") is True
    assert FD.test_interval(-0.3, -0.2, -0.1, "at_most") is True
    assert FD.test_interval(-0.2, -0.1, -0.2, "below") is False and FD.test_interval(-0.4, -0.3, -0.2, "below") is True


def test_combine_rules():
    t = FD.Condition("t", 0.0, "at_least", 1.0, 0.5, 1.5, 10)
    f = FD.Condition("f", 0.0, "at_least", -1.0, -1.5, -0.5, 10)
    i = FD.Condition("i", 0.0, "at_least", 0.0, -0.5, 0.5, 10)
    m = FD.Condition("m", 0.0, "at_least")
    opt = FD.Condition("o", 0.0, "at_least", required=False)
    assert FD.combine([t, t]) == "supported"
    assert FD.combine([t, f, m]) == "contradicted"
    assert FD.combine([t, m]) == "not measured"
    assert FD.combine([t, i]) == "inconclusive"
    assert FD.combine([t, opt]) == "supported"
    assert FD.combine([]) == "not measured"


@pytest.mark.parametrize("number", MEASURABLE)
def test_finding_supported_on_tables_built_to_support_it(paper_verdicts, number):
    v = paper_verdicts[number]
    assert v.verdict == "supported", [(c.name, c.estimate, c.low, c.high, c.outcome_text) for c in v.conditions]
    assert v.criterion and all(c.n > 0 for c in v.conditions if c.required)


@pytest.mark.parametrize("number", MEASURABLE)
def test_finding_contradicted_on_tables_built_to_contradict_it(opposite_verdicts, number):
    v = opposite_verdicts[number]
    assert v.verdict == "contradicted", [(c.name, c.estimate, c.low, c.high, c.outcome_text) for c in v.conditions]
    assert any(c.outcome is False for c in v.conditions)


def test_literature_claim_is_not_measured(paper_verdicts):
    v = paper_verdicts[11]
    assert v.verdict == "not measured" and not v.conditions and "literature" in v.criterion


def test_findings_not_measured_without_data():
    verdicts = FD.evaluate(Results())
    assert [v.verdict for v in verdicts] == ["not measured"] * 11


def test_missing_family_is_not_measured():
    only_scratch = make_tables(models=("toy-scratch",), methods=("fastv",), retentions=(0.25,), schedules=("once",),
                               skips=(), recovery_starts=(), attention=False, signals=False, n_samples=4)
    v = {x.number: x for x in FD.evaluate(only_scratch, only=[4, 6, 7])}
    assert v[4].conditions[0].outcome is True  # from-scratch: a significant drop at retention 0.25
    assert v[4].verdict == "not measured"  # ... but the AR-to-diffusion half has no data
    assert v[6].verdict == "not measured" and v[7].verdict == "not measured"


def test_inconclusive_when_the_ci_straddles_the_criterion():
    def flat(ctx):
        return {"delta": 0.0, "rel_flops": 0.5, "rel_seconds": 0.5}

    noisy = make_tables(effect=flat, noise=0.25, n_samples=6, models=("toy-scratch",), methods=("fastv",),
                        retentions=(0.5,), skips=(), recovery_starts=(), attention=False, signals=False)
    v = FD.evaluate(noisy, only=[8])[0]
    c = v.conditions[0]
    assert c.low < 0.0 < c.high and v.verdict == "inconclusive"


def test_criteria_come_from_the_config(paper):
    cfg = FD.load_config()
    assert cfg["findings"][1]["params"]["max_drop"] == 0.02
    cfg["findings"][1]["params"]["max_drop"] = 0.5  # everything counts as redundant now
    v = FD.evaluate(paper, config=cfg, only=[1])[0]
    assert v.verdict == "contradicted"
    with pytest.raises(ValueError, match="unknown check"):
        FD.evaluate(paper, config={"findings": {1: {"check": "nope"}}})


def test_findings_markdown(paper_verdicts, tmp_path):
    path = FD.write_findings(list(paper_verdicts.values()), tmp_path / "FINDINGS.md", source="crafted")
    text = path.read_text()
    assert text.startswith("# Findings") and "`crafted`" in text
    for n in range(1, 12):
        assert f"\n## {n}. " in text
    assert text.count("**supported**") >= 10 + 10  # summary table + sections
    frame = FD.verdicts_frame(list(paper_verdicts.values()))
    assert set(frame["finding"]) == set(range(1, 12)) and set(frame["verdict"]) == {"supported", "not measured"}


# -- command line ---------------------------------------------------------------------------------
def test_cli_writes_figures_and_skips_missing_ones(tmp_path, capsys):
    root = make_results(tmp_path / "pruning", models=("toy-scratch", "toy-ar2diff"), tasks=("shapes_short",),
                        methods=("fastv",), retentions=(0.5, 0.25), schedules=("once",), skips=((1, "middle"),),
                        recovery_starts=(), attention=False, signals=False, n_samples=3)
    assert F.main([str(root)]) == 0
    out = capsys.readouterr().out
    for fig_id, sweep in (("F1", "attention"), ("F4", "recovery"), ("F5", "recovery"), ("F8", "paper"),
                          ("F9", "paper")):
        assert f"{fig_id} skipped" in out and f"+sweep={sweep}" in out
    figs = root / "figures"
    for name in ("F2_retention", "F3_method_task", "F6_layer_skip", "F7_pareto"):
        assert (figs / f"{name}.png").is_file() and (figs / f"{name}.pdf").is_file()
    assert (figs / "F3_method_task.tex").is_file()
    assert not (figs / "F1_attention.png").exists()
    assert (root / "FINDINGS.md").read_text().startswith("# Findings")
    assert F.main([str(tmp_path / "nothing-here")]) == 1
