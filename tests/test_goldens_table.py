"""docs/adapters.md's agreement table, rebuilt from tests/goldens.

Per model and dtype: the largest |logit difference| of one full pass on the toolkit's own prompt
(the four fixed images; at the goldens' sampled ids), the top-1 agreement over the whole vocabulary,
and the token agreement of the toolkit's native sampler with the original's decoding on the
model's main settings. ``REGEN_GOLDEN_TABLE=1 python -m pytest tests/test_goldens_table.py`` writes
the table into docs/adapters.md; otherwise the test fails when the docs differ from what it measures.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from redundancy.generate import generate_from_prompt
from redundancy.models.goldens import QUESTION, available, load_golden, make_image
from redundancy.models.goldens.toolkit import full_pass, load_adapter
from redundancy.sampling import DiffusionSampler

DOCS = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
START, END = "<!-- golden-table:start -->", "<!-- golden-table:end -->"
IMAGES = ("small", "square", "tall", "wide")


def _pass(ad, p, g, dtype, image, prefix=""):
    s = full_pass(ad, p, g.tensors["float32/sel_ids"])
    d = float(np.abs(s.logits_sel - g.get(dtype, image, prefix + "logits_sel")[s.rows]).max())
    return d, (s.argmax == g.get(dtype, image, prefix + "argmax")[s.rows]).tolist()


def _tokens(ad, p, cfg, want):
    out = generate_from_prompt(ad, p, DiffusionSampler(cfg)).trajectory.tokens[0].numpy()
    return (out[: len(want)] == want).tolist()


def measure_llada_v(tmp, dtype):
    from redundancy.testing.formats.llada_v import write_real_checkpoint
    from tests.test_goldens_llada_v import sampler_runs, toolkit_config

    g = load_golden("llada-v")
    ad = load_adapter("llada-v", write_real_checkpoint(tmp / "llada-v"), dtype)
    diffs, top1, tok = [], [], []
    for im in IMAGES:
        d, a = _pass(ad, ad.build_prompt([make_image(im)], [QUESTION], 8), g, dtype, im)
        diffs.append(d)
        top1 += a
    for setting, name in sampler_runs():
        if name.startswith("pad."):
            continue
        kw = g.meta["dtypes"][dtype]["sampler"][setting]
        p = ad.build_prompt([make_image(name)], [QUESTION], kw["gen_length"])
        tok += _tokens(ad, p, toolkit_config(kw), g.get(dtype, name, f"{setting}/output"))
    return max(diffs), top1, tok


def measure_mmada(tmp, dtype):
    from redundancy.testing.formats.mmada import write_real_checkpoint
    from tests.test_goldens_mmada import G, sampler_of, toolkit_prompt

    ad = load_adapter("mmada", write_real_checkpoint(tmp / "mmada"), dtype)
    diffs, top1, tok = [], [], []
    for im in IMAGES:
        p = toolkit_prompt(ad, im)
        d, a = _pass(ad, p, G, dtype, im)
        diffs.append(d)
        top1 += a
        tok += _tokens(ad, p, sampler_of(dtype, "vlmevalkit").config, G.get(dtype, im, "output"))
    return max(diffs), top1, tok


def measure_dimple(tmp, dtype):
    from redundancy.testing.formats.dimple import write_real_checkpoint
    from tests.test_goldens_dimple import CASES, G, toolkit_sampler

    ad = load_adapter("dimple", write_real_checkpoint(tmp / "dimple"), dtype)
    diffs, top1, tok = [], [], []
    for im in IMAGES:
        p = ad.build_prompt([make_image(im)], [QUESTION], 8)
        d, a = _pass(ad, p, G, dtype, im)
        diffs.append(d)
        top1 += a
        tok += _tokens(ad, p, toolkit_sampler(CASES["confident_nocache"]), G.get(dtype, im, "confident_nocache/output"))
    return max(diffs), top1, tok


def measure_llada_generate(tmp, dtype):
    from redundancy.testing.formats.llada_generate import write_real_checkpoint
    from tests.test_goldens_llada_generate import CASES, adapter_for, run_toolkit, text_prompt

    g = load_golden("llada-generate")
    ad = adapter_for(write_real_checkpoint(tmp / "llada-generate"), dtype)
    diffs, top1, tok = [], [], []
    for L in (8, 16):
        case = next(c for c in CASES if g.meta["dtypes"][dtype]["per_image"][c]["sampler"]["gen_length"] == L)
        d, a = _pass(ad, text_prompt(ad, g.get(dtype, case, "prompt_ids"), L), g, dtype, case)
        diffs.append(d)
        top1 += a
    for case in CASES:
        replay = g.get(dtype, case, "random_conf") if g.has(dtype, case, "random_conf") else None
        _, out, _ = run_toolkit(ad, g, dtype, case, replay)
        tok += (out == g.get(dtype, case, "output")).tolist()
    return max(diffs), top1, tok


def _measure_lavida(model, module, tmp, dtype):
    import importlib

    fmt = importlib.import_module(f"redundancy.testing.formats.{module}")
    t = importlib.import_module(f"tests.test_goldens_{module}")
    g = load_golden(model)
    ad = load_adapter(model, fmt.write_real_checkpoint(tmp / model), dtype)
    diffs, top1, tok = [], [], []
    for im in IMAGES:
        p = ad.build_prompt([make_image(im)], [QUESTION], 8)
        d, a = _pass(ad, p, g, dtype, im)
        diffs.append(d)
        top1 += a
        kw, _, output = t.golden_run(g, dtype, im, "study")
        tok += _tokens(ad, p, t.toolkit_config(kw), output)
    return max(diffs), top1, tok


def measure_lavida_llada(tmp, dtype):
    return _measure_lavida("lavida-llada", "lavida_llada", tmp, dtype)


def measure_lavida_dream(tmp, dtype):
    return _measure_lavida("lavida-dream", "lavida_dream", tmp, dtype)


MEASURES = {"llada-v": measure_llada_v, "lavida-llada": measure_lavida_llada, "lavida-dream": measure_lavida_dream, "dimple": measure_dimple, "mmada": measure_mmada,
            "llada-generate": measure_llada_generate}


def build_table(tmp: Path) -> str:
    torch.set_num_threads(1)
    rows = ["| model | upstream commit | dtype | max abs logit diff | top-1 agreement | token agreement |",
            "|---|---|---|---|---|---|"]
    for model in [m for m in MEASURES if m in available()]:
        commit = load_golden(model).meta["upstream"]["commit"][:12]
        for dtype in ("float32", "bfloat16"):
            d, top1, tok = MEASURES[model](tmp, dtype)
            rows.append(f"| {model} | {commit} | {dtype} | {d:.1e} | {np.mean(top1):.3f} | {np.mean(tok):.3f} |")
    return "\n".join(rows)


@pytest.mark.slow
def test_docs_table_is_what_the_goldens_give(tmp_path):
    table = build_table(tmp_path)
    text = DOCS.read_text()
    block = f"{START}\n{table}\n{END}"
    if os.environ.get("REGEN_GOLDEN_TABLE"):
        DOCS.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: block, text, flags=re.S))
        return
    assert START in text, "docs/adapters.md has no golden table; run with REGEN_GOLDEN_TABLE=1"
    assert text[text.index(START): text.index(END) + len(END)] == block
