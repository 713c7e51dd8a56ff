"""The protocol every golden driver shares (standalone: numpy, torch and safetensors only).

A driver is run as ``PY drivers/<model>.py --repo DIR --checkpoint DIR --inputs inputs.json
--dtype float32|bfloat16 --out DIR``. It imports the ORIGINAL code from ``--repo``, builds every
prompt with the original's own template and tokenizer calls, and writes ``OUT/tensors.safetensors``
(keys ``"<image>/<field>"``) and ``OUT/meta.json`` (``{"transformers": version, "per_image":
{image: {...}}, "sampler": {...}, "notes": [...]}``). Standard fields per image:

* ``prompt_ids`` int64 [P]: the ids the original feeds its model before the answer slots;
* ``logits_sel`` float32 [R, S]: raw logits of the rows P-1 .. P+L-1 of one full pass with the L
  answer slots masked, at the vocabulary ids ``sel_ids`` (stored once, key ``sel_ids``);
* ``lse`` float32 [R] and ``argmax`` int64 [R]: each of those rows' logsumexp and argmax over the
  whole vocabulary;
* ``step_inputs`` int64 [n_forward, L]: the answer slots at the input of every forward pass of the
  original sampler, and ``output`` int64 [L]: what it returned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

#: how many vocabulary ids besides the special ones are sampled for ``logits_sel``
N_SAMPLED = 64


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, help="root of the clone of the original repository")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--inputs", required=True, help="inputs.json written by redundancy.models.goldens")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


def read_inputs(path: str) -> dict:
    return json.loads(Path(path).read_text())


def sel_ids(vocab: int, special: list[int], seed: int = 0) -> np.ndarray:
    """The special ids followed by a fixed seeded sample of the vocabulary."""
    rng = np.random.RandomState(seed)
    sample = rng.choice(vocab, size=N_SAMPLED, replace=False)
    return np.array(sorted(set(int(i) for i in special)) + [int(i) for i in sample], dtype=np.int64)


def row_summary(logits, ids: np.ndarray) -> dict:
    """``logits_sel``, ``lse`` and ``argmax`` of raw logits [R, V] (a torch tensor)."""
    import torch

    x = logits.detach().float()
    return {"logits_sel": x[:, torch.as_tensor(ids)].numpy().astype(np.float32),
            "lse": torch.logsumexp(x, -1).numpy().astype(np.float32),
            "argmax": x.argmax(-1).numpy().astype(np.int64)}


class Writer:
    """Collects tensors and metadata, then writes them to ``--out``."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.tensors: dict[str, np.ndarray] = {}
        self.meta: dict = {"per_image": {}, "notes": []}
        try:
            import transformers

            self.meta["transformers"] = transformers.__version__
        except ImportError:
            self.meta["transformers"] = None
        import torch

        self.meta["torch"] = torch.__version__
        self.meta["python"] = sys.version.split()[0]

    def put(self, image: str | None, field: str, value) -> None:
        key = field if image is None else f"{image}/{field}"
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        self.tensors[key] = np.ascontiguousarray(arr)

    def info(self, image: str, **kv) -> None:
        self.meta["per_image"].setdefault(image, {}).update(kv)

    def save(self) -> None:
        from safetensors.numpy import save_file

        self.out.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(self.out / "tensors.safetensors"))
        (self.out / "meta.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True))


class ForwardRecorder:
    """Wraps a model's ``forward`` to record the answer slots at the input of every call.

    ``slots(args, kwargs)`` returns the [L] answer ids of that call (or None to skip it).
    """

    def __init__(self, module, slots):
        self.module, self.slots, self.calls = module, slots, []
        self._orig = module.forward

        def forward(*args, **kwargs):
            s = self.slots(args, kwargs)
            if s is not None:
                self.calls.append(np.asarray(s.detach().cpu()).astype(np.int64).copy())
            return self._orig(*args, **kwargs)

        module.forward = forward

    def restore(self) -> None:
        self.module.forward = self._orig

    def stacked(self) -> np.ndarray:
        return np.stack(self.calls) if self.calls else np.zeros((0, 0), dtype=np.int64)
