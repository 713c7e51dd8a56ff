"""Goldens: what each real model's ORIGINAL code computes on a tiny checkpoint, kept as data.

``python -m redundancy.models.goldens MODEL --reference-repo DIR --reference-python PY
--reference-commit SHA`` writes a deterministic tiny checkpoint in MODEL's published format
(:mod:`redundancy.testing.formats`), the fixed inputs of :func:`write_inputs` (image files and a
question string), runs the driver ``drivers/<model>.py`` under ``PY`` (the Python of a virtual
environment with the transformers version the original needs), and stores what the original
code computed under ``tests/goldens/<model>/``: ``golden.safetensors`` (tensors keyed
``"<dtype>/<image>/<field>"``) and ``meta.json`` (upstream repository and commit, transformers
version, sha256 of every checkpoint file, the sampler arguments, per-image scalars).

A driver gets only the checkpoint directory, the image files and the question: prompt ids,
tiles and features come from the original's own calls. Drivers are standalone scripts (they do
not import this package, which needs a newer transformers); :mod:`.drivers.driver_io` is the
little protocol they share. The tests compare the adapters and samplers with the stored files
(:mod:`tests.test_goldens`) without the upstream code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DRIVERS = Path(__file__).parent / "drivers"
#: where the goldens live in a checkout (the tests read them from there)
GOLDEN_ROOT = Path(__file__).resolve().parents[3] / "tests" / "goldens"
#: the fixed images, (width, height): wide and tall pick different anyres grids, small is below
#: one tile, square is large enough for a multi-tile grid
IMAGES: dict[str, tuple[int, int]] = {"wide": (380, 200), "tall": (200, 380), "small": (60, 44),
                                      "square": (768, 768)}
QUESTION = "what colour is it ?"
ANSWER_LENGTH = 8
DTYPES = ("float32", "bfloat16")


def make_image(name: str) -> "Image.Image":
    """A deterministic RGB image for ``name`` (smooth colour bands plus seeded noise)."""
    from PIL import Image

    w, h = IMAGES[name]
    rng = np.random.RandomState(sorted(IMAGES).index(name))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), ((xx + yy) * 127 // max(1, w + h))], -1)
    noise = rng.randint(0, 64, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def write_inputs(folder: Path) -> Path:
    """Write the image files and ``inputs.json`` (image paths, question, answer length); return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for name in IMAGES:
        p = folder / f"{name}.png"
        make_image(name).save(p)
        images[name] = str(p)
    spec = {"images": images, "question": QUESTION, "answer_length": ANSWER_LENGTH}
    out = folder / "inputs.json"
    out.write_text(json.dumps(spec, indent=1, sort_keys=True))
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint directory, by relative path."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Golden:
    """One model's stored goldens."""

    model: str
    meta: dict
    tensors: dict  # name -> numpy array

    def get(self, dtype: str, image: str, field: str) -> np.ndarray:
        return self.tensors[f"{dtype}/{image}/{field}"]

    def has(self, dtype: str, image: str, field: str) -> bool:
        return f"{dtype}/{image}/{field}" in self.tensors


def golden_dir(model: str, root: Path | None = None) -> Path:
    return Path(root or GOLDEN_ROOT) / model


def load_golden(model: str, root: Path | None = None) -> Golden:
    from safetensors.numpy import load_file

    d = golden_dir(model, root)
    return Golden(model, json.loads((d / "meta.json").read_text()), load_file(str(d / "golden.safetensors")))


def available(root: Path | None = None) -> list[str]:
    """Models with stored goldens."""
    r = Path(root or GOLDEN_ROOT)
    return sorted(p.name for p in r.iterdir() if (p / "meta.json").is_file()) if r.is_dir() else []
