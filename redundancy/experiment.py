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

from .config import check_schema, prompt_suffix, to_plain
from .engine import Listener
from .generate import generate_from_prompt
from .models import load_model, model_files
from .models.registry import check_options
from .models.base import Adapter, Prompt
from .models.real import MODELS as REAL_MODELS
from .policies import SCORERS, make_policy
from .policies.pruning import PruneConfig, PruningPolicy
from .policies.skip import LayerSkipPolicy, SkipConfig
from .probes import AnswerSignalProbe, BaselineCache, CostProbe, VisualAttentionProbe, drop_one_oracle
from .probes.divergence import MODES, compare, forced
from .results import (NUMERICS_VERSION, RESULTS_SCHEMA_VERSION, ResultStore, canonical_json, file_fingerprint,
                      make_run_row, read_table, run_id)
from .results.summary import write_summary
from .sampling import make_sampler
from .tasks import ShapesTask, generate_batch

#: task.kind: the in-process synthetic benchmark, or any lmms-eval task (the eval extra)
TASK_KINDS: tuple[str, ...] = ("shapes", "lmms")
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
#: model fields that change what a run computes (all of them; ``generation`` reaches the identity
#: through the sampler settings it gives)
MODEL_IDENTITY_FIELDS = ("name", "checkpoint", "device", "dtype", "attn_implementation", "options")


def model_identity(mc: Mapping[str, Any]) -> dict[str, Any]:
    """Every model field that changes what runs, and a fingerprint of every file its loader reads
    (so new weights at the same path, or a checkpoint under a reused name, are a new model)."""
    ident = {k: mc.get(k) for k in MODEL_IDENTITY_FIELDS}
    ident["options"] = dict(mc.get("options") or {})
    check_options(mc["name"], ident["options"])
    ident["device"] = ident["device"] or "cpu"
    ident["dtype"] = ident["dtype"] or "float32"
    ident["attn_implementation"] = ident["attn_implementation"] or "eager"
    if mc.get("checkpoint") and not Path(mc["checkpoint"]).is_dir():
        raise ValueError(f"model.checkpoint {str(mc['checkpoint'])!r} is not a directory")
    files = model_files(mc["name"], mc.get("checkpoint"))
    ident["files"] = file_fingerprint(files) if files else None
    return ident


def weights_fingerprint(mc: Mapping[str, Any]) -> str:
    """The fingerprint of the files a model's loader reads ('none' for a model built in code)."""
    return model_identity(mc)["files"] or "none"


def get_model(mc: Mapping[str, Any]) -> Adapter:
    """The model of a config, loaded once per process per :func:`model_identity`."""
    key = canonical_json(model_identity(mc))
    if key not in _MODELS:
        kwargs = dict(mc.get("options") or {})
        if mc.get("checkpoint"):
            kwargs["checkpoint"] = str(Path(mc["checkpoint"]))
        if mc["name"] in REAL_MODELS:  # load straight into the target dtype and device
            kwargs.update(dtype=mc.get("dtype", "float32"), device=mc.get("device", "cpu"))
        model = load_model(mc["name"], **kwargs)
        dtype = getattr(torch, mc.get("dtype", "float32"), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {mc.get('dtype')!r}; choose e.g. float32, bfloat16")
        model = model.to(device=mc.get("device", "cpu"), dtype=dtype).eval()
        model.set_attn_implementation(mc.get("attn_implementation", "eager"))
        model.identity = key  # the caches of prompts and baselines are keyed by it
        _MODELS[key] = model
    return _MODELS[key]


def native_sampler(c: Mapping[str, Any], answer_length: int | None = None) -> dict:
    """``sampler.kind=native``: the model's own generation settings for the task's answer type.

    ``model.generation`` maps an answer type (``short``, ``long``, ...) to sampler fields; the task's
    ``answer_type`` picks one (the shapes tasks: short / long). A task with its own answer length
    (``answer_length``) keeps it, and ``steps`` / ``block_length`` are scaled to keep the model's
    tokens per step and number of blocks.
    """
    gen = c["model"].get("generation") or {}
    kind = c["task"].get("answer_type") or ("long" if c["task"]["name"].endswith("_long") else "short")
    if kind not in gen:
        raise ValueError(f"sampler.kind=native needs model.generation.{kind} for model {c['model']['name']!r}; "
                         f"it has: {', '.join(gen) or 'none'}")
    base = {k: v for k, v in c["sampler"].items() if k != "kind"}
    native = {k: v for k, v in gen[kind].items() if k not in ("answer_length", "prompt_suffix")}
    length = gen[kind].get("answer_length")
    if answer_length is not None and length and length != answer_length:
        if native.get("steps"):
            native["steps"] = max(1, -(-native["steps"] * answer_length // length))
        if native.get("block_length"):
            blocks = max(1, length // native["block_length"])
            native["block_length"] = answer_length // blocks if answer_length % blocks == 0 else answer_length
            if native.get("steps") and native["steps"] % (answer_length // native["block_length"]):
                native["steps"] = answer_length // native["block_length"] * max(
                    1, native["steps"] // (answer_length // native["block_length"]))
    unknown = sorted(set(native) - set(base) - {"kind"})
    if unknown:
        raise ValueError(f"model.generation.{kind} has unknown sampler field(s) {unknown}; valid: {sorted(base)}")
    return {"kind": "diffusion", **base, **native}


def question_suffix(c: Mapping[str, Any]) -> str:
    """Text appended to every question: the ``prompt_suffix`` of the model's generation entry for the
    task's answer type when the sampler is ``native`` (LLaDA-V's " /no_think" / " /think")."""
    if c["sampler"].get("kind") != "native":
        return ""
    gen = c["model"].get("generation") or {}
    kind = c["task"].get("answer_type") or ("long" if c["task"]["name"].endswith("_long") else "short")
    return prompt_suffix(gen.get(kind) or {}, f"model.generation.{kind}")


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
    """Validate a config and derive its identity (raises ValueError naming any bad value).

    An lmms-eval task (``task.kind: lmms``) gets a :class:`redundancy.lmms.hydra_task.LmmsPlan`.
    """
    check_schema(cfg)
    c = to_plain(cfg)
    if _task_kind(c) == "lmms":
        from .lmms.hydra_task import plan_lmms

        return plan_lmms(c)
    n = n_samples(c)
    task = ShapesTask(c["task"]["name"], split=c["task"].get("split", "test"), n=n)
    headline = c["task"].get("headline")
    if headline and headline not in task.metrics:
        raise ValueError(f"task.headline {headline!r} is not a metric of {task.name}; choose one of: {', '.join(task.metrics)}")
    sc = native_sampler(c, task.answer_length) if c["sampler"].get("kind") == "native" else dict(c["sampler"])
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
        "numerics_version": NUMERICS_VERSION,
        "results_schema_version": RESULTS_SCHEMA_VERSION,
        "model": model_identity(c["model"]),
        "task": {"name": task.name, "split": task.split, "n": n},
        "sampler": {"kind": kind, **sc},
        "policy": {"blind": True} if blind else effective_policy(c["policy"], steps, model.num_layers),
        "probe": c.get("probe"),
        "batch_size": c.get("batch_size", 16),
        "prompt_suffix": question_suffix(c),
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


def get_prompt(model: Adapter, mc: Mapping, task: ShapesTask, indices: range,
               suffix: str = "") -> tuple[Prompt, list]:
    """The prompt of a fixed batch of samples (vision features computed once per process);
    ``suffix`` is appended to every question."""
    key = (getattr(model, "identity", None) or mc["name"], task.name, task.split, indices.start, indices.stop, suffix)
    if key not in _PROMPTS:
        batch = generate_batch(task, task.split, indices)
        with torch.no_grad():
            prompt = model.build_prompt(batch.pil_images(), [q + suffix for q in batch.questions], task.answer_length)
        _PROMPTS[key] = (prompt, batch.samples)
    return _PROMPTS[key]


def probe_listeners(model: Adapter, probe_cfg: Mapping[str, Any]) -> list[Listener]:
    """The observers a probe config asks for beyond cost (visual attention, answer signals)."""
    listeners: list[Listener] = []
    if probe_cfg.get("attention"):
        listeners.append(VisualAttentionProbe(per_head=probe_cfg.get("attention_per_head", False),
                                              importance_steps=probe_cfg.get("importance_steps", []),
                                              importance_layers=probe_cfg.get("importance_layers")))
    if probe_cfg.get("signals") or probe_cfg.get("answer_logit_layers"):
        tok = model.tokenizer
        listeners.append(AnswerSignalProbe(logit_layers=probe_cfg.get("answer_logit_layers") or [],
                                           logit_steps=None, end_ids=[tok.end_id, tok.pad_id]))
    return listeners


@dataclass
class BatchResult:
    """One decoded batch: the generation, its tidy trace rows and per-sample cost counters."""

    generation: Any  # redundancy.generate.Generation
    traces: list[dict]  # rows with sample_id (per-batch rows carry the batch id)
    seconds: float  # wall-clock of the decode, whole batch
    cost: CostProbe
    n_visual: list | None  # visual tokens alive at the end, per sample (None: not observed)
    baseline: Any  # the unpruned baseline's trajectory when the run has a policy, else None
    has_policy: bool


def decode_batch(model: Adapter, prompt: Prompt, sampler: Any, c: Mapping[str, Any], ids: list[str],
                 batch_id: str, full_prompt: Prompt | None = None, blind: bool = False) -> BatchResult:
    """Decode one batch with the config's policy (``c["policy"]``) and probes (``c["probe"]``).

    ``prompt`` is what the model sees (already without visual tokens for the blind baseline);
    ``full_prompt`` the unmodified prompt the unpruned baseline decodes (default: ``prompt``);
    ``ids`` name the samples of the batch rows and ``batch_id`` the rows that are per batch.
    """
    probe_cfg = c.get("probe") or {}
    modes = probe_cfg.get("information_loss") or []
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown information_loss mode(s) {bad}; choose from: {', '.join(MODES)}")
    policy = build_policy(c["policy"])
    cost = CostProbe()
    kept = _Kept()
    extra = probe_listeners(model, probe_cfg)
    listeners: list = [cost, kept, *extra]
    has_policy = policy is not None or blind
    keep_logits = bool(modes) and has_policy
    t0 = time.perf_counter()
    gen = generate_from_prompt(model, prompt, sampler, policy=policy, listeners=listeners, keep_logits=keep_logits)
    seconds = time.perf_counter() - t0
    baseline = BASELINES.get(model, full_prompt or prompt, ids, sampler) if has_policy else None
    traces: list[dict] = []
    for lst in extra:
        traces += _rows(lst.rows, ids, batch_id)
    traces += _rows(cost.rows, ids, batch_id)
    if keep_logits:
        if "free" in modes:
            lp = [torch.log_softmax(r.logits.float(), -1) for r in gen.trajectory.steps]
            traces += _rows(compare(baseline, lp, "free", gen.trajectory.tokens), ids, None)
        if "forced" in modes:
            traces += _rows(compare(baseline, forced(model, prompt, sampler, build_policy(c["policy"]), baseline),
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
    return BatchResult(gen, traces, seconds, cost, kept.n_visual, baseline, has_policy)


def _task_kind(c: Mapping[str, Any]) -> str:
    kind = c["task"].get("kind", "shapes")
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task.kind {kind!r}; choose one of: {', '.join(TASK_KINDS)}")
    return kind


def run(cfg: Any, store: ResultStore | None = None) -> pd.DataFrame:
    """Run one config (or reuse its finished tables) and return its outcome table."""
    if _task_kind(to_plain(cfg)) == "lmms":  # an lmms-eval task: redundancy/lmms/hydra_task.py
        from .lmms.hydra_task import run_lmms

        return run_lmms(cfg, store)
    p = plan(cfg)
    c = p.config
    root = Path(c.get("results_dir", "results")) / c.get("study", "single")
    store = store or ResultStore(root)
    if store.is_done(p.run_id):
        table = read_table(store.path("outcomes", p.run_id))
        _finish(c, table, p, reused=True)
        return table
    model = get_model(c["model"])
    bs = int(c.get("batch_size", 16))
    blind = p.identity["policy"] == {"blind": True}
    traces, outcomes = [], []
    batches = [range(lo, min(p.n, lo + bs)) for lo in range(0, p.n, bs)]
    bar = tqdm(batches, desc=f"{c['policy'].get('name', 'run')}", leave=False, disable=not c.get("progress", True),
               file=sys.stderr)
    for idx in bar:
        full, samples = get_prompt(model, c["model"], p.task, idx, p.identity["prompt_suffix"])
        ids = [s.sample_id for s in samples]
        batch = decode_batch(model, full.without_visual() if blind else full, p.sampler, c, ids,
                             f"batch{idx.start}", full_prompt=full, blind=blind)
        traces += batch.traces
        gen, cost, baseline = batch.generation, batch.cost, batch.baseline
        for i, (s, text) in enumerate(zip(samples, gen.texts)):
            row = {"sample_id": s.sample_id, "answer": text, "reference": s.answer, "qtype": s.qtype,
                   **p.task.score(text, s)}
            row["baseline_agreement"] = 1.0 if baseline is None else float(
                torch.equal(gen.trajectory.tokens[i], baseline.tokens[i]))
            row.update(
                n_visual_kept=None if batch.n_visual is None else batch.n_visual[i],
                tokens_executed=cost.total_tokens_executed, flops=cost.total_flops,
                seconds=batch.seconds / len(samples), peak_memory_mb=cost.peak_memory_mb,
                baseline_run_id=p.baseline_run_id if batch.has_policy else None,
                image_ref=s.sample_id, grid_h=gen.prompt.grid[0], grid_w=gen.prompt.grid[1],
            )
            outcomes.append(row)
    out_df = pd.DataFrame(outcomes)
    tr_df = pd.DataFrame(traces, columns=["sample_id", "step", "layer", "head", "token", "query_group", "mode",
                                          "metric", "value"])
    row = make_run_row({**p.identity, "label": _label(c, p.identity, model.family)}, weights_hash=weights_fingerprint(c["model"]))
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
