"""Scorers for the ``shapes`` tasks: pure functions on answer strings.

Short answers are scored by normalised exact match. Long answers ("describe the image") are
parsed into object phrases ``<colour> <shape> <row> <col>`` separated by ``.``; object recall
and precision match phrases as a multiset, token F1 is the SQuAD-style bag-of-words F1.
"""

from __future__ import annotations

from collections import Counter

SHORT_TASK = "shapes_short"
LONG_TASK = "shapes_long"
TASK_METRICS: dict[str, tuple[str, ...]] = {
    SHORT_TASK: ("exact_match",),
    LONG_TASK: ("object_recall", "object_precision", "token_f1", "exact_match"),
}
PUNCTUATION = frozenset({".", "?", ","})

ObjectPhrase = tuple[str, ...]


def normalize(text: str) -> str:
    """Lower-case and collapse whitespace."""
    return " ".join(text.lower().split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the answers agree after whitespace/case normalisation, else 0.0."""
    return 1.0 if normalize(pred) == normalize(ref) else 0.0


def parse_objects(text: str) -> list[ObjectPhrase]:
    """Split a description on ``.`` into object phrases (tuples of lower-case words).

    A hyphenated cell (``top-left``) is split into its two words, so ``red square top-left`` and
    ``red square top left`` parse alike. Empty phrases are dropped; malformed ones are kept (they
    count as predicted objects but never match a reference object).
    """
    out: list[ObjectPhrase] = []
    for chunk in text.lower().replace("?", ".").split("."):
        words = tuple(w for part in chunk.split() for w in part.split("-") if w)
        if words:
            out.append(words)
    return out


def _matched(pred: str, ref: str) -> tuple[int, int, int]:
    """(matched objects, predicted objects, reference objects), matching as multisets."""
    p, r = Counter(parse_objects(pred)), Counter(parse_objects(ref))
    return sum((p & r).values()), sum(p.values()), sum(r.values())


def object_recall(pred: str, ref: str) -> float:
    """Fraction of reference objects (colour, shape, cell) also named in the prediction."""
    m, n_pred, n_ref = _matched(pred, ref)
    if n_ref == 0:
        return 1.0 if n_pred == 0 else 0.0
    return m / n_ref


def object_precision(pred: str, ref: str) -> float:
    """Fraction of predicted object phrases that match a reference object (0.0 if none predicted)."""
    m, n_pred, n_ref = _matched(pred, ref)
    if n_pred == 0:
        return 1.0 if n_ref == 0 else 0.0
    return m / n_pred


def _content_tokens(text: str) -> list[str]:
    return [w for w in normalize(text).split() if w not in PUNCTUATION]


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style bag-of-tokens F1 with multiset counts; punctuation tokens (``. ? ,``) are ignored."""
    p, r = _content_tokens(pred), _content_tokens(ref)
    if not p or not r:
        return 1.0 if not p and not r else 0.0
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def score_answer(task_name: str, pred: str, ref: str) -> dict[str, float]:
    """All metrics of ``task_name`` for one prediction against its reference."""
    if task_name == SHORT_TASK:
        return {"exact_match": exact_match(pred, ref)}
    if task_name == LONG_TASK:
        return {
            "object_recall": object_recall(pred, ref),
            "object_precision": object_precision(pred, ref),
            "token_f1": token_f1(pred, ref),
            "exact_match": exact_match(pred, ref),
        }
    raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(sorted(TASK_METRICS))}")
