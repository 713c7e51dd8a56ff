"""Golden driver for Dimple (yu-rp/Dimple): runs the ORIGINAL lmms-eval model code on a tiny checkpoint.

Run under Dimple's own environment (transformers 4.46.2, as its ReadMe pins)::

    PY dimple.py --repo /work/upstream/yu-rp+Dimple --checkpoint CKPT --inputs inputs.json \
        --dtype float32 --out OUT

What it imports and calls, all from ``lmms-eval/lmms_eval/models/dimple_model/`` of the clone (the
package that Dimple's lmms-eval wrapper ``lmms_eval/models/dimple.py`` uses), imported as the
top-level package ``dimple_model`` so that ``lmms_eval/__init__`` (accelerate, decord, datasets, ...)
is not needed:

* ``DimpleModel.from_pretrained(ckpt, torch_dtype=<dtype>)`` then ``config.full_attn_mask = True``
  (``dimple.py:141-146`` with ``causal_attention=False``, as ``examples/models/dimple.sh`` passes);
  ``torch_dtype`` is the run's dtype instead of ``"auto"``;
* ``DimpleTokenizer.from_pretrained(ckpt, padding_side="left")``, ``DimpleImageProcessor.from_pretrained``
  and ``DimpleProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)``
  (``dimple.py:148-167``);
* the prompt: ``processor.apply_chat_template([[{"role": "user", "content": [image, text]}]],
  tokenize=False, add_generation_prompt=True, add_vision_id=False)`` and ``processor(text=..., images=[img],
  videos=None, padding="longest", return_tensors="pt")`` (``dimple.py:329-402``, no system prompt);
* the full pass: ``model.get_rope_index`` + ``model(...)`` on prompt + ANSWER_LENGTH masks (raw,
  unshifted logits; the rows P-1 .. P+L-1 are stored);
* the visual features: ``model.visual(pixel_values, grid_thw)`` then ``model.img_projector`` (what
  ``DimpleModel.forward`` scatters into the ``<|image_pad|>`` positions);
* the sampler: ``model.diffusion_generate(input_ids, ..., **inputs)`` with the keyword arguments of
  ``dimple.py:423-438``; the answer slots at the input of every forward are recorded by wrapping
  ``model.forward`` (driver_io.ForwardRecorder), the shifted logits of every step through Dimple's own
  ``generation_logits_hook_func`` callback.

Differences from the lmms-eval harness (documented, not shims): images are given to the processor as
the PIL images of the input files; the harness first re-encodes every image as JPEG (base64) and
resizes it with ``data_utils._regularize_images`` (PIL ``Image.resize`` to the processor's
min/max pixels) before the processor. Shims: none (no hub access is needed: every file is local;
flash_attn is absent and Dimple falls back to SDPA by itself).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

_io_spec = importlib.util.spec_from_file_location("driver_io", Path(__file__).with_name("driver_io.py"))
driver_io = importlib.util.module_from_spec(_io_spec)
_io_spec.loader.exec_module(driver_io)

#: the sampler cases: Dimple's own keyword arguments for diffusion_generate
BASE = {"output_history": True, "return_dict_in_generate": True, "temperature": 0.0, "top_p": 0.01, "alg_temp": 0.0}
CASES = {
    # examples/models/dimple.sh (every task but mmvet): the published evaluation
    "eval": {"alg": "maskgit_plus", "use_cache": True, "alg_p_threshold": 0.0, "use_original_confidence": False,
             "decoding_pipeline": "dream"},
    "eval_nocache": {"alg": "maskgit_plus", "use_cache": False, "alg_p_threshold": 0.0,
                     "use_original_confidence": False, "decoding_pipeline": "dream"},
    # confident decoding (the ReadMe's alg_p_threshold=0.95, use_original_confidence=True, pipeline dim),
    # greedy, with a deterministic fallback ranking (maskgit_plus: top-k confidence)
    "confident": {"alg": "maskgit_plus", "use_cache": True, "alg_p_threshold": 0.95, "use_original_confidence": True,
                  "decoding_pipeline": "dim"},
    "confident_nocache": {"alg": "maskgit_plus", "use_cache": False, "alg_p_threshold": 0.95,
                          "use_original_confidence": True, "decoding_pipeline": "dim"},
    # the same with the top-1 minus top-2 margin as confidence (thresholded and ranked)
    "margin": {"alg": "topk_margin", "use_cache": True, "alg_p_threshold": 0.95, "use_original_confidence": True,
               "decoding_pipeline": "dim"},
    "margin_nocache": {"alg": "topk_margin", "use_cache": False, "alg_p_threshold": 0.95,
                       "use_original_confidence": True, "decoding_pipeline": "dim"},
    # more steps than answer tokens: Dimple does not cap steps at the answer length
    "confident_long": {"alg": "maskgit_plus", "use_cache": False, "alg_p_threshold": 0.95,
                       "use_original_confidence": True, "decoding_pipeline": "dim", "steps": 16},
}
SPECIAL_IDS = [151643, 151644, 151645, 151652, 151653, 151654, 151655, 151656, 151665, 151666]


def main(argv=None) -> int:
    args = driver_io.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(args.repo) / "lmms-eval" / "lmms_eval" / "models"))
    from dimple_model.image_processing_dimple import DimpleImageProcessor
    from dimple_model.modeling_dimple import DimpleModel
    from dimple_model.processing_dimple import DimpleProcessor
    from dimple_model.tokenization_dimple import DimpleTokenizer
    from PIL import Image

    spec = driver_io.read_inputs(args.inputs)
    L = int(spec["answer_length"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    ckpt = args.checkpoint
    model = DimpleModel.from_pretrained(ckpt, torch_dtype=dtype).eval()
    model.config.full_attn_mask = True
    tokenizer = DimpleTokenizer.from_pretrained(ckpt, padding_side="left")
    img_processor = DimpleImageProcessor.from_pretrained(ckpt)
    processor = DimpleProcessor(image_processor=img_processor, tokenizer=tokenizer,
                                chat_template=tokenizer.chat_template)
    mask_id = int(model.config.mask_token_id)
    image_id = int(model.config.image_token_id)

    w = driver_io.Writer(args.out)
    vocab = int(model.config.vocab_size)
    sel = driver_io.sel_ids(vocab, SPECIAL_IDS)
    w.put(None, "sel_ids", sel)
    cases = {k: {"max_new_tokens": L, "steps": L, **BASE, **v} for k, v in CASES.items()}
    effective = {}
    for k, kw in cases.items():  # what diffusion_generate really uses (model-config defaults included)
        gc, _ = model._prepare_generation_config(None, **kw)
        effective[k] = {a: getattr(gc, a) for a in ("temperature", "top_p", "top_k", "eps", "steps", "alg",
                                                      "alg_temp", "alg_p_threshold", "use_original_confidence",
                                                      "decoding_pipeline", "use_cache", "mask_token_id")}
    w.meta["sampler"] = {"answer_length": L, "cases": cases, "effective_generation_config": effective}
    w.meta["vision_attention"] = type(model.visual.blocks[0].attn).__name__
    w.meta["notes"] += [
        "prompt and pixels from Dimple's DimpleProcessor on the PIL input image (the lmms-eval harness "
        "also JPEG-encodes and _regularize_images-resizes every image first)",
        "torch_dtype is the run's dtype instead of lmms-eval's 'auto'; config.full_attn_mask=True "
        "(causal_attention=False)",
        "step_* tensors are per forward call of diffusion_generate: step_inputs the answer slots at the "
        "input, step_lse / step_argmax / step_logits_sel the SHIFTED logits at the answer slots "
        "(Dimple's generation_logits_hook_func)",
        "shims: none",
    ]

    for name, path in spec["images"].items():
        image = Image.open(path).convert("RGB")
        messages = [[{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                  {"type": "text", "text": spec["question"]}]}]]
        texts = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                              add_vision_id=False)
        inputs = processor(text=texts, images=[image], videos=None, padding="longest", return_tensors="pt")
        input_ids = inputs.pop("input_ids")
        ids = input_ids[0]
        P = ids.shape[0]
        thw = inputs["image_grid_thw"]
        t, gh, gw = (int(v) for v in thw[0])
        m = img_processor.merge_size
        w.put(name, "prompt_ids", ids.long())
        w.info(name, text=texts[0], n_visual=int((ids == image_id).sum()), placeholder=image_id,
               image_grid_thw=[t, gh, gw], merged_grid=[gh // m, gw // m], newline_count=0,
               image_size=list(image.size), prompt_length=int(P),
               resized_hw=[gh * img_processor.patch_size, gw * img_processor.patch_size])
        pv = inputs["pixel_values"]
        w.put(name, "pixel_patch_mean", pv.float().mean(-1))

        with torch.no_grad():
            # visual features as DimpleModel.forward computes them before the scatter
            feats = model.visual(pv.type(model.visual.get_dtype()), grid_thw=thw)
            emb = model.img_projector(feats.to(model.model.embed_tokens.weight.dtype))
            w.put(name, "visual_embeds", emb.float())
            # one full pass, every answer slot masked
            full = torch.cat([input_ids, torch.full((1, L), mask_id, dtype=input_ids.dtype)], 1)
            am = torch.ones_like(full)
            pos, deltas = model.get_rope_index(full, thw, None, am)
            w.put(name, "position_ids", pos[:, 0].long())
            w.info(name, rope_delta=int(deltas.flatten()[0]))
            out = model(input_ids=full, attention_mask=am, position_ids=pos, pixel_values=pv, image_grid_thw=thw,
                        use_cache=False, return_dict=True)
            rows = out.logits[0, P - 1: P + L]
            for k, v in driver_io.row_summary(rows, sel).items():
                w.put(name, k, v)

        for case, kw in cases.items():
            steps_logits = []

            def hook(step, x, logits, _acc=steps_logits):
                _acc.append(logits[0, -L:].detach().float().clone())
                return logits

            rec = driver_io.ForwardRecorder(model, lambda a, k: (a[0] if a else k["input_ids"])[0, -L:])
            try:
                gen = model.diffusion_generate(
                    input_ids.clone(), **kw, generation_logits_hook_func=hook, **{k: v for k, v in inputs.items()})
            finally:
                rec.restore()
            seq = gen.sequences[0]
            assert torch.equal(seq[:P], ids), "prompt changed"
            w.put(name, f"{case}/step_inputs", rec.stacked())
            w.put(name, f"{case}/output", seq[P:].long())
            x = torch.stack(steps_logits)  # [n_forward, L, V]
            w.put(name, f"{case}/step_lse", torch.logsumexp(x, -1))
            w.put(name, f"{case}/step_argmax", x.argmax(-1).long())
            w.put(name, f"{case}/step_logits_sel", x[:, :, torch.as_tensor(sel)])
            w.info(name, **{f"{case}/n_forward": len(rec.calls)})
    w.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
