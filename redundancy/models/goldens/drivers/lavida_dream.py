"""Golden driver for LaViDa-Dream: runs jacklishufan/LaViDa's own code on the tiny checkpoint.

``PY lavida_dream.py --repo LaViDa --checkpoint DIR --inputs inputs.json --dtype float32 --out DIR``
(the same venv as :mod:`lavida_llada`, whose helpers this driver reuses). The original's calls:

* loading: ``load_pretrained_model(ckpt, None, "llava_dream", multimodal=True, attn_implementation="sdpa",
  overwrite_config=..., vision_kwargs=<eval/lmms_eval/models/llava_dream.py:83-88>, device_map="auto")``,
  then ``model.eval(); model.tie_weights(); model.to(dtype)`` (activation checkpointing is not touched,
  as in the eval wrapper: Dream only checkpoints in training mode);
* prompt: ``conv_templates["dream"]`` rendered by the tokenizer's chat template, ``tokenizer_image_token``;
* image: ``process_images``; features: ``prepare_inputs_labels_for_multimodal``;
* sampling: ``model.generate(input_ids, attention_mask=..., pad_token_id=..., images=..., image_sizes=...,
  use_cache=True, **gen_kwargs).sequences`` with the Dream eval wrapper's gen_kwargs
  (eval/lmms_eval/models/llava_dream.py:568-589: temperature 0, top_p None, block_length,
  step_per_block, which Dream's sampler ignores) plus each config's (:data:`CONFIGS`). The study ran
  ``eval/run_dream.sh`` (``alg=topk_margin,prefix_lm=True``) with the table's step_per_block = L/2
  and no ``steps``, so ``generate``'s default ``steps=512`` applies (capped at max_new_tokens).

Recorded with pass-through wrappers: the ids given to ``model.model.embed_tokens`` before every
denoising forward and the logits of every ``forward_dream`` call (raw, before the sampler's shift).
Shims: those of :mod:`lavida_llada` (deepspeed stub, offline HF cache for SigLIP and the tokenizer
ids, pdb no-op for float32, device_map="auto") and ``TORCHDYNAMO_DISABLE=1`` so that the
``@torch.compile`` on ``DreamDecoderLayer.forward`` (modeling_dream.py:516) runs eagerly on CPU.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import driver_io  # noqa: E402
import lavida_llada as common  # noqa: E402

#: name -> gen_kwargs beyond the eval wrapper's defaults; "study" is the standard one
CONFIGS = {
    "study": {"alg": "topk_margin", "prefix_lm": True, "step_per_block": "L/2"},  # steps: default 512
    "steps_half": {"alg": "topk_margin", "prefix_lm": True, "steps": "L/2"},
    "coco": {"alg": "topk_margin", "prefix_lm": True, "step_ratio": 0.5, "schedule": "shift",
             "schedule__shift": 0.33},  # eval/run_coco_dream.sh
    "noprefix": {"alg": "topk_margin", "prefix_lm": False, "steps": "L/2"},
    "noprefix_default_steps": {"alg": "topk_margin", "prefix_lm": False},
    "entropy": {"alg": "entropy", "prefix_lm": False, "steps": "L/2"},  # generate()'s default alg
}


def resolve(spec: dict, L: int) -> dict:
    """gen_kwargs as eval/lmms_eval/models/llava_dream.py:568-589 fills them in."""
    val = {"L": L, "L/2": L // 2, "2L": 2 * L}
    kw = {k: (val[v] if isinstance(v, str) and v in val else v) for k, v in spec.items()}
    kw["max_new_tokens"] = L
    kw.setdefault("temperature", 0)
    kw.setdefault("do_sample", False)
    kw.setdefault("top_p", None)
    kw.setdefault("num_beams", 1)
    sk = {k.replace("schedule__", ""): kw.pop(k) for k in list(kw) if k.startswith("schedule__")}
    kw.setdefault("block_length", min(128, L))
    kw.setdefault("step_per_block", kw["block_length"])
    kw["temperature"] = 0
    if sk:
        kw["schedule_kwargs"] = sk
    return kw


def run(a, spec, L, ckpt, info) -> None:
    import torch

    w = driver_io.Writer(a.out)
    w.meta["notes"] += [
        "shims: deepspeed stub (never called), offline HF cache for the SigLIP id and the two tokenizer ids, "
        "pdb.set_trace no-op (float32 load), device_map='auto', TORCHDYNAMO_DISABLE=1 (eager DreamDecoderLayer)",
        f"served SigLIP: {info}",
        "the checkpoint's tokenizer is Qwen2Tokenizer(Fast) from tokenizer.json, not Dream's remote-code "
        "DreamTokenizer",
    ]
    tok, model, proc, dt = common.load(ckpt, "llava_dream", a.dtype, common.vision_kwargs_for(ckpt, False))
    w.meta["weights_loaded"] = common.weight_check(model, ckpt)
    inner = model.get_model()
    vocab = int(model.lm_head.weight.shape[0])
    w.meta["model"] = {"logits_vocab": vocab, "embed_rows": int(inner.embed_tokens.weight.shape[0]),
                       "len_tokenizer": len(tok), "newline_dtype": str(inner.image_newline.dtype),
                       "tower_dtype": str(next(inner.vision_tower.parameters()).dtype),
                       "config_vocab_size": int(model.config.vocab_size)}
    from llava.model.language_model.dream.generation_utils import DreamGenerationConfig

    # what _sample runs with when generate() gets no generation_config (generation_utils.py:227-236): the
    # model config's fields, incl. transformers' global generation defaults (top_k 50), updated by the kwargs
    gc = DreamGenerationConfig.from_model_config(model.config)
    w.meta["generation_config_from_model"] = {k: getattr(gc, k, None) for k in
                                              ("top_k", "top_p", "temperature", "steps", "alg", "alg_temp", "eps")}
    special = [151643, 151644, 151645, 151665, 151666]
    sel = driver_io.sel_ids(vocab, special)
    w.put(None, "sel_ids", sel)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    text, ids = common.prompt_ids(tok, "dream", spec["question"])
    w.meta["prompt_text"] = text
    w.meta["sampler"] = {"name": "study", "spec": CONFIGS["study"], "gen_kwargs": resolve(CONFIGS["study"], L)}
    w.meta["samplers"] = {}
    for name, path in sorted(spec["images"].items()):
        image, tiles = common.images_for(path, proc, model, dt)
        attn = ids.ne(pad)
        with torch.no_grad():
            out = model.prepare_inputs_labels_for_multimodal(ids, None, attn, None, None, tiles, ["image"],
                                                             image_sizes=[image.size])
        embeds = out[4]
        common.common_image_fields(w, name, ids, embeds, len(ids[0]) - 1, image, tiles)
        P = embeds.shape[1]
        for cname, cspec in CONFIGS.items():
            kw = resolve(cspec, L)
            with common.recording(inner.embed_tokens, model, "forward_dream", L) as (slots, logits):
                with torch.no_grad():
                    res = model.generate(ids, attention_mask=attn, pad_token_id=pad, images=tiles,
                                         image_sizes=[image.size], use_cache=True, **kw)
            x = res.sequences
            outp = x[0, -L:].cpu().numpy().astype(np.int64)
            steps = np.stack(slots) if slots else np.zeros((0, L), dtype=np.int64)
            prefix = "" if cname == "study" else f"samplers/{cname}/"
            w.put(name, prefix + "step_inputs", steps)
            w.put(name, prefix + "output", outp)
            w.meta["samplers"][cname] = {"spec": cspec, "gen_kwargs": kw}
            w.info(name, **{f"n_forward/{cname}": int(steps.shape[0])})
            if cname == "noprefix":  # first pass: every answer slot masked, full sequence, raw rows
                first = logits[0]
                assert first.shape[0] == P + L, first.shape
                for k, v in driver_io.row_summary(first[P - 1: P + L], sel).items():
                    w.put(name, k, v)
            if cname == "study":  # prefill row P-1 + the first cached step (slot 0 already committed)
                pre, step0 = logits[0], logits[1]
                assert pre.shape[0] == P and step0.shape[0] == L, (pre.shape, step0.shape)
                rows = torch.cat([pre[P - 1:], step0])
                for k, v in driver_io.row_summary(rows, sel).items():
                    w.put(name, k + "_cached", v)
                w.put(name, "cached_slots", steps[0])
    w.save()


def main() -> int:
    a = driver_io.parse_args()
    spec = driver_io.read_inputs(a.inputs)
    L = int(spec["answer_length"])
    ckpt = Path(a.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        info = common.setup_environment(a.repo, ckpt, Path(tmp))
        run(a, spec, L, ckpt, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
