"""MMaDA against what the ORIGINAL code computed (tests/goldens/mmada, written by
``python -m redundancy.models.goldens mmada``; no upstream code needed here).

The goldens start from fixed VQ codes per image (MAGVIT-v2 is hub-only; field ``codes``). Two prompt
layouts of the original are stored: the VLMEvalKit wrapper's / training layout (fields ``prompt_ids``
... ``output``, decoded with the wrapper's MathVista ratios) and ``inference_mmu.py``'s chat-template
layout (fields ``chat_*``, decoded with its ``L, L//2, L//4``). The language model and the sampler are
checked on the golden's own prompt ids (injected into a toolkit :class:`Prompt`), and the toolkit's
prompt building separately, so each rule fails on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from redundancy.engine import Engine
from redundancy.models.base import Prompt
from redundancy.models.goldens import ANSWER_LENGTH, QUESTION, file_hashes, load_golden
from redundancy.models.goldens.toolkit import full_pass, load_adapter, prompt_text_ids
from redundancy.sampling import DiffusionSampler, EngineSource, SamplerConfig
from redundancy.testing.formats.mmada import write_real_checkpoint

G = load_golden("mmada")
IMAGES = sorted(G.meta["inputs"]["images"])
DTYPES = sorted(G.meta["dtypes"])
LAYOUTS = {"": "vlmevalkit", "chat_": "inference_mmu"}  # field prefix -> sampler of the original
MMU, SOI, EOI = 126089, 126084, 126085  # MMaDA's reserved ids (training/prompting_utils.py:17-29)

def meta(dtype: str, image: str) -> dict:
    return G.meta["dtypes"][dtype]["per_image"][image]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_real_checkpoint(tmp_path_factory.mktemp("mmada") / "checkpoint")


_ADAPTERS: dict = {}


@pytest.fixture(scope="module")
def adapter(ckpt):
    torch.set_num_threads(1)

    def get(dtype: str):
        if dtype not in _ADAPTERS:
            _ADAPTERS[dtype] = load_adapter("mmada", ckpt, dtype)
        return _ADAPTERS[dtype]

    yield get
    _ADAPTERS.clear()


def injected(ad, ids: np.ndarray, n_visual: int, length: int = ANSWER_LENGTH) -> Prompt:
    """A toolkit prompt holding exactly the original's prompt ids, then ``length`` masked slots."""
    mask = ad.tokenizer.mask_id
    seq = torch.cat([torch.from_numpy(ids).long(), torch.full((length,), mask, dtype=torch.long)])[None]
    p, s = len(ids), seq.shape[1]
    vis = torch.arange(2, 2 + n_visual)
    side = int(round(n_visual ** 0.5))
    return Prompt(input_ids=seq, visual_embeds=ad.embed_tokens(seq[:, vis]), visual_index=vis,
                  answer_index=torch.arange(p, s), key_valid=torch.ones(1, s, dtype=torch.bool),
                  position_ids=torch.arange(s)[None], mask_id=mask, grid=(side, n_visual // side),
                  text_index=torch.arange(2 + n_visual, p))


def toolkit_prompt(ad, image: str) -> Prompt:
    codes = torch.from_numpy(G.get("float32", image, "codes"))
    return ad.build_prompt([codes], [QUESTION], ANSWER_LENGTH)


def sampler_of(dtype: str, name: str) -> DiffusionSampler:
    s = G.meta["dtypes"][dtype]["sampler"][name]
    assert s["remasking"] == "low_confidence" and s["cfg_scale"] == 0.0 and s["max_new_tokens"] == ANSWER_LENGTH
    return DiffusionSampler(SamplerConfig(strategy="low_confidence", steps=s["steps"], block_length=s["block_length"],
                                          temperature=s["temperature"]))


def compare_pass(ad, prompt: Prompt, dtype: str, image: str, prefix: str = "") -> dict:
    sel = G.tensors["float32/sel_ids"]
    s = full_pass(ad, prompt, sel)
    want = {k: G.get(dtype, image, prefix + k)[s.rows] for k in ("logits_sel", "lse", "argmax")}
    return {"logits": float(np.abs(s.logits_sel - want["logits_sel"]).max()),
            "lse": float(np.abs(s.lse - want["lse"]).max()),
            "argmax": float((s.argmax == want["argmax"]).mean())}


def run_sampler(ad, prompt: Prompt, dtype: str, name: str):
    tr = sampler_of(dtype, name).generate(EngineSource(Engine(ad), prompt), prompt.input_ids[:, prompt.answer_index],
                                          prompt.mask_id)
    steps = np.stack([r.x_before[0].cpu().numpy() for r in tr.steps])
    return steps, tr.tokens[0].cpu().numpy()


# -- the checkpoint and the goldens themselves ----------------------------------------------------
def test_checkpoint_bytes(ckpt):
    assert file_hashes(ckpt) == G.meta["checkpoint_sha256"]


@pytest.mark.parametrize("image", IMAGES)
def test_golden_layout(image):
    """What the original fed its model: [<|mmu|>, <|soi|>, codes + 126349, <|eoi|>, <|sot|>, text]."""
    for dt in DTYPES:
        m = meta(dt, image)
        codes = G.get(dt, image, "codes")
        for prefix in LAYOUTS:
            ids = G.get(dt, image, prefix + "prompt_ids")
            n = m["n_visual"]
            assert len(codes) == n and ids[:2].tolist() == [MMU, SOI] and ids[2 + n] == EOI
            assert (ids[2:2 + n] == codes + m["image_offset"]).all() and m["image_offset"] == 126349
            assert ids[3 + n] == 126080  # <|sot|> (VLMEvalKit) / the chat template's bos_token
            steps = G.get(dt, image, prefix + "step_inputs")
            assert (steps[0] == 126336).all() and len(steps) == m[prefix + "n_forward"]


# -- prompt building ------------------------------------------------------------------------------
@pytest.mark.parametrize("image", IMAGES)
def test_visual_ids(adapter, image):
    ad = adapter("float32")
    ids = G.get("float32", image, "prompt_ids")
    n = meta("float32", image)["n_visual"]
    got = ad.visual_tokens(torch.from_numpy(G.get("float32", image, "codes"))).token_ids
    assert got.tolist() == ids[2:2 + n].tolist()


@pytest.mark.parametrize("image", IMAGES)
def test_prompt_markers(adapter, image):
    ad = adapter("float32")
    before, n, after = prompt_text_ids(ad, toolkit_prompt(ad, image))
    ids = G.get("float32", image, "prompt_ids")
    assert n == meta("float32", image)["n_visual"]
    assert before == ids[:2].tolist() and after[:1] == ids[2 + n: 3 + n].tolist()


@pytest.mark.parametrize("image", IMAGES)
def test_prompt_text_after_eoi(adapter, image):
    """<|sot|>, the user turn with the literal '<eot_id>' text, and the assistant header (issue 15 item 8)."""
    ad = adapter("float32")
    _, n, after = prompt_text_ids(ad, toolkit_prompt(ad, image))
    ids = G.get("float32", image, "prompt_ids")
    want = ids[3 + n:].tolist()
    assert n == len(ids) - 3 - len(want) and after[-len(want):] == want


# -- the language model on the original's own ids -------------------------------------------------
@pytest.mark.parametrize("prefix", list(LAYOUTS))
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_full_pass_on_golden_ids(adapter, dtype, image, prefix):
    ad = adapter(dtype)
    p = injected(ad, G.get(dtype, image, prefix + "prompt_ids"), meta(dtype, image)["n_visual"])
    d = compare_pass(ad, p, dtype, image, prefix)
    print(f"mmada {dtype} {image} {LAYOUTS[prefix]}: {d}")
    if dtype == "float32":
        assert d["logits"] < 1e-4 and d["lse"] < 1e-4 and d["argmax"] == 1.0
    else:  # bfloat16: both sides round differently (SDPA vs eager, RoPE tables in bf16); loose
        assert d["logits"] < 0.5 and d["lse"] < 0.25 and d["argmax"] >= 0.75


@pytest.mark.parametrize("prefix", list(LAYOUTS))
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sampler_on_golden_ids(adapter, dtype, image, prefix):
    """mmu_generate (low confidence, semi-AR blocks, fixed counts per step) step by step."""
    ad = adapter(dtype)
    p = injected(ad, G.get(dtype, image, prefix + "prompt_ids"), meta(dtype, image)["n_visual"])
    steps, out = run_sampler(ad, p, dtype, LAYOUTS[prefix])
    want_steps, want = G.get(dtype, image, prefix + "step_inputs"), G.get(dtype, image, prefix + "output")
    agree = float((out == want).mean())
    print(f"mmada {dtype} {image} {LAYOUTS[prefix]}: token agreement {agree}")
    assert steps.shape == want_steps.shape
    if dtype == "float32":
        assert (steps == want_steps).all() and (out == want).all()
    else:
        assert agree >= 0.5


# -- the toolkit's own prompt end to end ----------------------------------------------------------
@pytest.mark.parametrize("image", IMAGES)
def test_full_pass_toolkit_prompt(adapter, image):
    ad = adapter("float32")
    p = toolkit_prompt(ad, image)
    assert p.input_ids[0, :p.answer_start].tolist() == G.get("float32", image, "prompt_ids").tolist()
    d = compare_pass(ad, p, "float32", image)
    assert d["logits"] < 1e-4 and d["lse"] < 1e-4 and d["argmax"] == 1.0


@pytest.mark.parametrize("image", IMAGES)
def test_sampler_toolkit_prompt(adapter, image):
    ad = adapter("float32")
    p = toolkit_prompt(ad, image)
    assert p.input_ids[0, :p.answer_start].tolist() == G.get("float32", image, "prompt_ids").tolist()
    steps, out = run_sampler(ad, p, "float32", "vlmevalkit")
    assert (steps == G.get("float32", image, "step_inputs")).all() and (out == G.get("float32", image, "output")).all()


# -- each fix, undone, fails the golden comparison ------------------------------------------------
OLD_TEMPLATE = ("<|mmu|><|soi|>{image}<|eoi|><|start_header_id|>user<|end_header_id|>\n{question}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n")


@pytest.mark.parametrize("undo", ["image_offset", "literal_ids", "template"])
def test_old_rules_fail_the_goldens(adapter, monkeypatch, undo):
    """issue 15 items 8 and 19: the old image offset (llm_vocab_size), the markers tokenised as text and
    the old template (no <|sot|>, the <|eot_id|> special token) each break the prompt ids."""
    ad = adapter("float32")
    if undo == "image_offset":
        monkeypatch.setattr(ad, "image_offset", int(ad.config["llm_vocab_size"]))
    elif undo == "literal_ids":
        monkeypatch.setattr(ad.tokenizer, "literal", {})
    else:
        pre, post = OLD_TEMPLATE.split("{image}")
        monkeypatch.setattr(ad, "_prefix", pre)
        monkeypatch.setattr(ad, "_suffix", post)
    p = toolkit_prompt(ad, "small")
    assert p.input_ids[0, :p.answer_start].tolist() != G.get("float32", "small", "prompt_ids").tolist()
