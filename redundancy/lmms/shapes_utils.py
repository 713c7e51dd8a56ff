"""lmms-eval task functions of the exported ``shapes`` tasks (the ``utils.py`` beside their YAMLs
imports them): the toolkit's own question text and scorers, so lmms-eval scores exactly as
``redundancy.tasks.score_answer`` does. Needs no lmms-eval import."""

from __future__ import annotations

from typing import Any, Mapping

from PIL import Image

from ..tasks import score_answer


def doc_to_visual(doc: Mapping[str, Any]) -> list[Image.Image]:
    """The document's image, RGB."""
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    """The question, between the task's ``pre_prompt`` and ``post_prompt`` (empty by default: the zoo's
    word-level tokenizer knows only the shapes vocabulary)."""
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def doc_to_target(doc: Mapping[str, Any]) -> str:
    return doc["answer"]


def process_results(doc: Mapping[str, Any], results: list[str]) -> dict[str, float]:
    """The metrics of the document's task (``doc["task"]``) for the first response."""
    return score_answer(doc["task"], results[0] if results else "", doc["answer"])
