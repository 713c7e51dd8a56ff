"""The work behind ``experiments.run``: a plain function from a config to the outcome table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .generate import generate_from_prompt
from .models import load_model
from .sampling import make_sampler
from .tasks import ShapesTask, generate_batch


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def run(cfg: DictConfig | Mapping) -> pd.DataFrame:
    """Decode ``n_samples`` of ``task`` with ``model`` and ``sampler``; return one row per sample."""
    c = _plain(cfg)
    task = ShapesTask(c["task"]["name"], split=c.get("split", "test"), n=int(c.get("n_samples", 8)))
    sampler_cfg = dict(c.get("sampler") or {})
    kind = sampler_cfg.pop("kind", "diffusion")
    sampler = make_sampler(kind, **sampler_cfg)
    sampler.check(task.answer_length)  # bad settings fail before any compute
    model = load_model(c["model"]["name"])
    rows = []
    bs = int(c.get("batch_size", 16))
    for lo in range(0, len(task), bs):
        batch = generate_batch(task, task.split, range(lo, min(len(task), lo + bs)))
        prompt = model.build_prompt(batch.pil_images(), batch.questions, task.answer_length)
        gen = generate_from_prompt(model, prompt, sampler)
        for s, pred in zip(batch.samples, gen.texts):
            rows.append({"sample_id": s.sample_id, "qtype": s.qtype, "question": s.question, "answer": pred,
                         "reference": s.answer, **task.score(pred, s)})
    table = pd.DataFrame(rows)
    table.attrs["metrics"] = list(task.metrics)
    out = c.get("output")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        table.to_parquet(tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written table
    return table
