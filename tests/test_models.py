"""Model registry, image input, prompt layout and persistence of the toy dMLLMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from redundancy.engine import Engine
from redundancy.models import ToyDMLLM, known_models, load_image, load_model
from tests.conftest import QUESTIONS, images, tiny_model


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'toy-scrach'; choose one of: .*random-llama"):
        load_model("toy-scrach")


def test_random_models_by_name():
    m = load_model("random-qwen2", layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64)
    assert m.family == "ar_to_diffusion" and m.logit_shift == 1 and m.num_layers == 2
    assert "random-llama" in known_models()


def test_families_and_shifts(tiny_llama, tiny_qwen2):
    assert (tiny_llama.family, tiny_llama.logit_shift) == ("from_scratch", 0)
    assert (tiny_qwen2.family, tiny_qwen2.logit_shift) == ("ar_to_diffusion", 1)
    assert type(tiny_llama.layers[0]).__name__ == "LlamaDecoderLayer"
    assert type(tiny_qwen2.layers[0]).__name__ == "Qwen2DecoderLayer"


def test_prompt_layout(tiny_llama):
    p = tiny_llama.build_prompt(images(2), QUESTIONS[:2], 4)
    tok = tiny_llama.tokenizer
    assert p.n_visual == 16 and p.grid == (4, 4)
    assert (p.input_ids[:, p.visual_index] == tok.image_id).all()
    assert (p.input_ids[:, p.answer_index] == tok.mask_id).all()
    assert p.answer_index.tolist() == list(range(p.seq_len - 4, p.seq_len))
    # the question slot is left-padded and padding keys are masked
    q = tok.encode(QUESTIONS[0])
    slot = p.text_index[:-1]
    assert p.input_ids[0, slot[-len(q):]].tolist() == q
    assert not p.key_valid[0, slot[: len(slot) - len(q)]].any()
    assert p.visual_embeds.shape == (2, 16, 64)


def test_blind_prompt_drops_every_visual_token(tiny_llama):
    p = tiny_llama.build_prompt(images(2), QUESTIONS[:2], 4)
    b = p.without_visual()
    assert b.n_visual == 0 and b.seq_len == p.seq_len - 16
    assert (b.input_ids[:, b.answer_index] == tiny_llama.tokenizer.mask_id).all()
    out = Engine(tiny_llama).forward(b, b.input_ids)
    assert out.logits.shape == (2, 4, tiny_llama.tokenizer.vocab_size)


def test_images_of_any_readable_kind_are_converted(tiny_llama, tmp_path):
    rgb = (np.random.default_rng(0).random((50, 40, 3)) * 255).astype(np.uint8)
    path = tmp_path / "im.png"
    Image.fromarray(rgb).convert("L").save(path)
    a = tiny_llama.preprocess([path, Image.fromarray(rgb).convert("RGBA"), rgb[..., 0], torch.rand(3, 10, 12)])
    assert a.shape == (4, 3, 32, 32)
    assert load_image(path).mode == "RGB"


@pytest.mark.parametrize(
    "bad, match",
    [
        ("/nonexistent/x.png", "cannot read image '/nonexistent/x.png'"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "image array has shape"),
        (Image.new("RGB", (0, 0)), "zero size"),
        (42, "unsupported image type int"),
    ],
)
def test_unreadable_images_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        load_image(bad)


def test_text_file_is_not_an_image(tmp_path):
    f = tmp_path / "notes.png"
    f.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(f)


def test_question_too_long(tiny_llama):
    with pytest.raises(ValueError, match="question slot holds 6"):
        tiny_llama.build_prompt(images(1), ["what is the colour of the red square ?"], 4)


def test_save_load_roundtrip(tmp_path):
    m = tiny_model("qwen2", seed=3)
    m.save_pretrained(tmp_path / "m", metrics={"x": 1})
    m2 = ToyDMLLM.from_pretrained(tmp_path / "m")
    assert m2.config == m.config and m2.family == "ar_to_diffusion"
    p = m.build_prompt(images(1), QUESTIONS[:1], 4)
    a = Engine(m).forward(p, p.input_ids).logits
    b = Engine(m2).forward(p, p.input_ids).logits
    assert torch.equal(a, b)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ValueError, match="missing checkpoint file .*config.json"):
        ToyDMLLM.from_pretrained(tmp_path)


def test_unknown_config_key(tmp_path):
    from redundancy.models.toy import ToyConfig

    with pytest.raises(ValueError, match="unknown ToyConfig keys \\['hiden'\\]"):
        ToyConfig.from_dict({"hiden": 3})
    with pytest.raises(ValueError, match="unknown decoder 'gpt'; choose one of: llama, qwen2"):
        ToyConfig(decoder="gpt")
