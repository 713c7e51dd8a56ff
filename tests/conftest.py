"""Tiny real models of both families, built in seconds, shared by the tests."""

from __future__ import annotations

import pytest
import torch

from redundancy.models.toy import ToyConfig, ToyDMLLM

WORDS = "red green blue square circle what is the colour where ? . yes no 1 2 3".split()

TINY = dict(
    image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
    hidden=64, layers=3, heads=4, intermediate=128, question_len=6,
)


def tiny_model(decoder: str, seed: int = 0, **overrides) -> ToyDMLLM:
    """A randomly initialised toy dMLLM: llama -> from_scratch (shift 0), qwen2 -> ar_to_diffusion (shift 1)."""
    torch.manual_seed(seed)
    fam, shift = ("from_scratch", 0) if decoder == "llama" else ("ar_to_diffusion", 1)
    kw = {**TINY, "kv_heads": 4 if decoder == "llama" else 2, **overrides}
    return ToyDMLLM(ToyConfig(decoder=decoder, family=fam, logit_shift=shift, words=WORDS, **kw), name=f"tiny-{decoder}").eval()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny(request) -> ToyDMLLM:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama() -> ToyDMLLM:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_qwen2() -> ToyDMLLM:
    return tiny_model("qwen2")


def images(n: int, seed: int = 0, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


QUESTIONS = ["what is the colour ?", "where is the red square ?", "is the circle blue ?"]


@pytest.fixture()
def prompt3(tiny):
    return tiny.build_prompt(images(3), QUESTIONS, 4)
