"""Each fidelity fix of issue 15, undone (monkeypatched back to the old rule), fails its golden.

The goldens were produced by the original code (tests/goldens); the per-model tests show the
fixed toolkit equals them. Here every old rule is put back and the same comparison must fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from redundancy.models.goldens import QUESTION, load_golden, make_image
from redundancy.models.goldens.toolkit import load_adapter

DIMPLE = load_golden("dimple")


@pytest.fixture(scope="module")
def dimple_ckpt(tmp_path_factory):
    from redundancy.testing.formats.dimple import write_real_checkpoint

    return write_real_checkpoint(tmp_path_factory.mktemp("dimple") / "checkpoint")


def dimple_embeds(ad, image="wide") -> tuple[np.ndarray, np.ndarray]:
    got = ad.visual_tokens(make_image(image)).embeds.float().cpu().numpy()
    return got, DIMPLE.get("float32", image, "visual_embeds")


def test_dimple_projector_activation_is_the_config_act(dimple_ckpt):
    """item 6: Dimple's img_projector uses ACT2FN[config.hidden_act] (SiLU), not GELU."""
    ad = load_adapter("dimple", dimple_ckpt)
    got, want = dimple_embeds(ad)
    assert np.abs(got - want).max() < 1e-4
    ad.vision.projector[1] = nn.GELU()  # the old rule
    got, want = dimple_embeds(ad)
    assert np.abs(got - want).max() > 1e-3


def test_dimple_mrope_section_at_the_top_level(dimple_ckpt, monkeypatch):
    """item 7: the old rule read only rope_scaling.mrope_section, which Dimple's config leaves None."""
    from redundancy.models.real import lm
    from redundancy.models.real.checkpoint import CheckpointError
    from redundancy.engine import Engine

    monkeypatch.setattr(lm, "mrope_section", lambda c: (c.get("rope_scaling") or {}).get("mrope_section"))
    ad = load_adapter("dimple", dimple_ckpt)
    p = ad.build_prompt([make_image("small")], [QUESTION], 8)
    with pytest.raises(CheckpointError, match="mrope_section"):
        Engine(ad).forward(p, p.input_ids)


def test_dimple_tokenizer_and_pixel_limits(dimple_ckpt, monkeypatch):
    """The tokenizer's added tokens come from tokenizer_config.json; the pixel limits from
    preprocessor_config.json (the old rules: vocab + merges only; config.json's limits)."""
    from transformers import Qwen2Tokenizer

    from redundancy.models.real import checkpoint, text
    from redundancy.models.real.checkpoint import CheckpointError

    ad = load_adapter("dimple", dimple_ckpt)
    assert ad.visual_tokens(make_image("square")).embeds.shape[0] == DIMPLE.meta["dtypes"]["float32"][
        "per_image"]["square"]["n_visual"]
    with monkeypatch.context() as m:
        m.setattr(text, "load_hf_tokenizer", lambda path: Qwen2Tokenizer(
            vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt")))
        m.setattr("redundancy.models.real.adapter.load_hf_tokenizer", text.load_hf_tokenizer)
        with pytest.raises(CheckpointError, match="no special token"):
            load_adapter("dimple", dimple_ckpt)
    read = checkpoint.read_config
    monkeypatch.setattr("redundancy.models.real.adapter.read_config",
                        lambda p: {k: v for k, v in read(p).items() if k != "preprocessor_config"})
    old = load_adapter("dimple", dimple_ckpt)
    assert old.visual_tokens(make_image("square")).embeds.shape[0] != DIMPLE.meta["dtypes"]["float32"][
        "per_image"]["square"]["n_visual"]


def test_dimple_margin_threshold(dimple_ckpt):
    """item 16: alg=topk_margin thresholds the margin; thresholding the probability changes trajectories."""
    from redundancy.generate import generate_from_prompt
    from redundancy.sampling import DiffusionSampler

    from tests.test_goldens_dimple import CASES, MARGIN_DIFFERS, toolkit_sampler

    ad = load_adapter("dimple", dimple_ckpt)
    cfg = toolkit_sampler(CASES["margin_nocache"])
    assert cfg.threshold_on == "margin"
    old = type(cfg)(**{**cfg.__dict__, "threshold_on": "probability"})
    differs = 0
    for image in sorted(MARGIN_DIFFERS):
        p = ad.build_prompt([make_image(image)], [QUESTION], 8)
        want = DIMPLE.get("float32", image, "margin_nocache/output")
        new = generate_from_prompt(ad, p, DiffusionSampler(cfg)).trajectory.tokens[0].numpy()
        was = generate_from_prompt(ad, p, DiffusionSampler(old)).trajectory.tokens[0].numpy()
        assert (new == want).all()
        differs += not (was == want).all()
    assert differs >= 1


def test_llada_confidence_eos_eot_inf_is_not_the_end_offset(tmp_path):
    """item 11: the old end suppression (confidence - 1e4) does not reproduce LLaDA's rule."""
    from tests.test_goldens_llada_generate import CASES, XFAIL_F32, adapter_for, run_toolkit
    from redundancy.sampling import diffusion
    from redundancy.testing.formats.llada_generate import write_real_checkpoint

    g = load_golden("llada-generate")
    ad = adapter_for(write_real_checkpoint(tmp_path / "ck"), "float32")
    rule = [c for c in CASES if c.endswith("_eot") and "random" not in c and c not in XFAIL_F32]
    assert rule
    real = diffusion.SamplerConfig

    class Old(real):  # the old rule: suppress_end instead of LLaDA's confidence_eos_eot_inf
        def __init__(self, **kw):
            on = kw.pop("confidence_eos_eot_inf", False)
            super().__init__(**kw, suppress_end=on)

    wrong = 0
    for case in rule:
        steps, out, _ = run_toolkit(ad, g, "float32", case)
        assert (steps == g.get("float32", case, "step_inputs")).all()
        import redundancy.sampling as sampling
        saved = sampling.SamplerConfig
        sampling.SamplerConfig = Old
        try:
            steps_old, _, _ = run_toolkit(ad, g, "float32", case)
        finally:
            sampling.SamplerConfig = saved
        wrong += steps_old.shape != steps.shape or not (steps_old == g.get("float32", case, "step_inputs")).all()
    assert wrong >= 1


# -- LLaDA-V ----------------------------------------------------------------------------------------
LLADA_V = load_golden("llada-v")


@pytest.fixture(scope="module")
def llada_v(tmp_path_factory):
    from redundancy.testing.formats.llada_v import write_real_checkpoint

    root = tmp_path_factory.mktemp("llada_v")
    return {"": write_real_checkpoint(root / "a"), "pad": write_real_checkpoint(root / "p", image_aspect_ratio="pad")}


def llada_v_prompt(ad, image: str):
    return ad.build_prompt([make_image(image)], [QUESTION], 8)


def n_visual(name: str) -> int:
    return LLADA_V.meta["dtypes"]["float32"]["per_image"][name]["n_visual"]


def test_llada_v_tiles_are_384_px(llada_v, monkeypatch):
    """item 1: 27 x 14 = 378-px tiles with pinpoints scaled by 378/384 give another grid and token count."""
    from redundancy.models.real import vision

    ad = load_adapter("llada-v", llada_v[""])
    assert ad.vision.tile == 384 and llada_v_prompt(ad, "wide").n_visual == n_visual("wide")
    monkeypatch.setattr(vision, "tile_size", lambda config, covered: covered)  # the old rule
    old = load_adapter("llada-v", llada_v[""])
    assert old.vision.tile == 378
    old.vision.pinpoints = [(int(w * 378 / 384), int(h * 378 / 384)) for w, h in old.vision.pinpoints]
    assert llada_v_prompt(old, "wide").n_visual != n_visual("wide")


def test_llada_v_prompt_ids_follow_tokenizer_image_token(llada_v):
    """item 2: without LLaVA's chunk rule the newline after <image> stays (one id more than the original)."""
    from redundancy.models.goldens.toolkit import prompt_text_ids, split_visual

    ad = load_adapter("llada-v", llada_v[""])
    meta = LLADA_V.meta["dtypes"]["float32"]["per_image"]["wide"]
    want = split_visual(LLADA_V.get("float32", "wide", "prompt_ids"), meta["placeholder"])
    got = prompt_text_ids(ad, llada_v_prompt(ad, "wide"))
    assert (got[0], got[2]) == (want[0], want[2])
    object.__setattr__(ad.spec, "prompt_chunks", "plain")  # the old rule (frozen dataclass)
    try:
        old = prompt_text_ids(ad, llada_v_prompt(ad, "wide"))
    finally:
        object.__setattr__(ad.spec, "prompt_chunks", "llava")
    assert len(old[2]) == len(want[2]) + 1


def test_llada_v_pad_aspect_ratio(llada_v):
    """item 3: image_aspect_ratio pad pads to a square of the mean colour; stretching does not match."""
    ad = load_adapter("llada-v", llada_v["pad"])
    assert llada_v_prompt(ad, "wide").n_visual == n_visual("pad.wide") == 729
    ad.vision.aspect = "none"  # the old rule: the image stretched to one tile
    from redundancy.models.goldens.toolkit import full_pass

    s = full_pass(ad, llada_v_prompt(ad, "wide"), LLADA_V.tensors["float32/sel_ids"])
    want = LLADA_V.get("float32", "pad.wide", "logits_sel")[s.rows]
    assert np.abs(s.logits_sel - want).max() > 1e-3


def test_llada_v_vocabulary_is_cut_to_the_tokenizer(llada_v):
    """The builder's resize_token_embeddings(len(tokenizer)): the config's 126464 rows change every lse."""
    from redundancy.models.goldens.toolkit import full_pass

    ad = load_adapter("llada-v", llada_v[""])
    assert ad.sizes["vocab"] == 126349
    object.__setattr__(ad.spec, "resize_to_tokenizer", False)
    try:
        old = load_adapter("llada-v", llada_v[""])
    finally:
        object.__setattr__(ad.spec, "resize_to_tokenizer", True)
    s = full_pass(old, llada_v_prompt(old, "wide"), LLADA_V.tensors["float32/sel_ids"])
    assert np.abs(s.lse - LLADA_V.get("float32", "wide", "lse")[s.rows]).max() > 5e-4


def test_llada_v_stop_rule(llada_v):
    """item 12: without stopping_criteria=['<|eot_id|>'] the trajectory of a run that stops differs."""
    from redundancy.generate import generate_from_prompt
    from redundancy.sampling import DiffusionSampler

    from tests.test_goldens_llada_v import toolkit_config

    ad = load_adapter("llada-v", llada_v[""])
    per = LLADA_V.meta["dtypes"]["float32"]["per_image"]
    differs = 0
    for name in ("small", "tall", "wide"):
        for setting in sorted(per[name]["sampler"]):
            kw = LLADA_V.meta["dtypes"]["float32"]["sampler"][setting]
            cfg = toolkit_config(kw)
            want = LLADA_V.get("float32", name, f"{setting}/step_inputs")
            p = ad.build_prompt([make_image(name)], [QUESTION], kw["gen_length"])
            tr = generate_from_prompt(ad, p, DiffusionSampler(cfg)).trajectory
            got = np.stack([r.x_before[0].numpy() for r in tr.steps])
            assert got.shape == want.shape and (got == want).all()
            old = type(cfg)(**{**cfg.__dict__, "stop_at_end": False})
            tr = generate_from_prompt(ad, p, DiffusionSampler(old)).trajectory
            got = np.stack([r.x_before[0].numpy() for r in tr.steps])
            differs += got.shape != want.shape or not (got == want).all()
    assert differs >= 1


# -- LaViDa-Dream -----------------------------------------------------------------------------------
DREAM = load_golden("lavida-dream")


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    from redundancy.testing.formats.lavida_dream import write_real_checkpoint

    return load_adapter("lavida-dream", write_real_checkpoint(tmp_path_factory.mktemp("dream") / "ck"))


def _dream_run(ad, image: str, setting: str, **change):
    from redundancy.generate import generate_from_prompt
    from redundancy.sampling import DiffusionSampler

    from tests.test_goldens_lavida_dream import golden_run, toolkit_config

    kw, steps, out = golden_run(DREAM, "float32", image, setting)
    cfg = toolkit_config(kw)
    cfg = type(cfg)(**{**cfg.__dict__, **change})
    p = ad.build_prompt([make_image(image)], [QUESTION], 8)
    tr = generate_from_prompt(ad, p, DiffusionSampler(cfg)).trajectory
    got = np.stack([r.x_before[0].numpy() for r in tr.steps])
    return got.shape == steps.shape and (got == steps).all() and (tr.tokens[0].numpy() == out).all()


def test_dream_system_text_is_llava_s(dream, monkeypatch):
    """item 5: conv_dream's system text is LLaVA's; the old "You are a helpful assistant." changes the ids."""
    from redundancy.models.goldens.toolkit import prompt_text_ids, split_visual
    from redundancy.models.real.adapter import DREAM_TEMPLATE, QWEN_SYSTEM

    meta = DREAM.meta["dtypes"]["float32"]["per_image"]["wide"]
    want = split_visual(DREAM.get("float32", "wide", "prompt_ids"), meta["placeholder"])[0]
    assert prompt_text_ids(dream, dream.build_prompt([make_image("wide")], [QUESTION], 8))[0] == want
    monkeypatch.setattr(dream, "_prefix", DREAM_TEMPLATE.split("{image}")[0].format(system=QWEN_SYSTEM))
    assert prompt_text_ids(dream, dream.build_prompt([make_image("wide")], [QUESTION], 8))[0] != want


@pytest.mark.parametrize("setting, undo", [("steps_half", {"prefill_first_token": False}),
                                           ("entropy", {"top_k": None})])
def test_dream_sampler_rules(dream, setting, undo):
    """items 14 and Dream's top_k=50: each rule undone changes some trajectory of the goldens."""
    assert all(_dream_run(dream, im, setting) for im in ("small", "square", "tall", "wide"))
    assert not all(_dream_run(dream, im, setting, **undo) for im in ("small", "square", "tall", "wide"))


def test_dream_caps_the_steps(dream):
    """item 13: LaViDa's Dream runs min(steps, L) passes; uncapped, the study's 512 steps run 512 passes."""
    from tests.test_goldens_lavida_dream import golden_run, toolkit_config

    kw, steps, _ = golden_run(DREAM, "float32", "small", "study")
    cfg = toolkit_config(kw)
    assert cfg.resolve(8)[0] == len(steps) == 8
    assert type(cfg)(**{**cfg.__dict__, "cap_steps": False}).resolve(8)[0] == 512
