"""Parity check of a real-model adapter against the model's original implementation.

    python -m redundancy.models.verify llada-v --checkpoint DIR --reference-repo DIR [--image PATH]

The original code is imported from the user's clone of the model's repository (never installed,
never from the hub) and run on the same prompt as the adapter. The tool prints the largest
difference of the answer-row logits and whether one full generation agrees token for token when the
same sampler is driven by the adapter and by the original model. ``--reference-repo`` must be the
repository root (e.g. a clone of ML-GSAI/LLaDA-V); what is imported from it is listed in
:data:`NATIVE` and in docs/adapters.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .real.adapter import MODELS, RealDMLLM, load_real
from .real.imports import on_path


@dataclass(frozen=True)
class Native:
    """Where the original implementation lives in its repository and how it is called.

    ``load(root, checkpoint, dtype, device)`` returns the native model; ``logits(native, adapter,
    prompt)`` its raw logits [batch, seq, vocab] (before any shift) on the adapter's prompt.
    """

    subdir: str
    load: Callable[[Path, Path, torch.dtype, str], Any]
    logits: Callable[[Any, RealDMLLM, Any], Tensor]
    imports: str  # for the docs and error messages


def _llava_load(model_name: str, vision_kwargs: bool):
    def load(root: Path, ckpt: Path, dtype: torch.dtype, device: str):
        builder = importlib.import_module("llava.model.builder")
        kw = {"attn_implementation": "eager", "torch_dtype": str(dtype).removeprefix("torch."), "device_map": device}
        if vision_kwargs:
            kw["vision_kwargs"] = {"mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_resampler_type": None,
                                   "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 1152, "use_mm_proj": True}
        _, model, _, _ = builder.load_pretrained_model(str(ckpt), None, model_name, **kw)
        return model.eval()
    return load


def _embeds(adapter: RealDMLLM, prompt) -> Tensor:
    """The adapter's input embeddings (text + its visual features): the language model is compared alone."""
    return adapter.embed(prompt.input_ids, prompt)


def _llada_v_logits(m, adapter, prompt):
    out = m.model(inputs_embeds=_embeds(adapter, prompt))
    hidden = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)
    return m.lm_head(hidden)


def _lavida_llada_logits(m, adapter, prompt):
    return m.model(None, input_embeddings=_embeds(adapter, prompt)).logits


def _lavida_dream_logits(m, adapter, prompt):
    out = m.forward_dream(None, inputs_embeds=_embeds(adapter, prompt))
    return out.logits if hasattr(out, "logits") else out[0]


def _dimple_load(root: Path, ckpt: Path, dtype: torch.dtype, device: str):
    mod = importlib.import_module("lmms_eval.models.dimple_model.modeling_dimple")
    return mod.DimpleModel.from_pretrained(str(ckpt), torch_dtype=dtype).to(device).eval()


def _dimple_logits(m, adapter, prompt):
    """Dimple's own full forward: its vision tower, its M-RoPE positions from ``get_rope_index``."""
    image = prompt.meta["image"]
    out = adapter.vision.processor(images=[image], return_tensors="pt")
    ids = prompt.input_ids
    return m(input_ids=ids, attention_mask=prompt.key_valid.long(), pixel_values=out["pixel_values"].to(m.dtype),
             image_grid_thw=out["image_grid_thw"]).logits


def _mmada_load(root: Path, ckpt: Path, dtype: torch.dtype, device: str):
    mod = importlib.import_module("models")
    return mod.MMadaModelLM.from_pretrained(str(ckpt), torch_dtype=dtype).to(device).eval()


def _mmada_logits(m, adapter, prompt):
    return m(prompt.input_ids).logits


NATIVE: dict[str, Native] = {
    "llada-v": Native("train", _llava_load("llava_llada", False), _llada_v_logits,
                      "train/llava/model/builder.py: load_pretrained_model(..., 'llava_llada'); model.model + lm_head"),
    "lavida-llada": Native(".", _llava_load("llava_llada", True), _lavida_llada_logits,
                           "llava/model/builder.py: load_pretrained_model(..., 'llava_llada'); "
                           "model.model(None, input_embeddings=)"),
    "lavida-dream": Native(".", _llava_load("llava_dream", True), _lavida_dream_logits,
                           "llava/model/builder.py: load_pretrained_model(..., 'llava_dream'); "
                           "forward_dream(None, inputs_embeds=)"),
    "dimple": Native("lmms-eval", _dimple_load, _dimple_logits,
                     "lmms-eval/lmms_eval/models/dimple_model/modeling_dimple.py: DimpleModel (full native forward)"),
    "mmada": Native(".", _mmada_load, _mmada_logits,
                    "models/__init__.py: MMadaModelLM (full native forward on token ids)"),
}


class NativeSource:
    """The native model as a logits source for the toolkit's sampler (shift applied like the engine)."""

    def __init__(self, native: Any, spec: Native, adapter: RealDMLLM, prompt):
        self.native, self.spec, self.adapter, self.prompt = native, spec, adapter, prompt

    @torch.no_grad()
    def __call__(self, x: Tensor, step: int) -> Tensor:
        ids = self.prompt.input_ids.clone()
        ids[:, self.prompt.answer_index] = x
        p = dataclasses.replace(self.prompt, input_ids=ids)
        logits = self.spec.logits(self.native, self.adapter, p).float()
        out = logits[:, self.prompt.answer_index - self.adapter.logit_shift]
        if self.adapter.forbidden_ids:
            out[..., self.adapter.forbidden_ids] = torch.finfo(out.dtype).min
        return out


def default_image(size: int = 64):
    """A fixed random RGB image (the same for adapter and original)."""
    from PIL import Image

    g = np.random.RandomState(0)
    return Image.fromarray((g.rand(size, size, 3) * 255).astype(np.uint8))


@torch.no_grad()
def verify(model: str, checkpoint: str | Path, reference_repo: str | Path, image=None,
           question: str = "Describe the image.", answer_length: int = 16, steps: int | None = None,
           dtype: str = "float32", device: str = "cpu",
           options: dict | None = None) -> dict:
    """Run adapter and original on one prompt; return the max logit difference and generation agreement."""
    from ..engine import Engine
    from ..sampling import DiffusionSampler, EngineSource, SamplerConfig

    if model not in NATIVE:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    root = Path(reference_repo)
    spec = NATIVE[model]
    where = root / spec.subdir
    if not where.is_dir():
        raise ValueError(f"--reference-repo {str(root)!r} has no {spec.subdir!r}; give the root of the model's "
                         f"repository ({spec.imports})")
    adapter = load_real(model, checkpoint, dtype=dtype, device=device, **(options or {}))
    if image is None:
        image = torch.randint(0, 8192, (256,)) if model == "mmada" else default_image()
    elif model != "mmada":
        from .base import load_image

        image = load_image(image)
    prompt = adapter.build_prompt([image], [question], answer_length)
    prompt.meta["image"] = image
    with on_path(where):
        try:
            native = spec.load(root, Path(checkpoint), adapter.dtype, device)
        except ImportError as e:
            raise ValueError(f"cannot import the original {model} code from {where}: {e} ({spec.imports})") from e
        x = prompt.input_ids[:, prompt.answer_index]
        ours = EngineSource(Engine(adapter), prompt)(x, 0).float()
        theirs = NativeSource(native, spec, adapter, prompt)(x, 0)
        diff = (ours - theirs).abs().max().item()
        sampler = DiffusionSampler(SamplerConfig(steps=steps))
        end = [adapter.tokenizer.end_id]
        a = sampler.generate(EngineSource(Engine(adapter), prompt), x, prompt.mask_id, end_ids=end).tokens
        b = sampler.generate(NativeSource(native, spec, adapter, prompt), x, prompt.mask_id, end_ids=end).tokens
    agree = float((a == b).float().mean())
    return {"model": model, "n_visual": prompt.n_visual, "seq_len": prompt.seq_len, "max_logit_diff": diff,
            "top1_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
            "generation_token_agreement": agree, "generation_identical": bool(agree == 1.0),
            "adapter_answer": adapter.tokenizer.decode(a[0].tolist()),
            "native_answer": adapter.tokenizer.decode(b[0].tolist())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    ap.add_argument("--checkpoint", required=True, help="local checkpoint directory")
    ap.add_argument("--reference-repo", required=True, help="root of a clone of the model's original repository")
    ap.add_argument("--image", default=None, help="image file (default: a fixed random image; mmada: random codes)")
    ap.add_argument("--question", default="Describe the image.")
    ap.add_argument("--answer-length", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tolerance", type=float, default=None, help="exit 1 when the logit difference exceeds it")
    args = ap.parse_args(argv)
    if args.model not in MODELS:
        ap.error(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    try:
        res = verify(args.model, args.checkpoint, args.reference_repo, image=args.image, question=args.question,
                     answer_length=args.answer_length, steps=args.steps, dtype=args.dtype, device=args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    print(f"max |logit difference| = {res['max_logit_diff']:.3g}; generation agreement = "
          f"{res['generation_token_agreement']:.3f}")
    if args.tolerance is not None and res["max_logit_diff"] > args.tolerance:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
