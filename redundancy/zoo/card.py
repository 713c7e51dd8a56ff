"""The model card of the shipped zoo: ``python -m redundancy.zoo.card`` prints a Markdown table."""

from __future__ import annotations

import json

from ..models.registry import WEIGHTS_DIR
from ..tasks import QTYPES

FLOOR_SHORT, FLOOR_LONG = 0.90, 0.85


def rows() -> list[dict]:
    """Metrics of every shipped model (from its ``metrics.json``)."""
    out = []
    for d in sorted(WEIGHTS_DIR.iterdir()):
        f = d / "metrics.json"
        if not (d / "config.json").is_file() or not f.is_file():
            continue
        m = json.loads(f.read_text())
        fam = json.loads((d / "config.json").read_text())["family"]
        out.append({"model": d.name, "family": fam, "train_s": m.get("train_seconds"), **m})
    return out


def markdown() -> str:
    """A Markdown table: test-split accuracy per question type, long-answer recall, and blind scores."""
    head = ["model", "family", "train s", *QTYPES, "short EM", "long recall", "long EM",
            "blind short EM", "blind long recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows():
        q = [r.get(f"shapes_short/exact_match/{t}", float("nan")) for t in QTYPES]
        vals = [r["model"], r["family"], f"{r['train_s']:.0f}", *[f"{v:.2f}" for v in q],
                f"{r['shapes_short/exact_match']:.3f}", f"{r['shapes_long/object_recall']:.3f}",
                f"{r['shapes_long/exact_match']:.2f}", f"{r['blind/shapes_short/exact_match']:.3f}",
                f"{r['blind/shapes_long/object_recall']:.3f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
