"""The work behind ``experiments.run``: one config in, one run's tables written, the outcome table out.

Within a process, models, prompts (vision features) and unpruned baselines are cached across sweep
points. Each run is identified by the hash of its *effective* configuration (what actually runs:
e.g. schedules that coincide for a task share one run) and written atomically to
``<results_dir>/<study>/``; a rerun skips finished runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from tqdm import tqdm

from .config import to_plain
from .engine import Listener
from .generate import generate_from_prompt
from .models import load_model
from .models.base import Adapter, Prompt
from .policies import SCORERS, make_policy
from .policies.pruning import PruneConfig, PruningPolicy
from .policies.skip import LayerSkipPolicy, SkipConfig
from .probes import AnswerSignalProbe, BaselineCache, CostProbe, VisualAttentionProbe, drop_one_oracle
from .probes.divergence import MODES, compare, forced
from .results import ResultStore, make_run_row, read_table, run_id
from .results.summary import write_summary
from .sampling import make_sampler
from .tasks import ShapesTask, generate_batch

_SWEEP: dict[str, Any] = {"bar": None}
_MODELS: dict[tuple, Adapter] = {}
_PROMPTS: dict[tuple, Prompt] = {}
BASELINES = BaselineCache()


def start_sweep(n_jobs: int) -> None:
    """A progress bar over the jobs of an in-process sweep (called by the union sweeper)."""
    _SWEEP["bar"] = tqdm(total=n_jobs, desc="sweep", unit="run", file=sys.stderr)


def end_sweep() -> None:
    if _SWEEP["bar"] is not None:
        _SWEEP["bar"].close()
    _SWEEP["bar"] = None


def clear_caches() -> None:
    """Forget cached models, prompts and baselines (tests use it)."""
    _MODELS.clear()
    _PROMPTS.clear()
    BASELINES._store.clear()


# -- resolving a config ---------------------------------------------------------------------------
def get_model(mc: Mapping[str, Any]) -> Adapter:
    """The model of a config, loaded once per process."""
    key = (mc["name"], mc.get("checkpoint"), mc.get("device", "cpu"), mc.get("dtype", "float32"))
    if key not in _MODELS:
        kwargs = {}
        if mc.get("checkpoint"):
            path = Path(mc["checkpoint"])
            if not path.is_dir():
                raise ValueError(f"model.checkpoint {str(path)!r} is not a directory")
            kwargs["checkpoint"] = str(path)
        model = load_model(mc["name"], **kwargs)
        dtype = getattr(torch, mc.get("dtype", "float32"), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {mc.get('dtype')!r}; choose e.g. float32, bfloat16")
        model = model.to(device=mc.get("device", "cpu"), dtype=dtype).eval()
        model.set_attn_implementation(mc.get("attn_implementation", "eager"))
        _MODELS[key] = model
    return _MODELS[key]


def n_samples(c: Mapping[str, Any]) -> int:
    """Samples of this run: ``task.n_samples`` or the ``samples[size]`` preset."""
    t = c["task"]
    if t.get("n_samples"):
        return int(t["n_samples"])
    presets = c.get("samples") or {}
    size = c.get("size", "small")
    if size not in presets:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(sorted(presets)) or '(none configured)'}")
    if t["name"] not in presets[size]:
        raise ValueError(f"size {size!r} has no sample count for task {t['name']!r}")
    return int(presets[size][t["name"]])


def build_policy(pc: Mapping[str, Any]):
    """The policy of a config (``prune.method: none`` and no skip: no policy)."""
    prune = dict(pc.get("prune") or {})
    skip = dict(pc.get("skip") or {})
    prune_on = prune.get("method", "none") != "none"
    skip_on = any(skip.get(k) is not None for k in ("layers", "n", "fraction"))
    if not prune_on and not skip_on:
        return None
    if prune_on and prune["method"] not in SCORERS:
        raise ValueError(f"unknown pruning method {prune['method']!r}; choose one of: none, {', '.join(sorted(SCORERS))}")
    return make_policy(prune if prune_on else None, skip if skip_on else None)


def effective_policy(pc: Mapping[str, Any], steps: int, depth: int) -> dict | None:
    """What the policy really does over ``steps`` steps: decisions (step, retention), layers skipped."""
    prune = dict(pc.get("prune") or {})
    skip = dict(pc.get("skip") or {})
    out: dict[str, Any] = {}
    if prune.get("method", "none") != "none":
        pol = PruningPolicy(PruneConfig(**prune))
        c = pol.config
        if c.layer < depth:
            # the schedule knobs are replaced by the decisions they produce over this run's steps;
            # every other knob stays in the identity
            scheduling = {"schedule", "step", "step_fraction", "late_fraction", "progressive_ratios", "ratio"}
            decisions = pol.decisions(steps)
            out["prune"] = {
                **{k: v for k, v in asdict(c).items() if k not in scheduling},
                # VTW keeps no visual token whatever the ratio: only the decision steps matter
                "decisions": [s for s, _ in decisions] if c.method == "vtw" else decisions,
                "persistent": pol.persistent,
            }
    if any(skip.get(k) is not None for k in ("layers", "n", "fraction")):
        sp = LayerSkipPolicy(SkipConfig(**skip))
        layers = sp.resolve(depth)
        if layers:
            out["skip"] = {"layers": layers, "steps": skip.get("steps")}
    return out or None


@dataclass
class Plan:
    """Everything a run needs, resolved and validated before any compute."""

    config: dict
    identity: dict
    run_id: str
    baseline_run_id: str
    task: ShapesTask
    sampler: Any
    steps: int
    n: int


def plan(cfg: Any) -> Plan:
    """Validate a config and derive its identity (raises ValueError naming any bad value)."""
    c = to_plain(cfg)
    n = n_samples(c)
    task = ShapesTask(c["task"]["name"], split=c["task"].get("split", "test"), n=n)
    headline = c["task"].get("headline")
    if headline and headline not in task.metrics:
        raise ValueError(f"task.headline {headline!r} is not a metric of {task.name}; choose one of: {', '.join(task.metrics)}")
    sc = dict(c["sampler"])
    kind = sc.pop("kind", "diffusion")
    if kind == "autoregressive":
        sc = {}
    sampler = make_sampler(kind, **sc)
    steps, _, _ = sampler.check(task.answer_length)
    model = get_model(c["model"])
    policy = build_policy(c["policy"])
    prefix = bool(c["sampler"].get("prefix_cache")) and kind == "diffusion"
    if policy is not None:
        policy.validate(model.num_layers, steps, prefix)
    blind = bool(c["policy"].get("blind"))
    if blind and policy is not None:
        raise ValueError("policy.blind withdraws every visual token; it cannot be combined with prune or skip")
    ident = {
        "model": {k: c["model"].get(k) for k in ("name", "checkpoint", "dtype")},
        "task": {"name": task.name, "split": task.split, "n": n},
        "sampler": {"kind": kind, **sc},
        "policy": {"blind": True} if blind else effective_policy(c["policy"], steps, model.num_layers),
        "probe": c.get("probe"),
        "batch_size": c.get("batch_size", 16),
    }
    base = {**ident, "policy": None}  # the same run (same probes) without any policy
    return Plan(c, ident, run_id(ident), run_id(base), task, sampler, steps, n)


# -- running ----------------------------------------------------------------------------------------
class _Kept(Listener):
    """Visual tokens alive at the last layer of the last decoding pass."""

    def __init__(self) -> None:
        self.n_visual: list[int] | None = None

    def on_forward_end(self, ctx, output) -> None:
        if ctx.is_decode and ctx.phase != "prefill":
            vis = output.state.visual_slots(ctx.prompt.is_visual())
            self.n_visual = vis.sum(1).tolist()
            if ctx.phase == "cached":  # the cached prompt holds the visual tokens
                self.n_visual = [None] * ctx.prompt.batch_size


def get_prompt(model: Adapter, mc: Mapping, task: ShapesTask, indices: range) -> tuple[Prompt, list]:
    """The prompt of a fixed batch of samples (vision features computed once per process)."""
    key = (mc["name"], mc.get("checkpoint"), task.name, task.split, indices.start, indices.stop)
    if key not in _PROMPTS:
        batch = generate_batch(task, task.split, indices)
        with torch.no_grad():
            prompt = model.build_prompt(batch.pil_images(), batch.questions, task.answer_length)
        _PROMPTS[key] = (prompt, batch.samples)
    return _PROMPTS[key]


def run(cfg: Any, store: ResultStore | None = None) -> pd.DataFrame:
    """Run one config (or reuse its finished tables) and return its outcome table."""
    p = plan(cfg)
    c = p.config
    root = Path(c.get("results_dir", "results")) / c.get("study", "single")
    store = store or ResultStore(root)
    if store.is_done(p.run_id):
        table = read_table(store.path("outcomes", p.run_id))
        _finish(c, table, p, reused=True)
        return table
    model = get_model(c["model"])
    probe_cfg = c.get("probe") or {}
    bs = int(c.get("batch_size", 16))
    traces, outcomes = [], []
    batches = [range(lo, min(p.n, lo + bs)) for lo in range(0, p.n, bs)]
    bar = tqdm(batches, desc=f"{c['policy'].get('name', 'run')}", leave=False, disable=not c.get("progress", True),
               file=sys.stderr)
    for idx in bar:
        prompt, samples = get_prompt(model, c["model"], p.task, idx)
        if p.identity["policy"] == {"blind": True}:
            prompt = prompt.without_visual()
        ids = [s.sample_id for s in samples]
        policy = build_policy(c["policy"])
        cost = CostProbe()
        kept = _Kept()
        listeners: list = [cost, kept]
        if probe_cfg.get("attention"):
            listeners.append(VisualAttentionProbe(per_head=probe_cfg.get("attention_per_head", False),
                                                  importance_steps=probe_cfg.get("importance_steps", []),
                                                  importance_layers=probe_cfg.get("importance_layers")))
        if probe_cfg.get("signals") or probe_cfg.get("answer_logit_layers"):
            tok = model.tokenizer
            listeners.append(AnswerSignalProbe(logit_layers=probe_cfg.get("answer_logit_layers") or [],
                                               logit_steps=None, end_ids=[tok.end_id, tok.pad_id]))
        has_policy = policy is not None or p.identity["policy"] is not None
        keep_logits = bool(probe_cfg.get("information_loss")) and has_policy
        t0 = time.perf_counter()
        gen = generate_from_prompt(model, prompt, p.sampler, policy=policy, listeners=listeners,
                                   keep_logits=keep_logits)
        seconds = time.perf_counter() - t0
        baseline = None
        if has_policy:
            full, _ = get_prompt(model, c["model"], p.task, idx)
            baseline = BASELINES.get(model, full, ids, p.sampler)
        for lst in listeners[2:]:
            traces += _rows(lst.rows, ids, f"batch{idx.start}")
        traces += _rows(cost.rows, ids, f"batch{idx.start}")
        if keep_logits:
            modes = probe_cfg.get("information_loss") or []
            bad = [m for m in modes if m not in MODES]
            if bad:
                raise ValueError(f"unknown information_loss mode(s) {bad}; choose from: {', '.join(MODES)}")
            lp = [torch.log_softmax(r.logits.float(), -1) for r in gen.trajectory.steps] if "free" in modes else []
            if "free" in modes:
                traces += _rows(compare(baseline, lp, "free", gen.trajectory.tokens), ids, None)
            if "forced" in modes:
                traces += _rows(compare(baseline, forced(model, prompt, p.sampler, build_policy(c["policy"]), baseline),
                                        "forced"), ids, None)
        for step in probe_cfg.get("oracle_steps") or []:
            if step < len(gen.trajectory.steps):
                x = gen.trajectory.steps[step].x_before
                full_ids = prompt.input_ids.clone()
                full_ids[:, prompt.answer_index] = x
                orac = drop_one_oracle(model, prompt, full_ids)
                for i in range(orac.shape[0]):
                    for t, v in enumerate(orac[i].tolist()):
                        traces.append(dict(sample_id=ids[i], step=step, layer=None, head=None, token=t,
                                           query_group="visual", mode=None, metric="drop_one_kl", value=v))
        for i, (s, text) in enumerate(zip(samples, gen.texts)):
            row = {"sample_id": s.sample_id, "answer": text, "reference": s.answer, "qtype": s.qtype,
                   **p.task.score(text, s)}
            row["baseline_agreement"] = 1.0 if baseline is None else float(
                torch.equal(gen.trajectory.tokens[i], baseline.tokens[i]))
            row.update(
                n_visual_kept=None if kept.n_visual is None else kept.n_visual[i],
                tokens_executed=cost.total_tokens_executed, flops=cost.total_flops,
                seconds=seconds / len(samples), peak_memory_mb=cost.peak_memory_mb,
                baseline_run_id=p.baseline_run_id if has_policy else None,
                image_ref=s.sample_id, grid_h=prompt.grid[0], grid_w=prompt.grid[1],
            )
            outcomes.append(row)
    out_df = pd.DataFrame(outcomes)
    tr_df = pd.DataFrame(traces, columns=["sample_id", "step", "layer", "head", "token", "query_group", "mode",
                                          "metric", "value"])
    row = make_run_row({**p.identity, "label": _label(c, p.identity, model.family)}, weights_hash=_weights_hash(c["model"]))
    row["run_id"] = p.run_id
    store.write_run(row, tr_df, out_df)
    table = read_table(store.path("outcomes", p.run_id))
    _finish(c, table, p, reused=False)
    return table


def _rows(rows: list[dict], ids: list[str], batch_id: str | None) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        s = r.pop("sample", None)
        r["sample_id"] = ids[s] if s is not None else batch_id
        r.setdefault("mode", None)
        out.append(r)
    return out


def _label(c: Mapping, identity: Mapping, family: str) -> dict:
    """Human-readable labels of a run (kept in the runs table, not in the identity).

    Settings that do not apply to the run (a baseline's retention, a VTW ratio) are left empty.
    """
    pol = c["policy"]
    eff = identity.get("policy") or {}
    pr, sk = pol.get("prune") or {}, pol.get("skip") or {}
    prune_on, skip_on = "prune" in eff, "skip" in eff
    return {
        "family": family,
        "policy": pol.get("name", "none"),
        "method": "blind" if eff.get("blind") else (pr.get("method") if prune_on else "none"),
        "schedule": pr.get("schedule") if prune_on else None,
        "ratio": pr.get("ratio") if prune_on and pr.get("method") != "vtw" else None,
        "layer": pr.get("layer") if prune_on else None,
        "skip_n": len(eff["skip"]["layers"]) if skip_on else None,
        "skip_position": sk.get("position") if skip_on and sk.get("layers") is None else None,
    }


_HASHES: dict[tuple, str] = {}


def _weights_hash(mc: Mapping) -> str:
    """sha256 over every parameter of the model (computed once per process and model)."""
    import hashlib

    key = (mc["name"], mc.get("checkpoint"))
    if key not in _HASHES:
        h = hashlib.sha256()
        for k, v in sorted(get_model(mc).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def _finish(c: Mapping, table: pd.DataFrame, p: Plan, reused: bool) -> None:
    if _SWEEP["bar"] is not None:
        _SWEEP["bar"].update(1)
    if c.get("output"):
        from .results import write_table

        write_table(table, c["output"])
    if c.get("print_answers", True):
        head = c["task"].get("headline") or p.task.metrics[0]
        note = " (finished earlier, reused)" if reused else ""
        acc = table[head].mean() if len(table) else float("nan")
        print(f"[{p.run_id}] {c['model']['name']} {p.task.name} policy={c['policy'].get('name')}: "
              f"{head}={acc:.3f} over {len(table)} samples{note}")


try:  # Hydra callback: the summary at the end of a multirun
    from hydra.experimental.callback import Callback

    class SummaryCallback(Callback):
        """Writes and prints ``<results_dir>/<study>/summary.parquet`` when a sweep ends."""

        def on_multirun_end(self, config, **kwargs) -> None:
            root = Path(config.get("results_dir", "results")) / config.get("study", "single")
            if root.is_dir():
                print(f"\nsummary of {root}:")
                write_summary(root)
except ImportError:  # pragma: no cover
    pass
