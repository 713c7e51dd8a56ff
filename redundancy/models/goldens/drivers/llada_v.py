"""Golden driver for ``llada-v``: ML-GSAI/LLaDA-V's own loader, prompt building, vision path and sampler.

Everything that is computed is the ORIGINAL code imported from ``--repo``/train (package ``llava``):

* load: ``llava.model.builder.load_pretrained_model(ckpt, None, "llava_llada", device_map="auto",
  attn_implementation="sdpa", multimodal=True, overwrite_config={"mm_spatial_pool_stride": 2,
  "mm_spatial_pool_mode": "bilinear"})`` as the eval model ``eval/lmms-eval/lmms_eval/models/
  llava_onevision_llada.py`` (``__init__``) calls it, with ``torch_dtype="bfloat16"`` or, for float32,
  no dtype (see the shim below). ``device_map="auto"``: the only value that runs on a CPU, since any
  other one makes the builder cast the tower to float16 on cuda (builder.py:308-309);
* prompt: ``copy.deepcopy(conv_templates["llava_llada"])``, user message ``"<image>\\n" + question``,
  ``conv.get_prompt()`` (the checkpoint's chat template, fetched by hub id ``GSAI-ML/LLaDA-V``),
  ``tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX)``, ``attention_mask = ids != pad``;
* image: ``process_images([image], image_processor, model.config)`` then cast to the model's dtype
  (the eval casts to float16, which is its model's dtype: the builder's default ``torch_dtype`` is
  float16; the tower returns features in the pixels' dtype, siglip_encoder.py:586, so any other
  cast fails in the projector), ``image_sizes=[image.size]``;
* full pass: ``model.prepare_inputs_labels_for_multimodal(...)`` (what ``generate`` calls), the mask
  embedding appended ``L`` times as ``generate_with_embeds`` builds ``x_embeds``, then
  ``model.model(inputs_embeds=...)`` and ``model.lm_head(...).float()`` (its per-step call);
* sampler: ``model.generate(input_ids, attention_mask=..., pad_token_id=..., images=..., use_cache=False,
  image_sizes=..., temperature=0, cfg=0.0, remasking="low_confidence", gen_length, block_length,
  gen_steps, steps, stopping_criteria=["<|eot_id|>"], tokenizer=tokenizer)``: the eval's gen_kwargs
  (``cfg`` / ``gen_steps`` / ``use_cache`` / ``pad_token_id`` are ignored by ``generate_with_embeds``).
  ``step_inputs`` are read at every call of ``model.model`` by matching each answer slot's input
  embedding exactly against ``embed_tokens`` rows (the sampler works in embedding space).

Standard fields (driver_io) per image, and ``visual_embeds`` [n_visual, d] (the visual span of the
input embeddings; float16 in a bfloat16 run, which holds bf16 values exactly; not for ``pad.*``),
``visual_sel`` [32, d] (the span at 32 fixed offsets ``visual_offsets``), ``tile_mean`` [tiles, 3] (mean of each normalised
tile per channel, as fed to the tower). ``prompt_ids`` holds the visual span as ``n_visual`` copies of
``IMAGE_TOKEN_INDEX`` (-200, meta ``placeholder``). Per sampler setting ``<name>/step_inputs``
[n_forward, gen_length] and ``<name>/output`` (what ``generate`` returned: shorter than gen_length
when ``<|eot_id|>`` stopped it); not for the square image, whose 3.7k-row sequence needs > 10 GB in
``generate_with_embeds`` (float32 logits and a float64 softmax over every row). A second checkpoint variant, ``config.json`` with
``image_aspect_ratio: "pad"`` (the other files shared), is recorded under image names
``pad.<image>``; its config's sha256 is in meta ``variants``. Called with other image names than the
goldens' four (``python -m redundancy.models.verify llada-v`` sends one image named ``image``), the
driver records the full pass only (no sampler, no variant).

Hub ids served locally (``HF_HUB_OFFLINE=1``, an ``HF_HOME`` cache built in a temporary folder):
``GSAI-ML/LLaDA-V`` (the conv template's tokenizer, conversation.py:102) = the checkpoint's own files;
``google/siglip2-so400m-patch14-384`` (``mm_vision_tower``) = a SigLIP ``config.json`` (3 layers, of
which LLaVA deletes the last; 2 heads = hidden / 72; 384 px, patch 14), ``preprocessor_config.json``
and ``model.safetensors`` holding the checkpoint's own tower tensors (the checkpoint's weights
overwrite them anyway when the LLaVA model loads).

Shims (environment only): float32 -- ``load_pretrained_model`` calls ``pdb.set_trace()`` for any
``torch_dtype`` other than float16/bfloat16 (builder.py:40); the driver passes
``torch_dtype="float32"`` and replaces ``pdb.set_trace`` by a no-op for that call only, after which
the builder passes no dtype and transformers loads float32. Nothing else is patched.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
_HF_HOME = tempfile.mkdtemp(prefix="llada_v_hf_")
os.environ["HF_HOME"] = _HF_HOME
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver_io import ForwardRecorder, Writer, parse_args, read_inputs, row_summary, sel_ids  # noqa: E402

TOKENIZER_HUB_ID = "GSAI-ML/LLaDA-V"
SPECIAL = [126080, 126081, 126336, 126346, 126347, 126348]
STOP = ["<|eot_id|>"]
#: (name, gen_length, block_length, steps): LLaDA-V's eval settings (eval/scripts/evaluate.sh) at answer
#: length 8: one token per step (chartqa 16/16/16), two per step (docvqa 32/32/16, mathverse 64/64/32),
#: and the multiple-choice setting itself (2/2/2); the eval never uses block_length < gen_length
SAMPLERS = [("g8b8s8", 8, 8, 8), ("g8b8s4", 8, 8, 4), ("g2b2s2", 2, 2, 2)]
PAD_SAMPLERS = [("g8b8s4", 8, 8, 4)]
N_VISUAL_SEL = 32
#: the image names of the goldens' fixed inputs; any other set (``redundancy.models.verify`` sends one
#: image named ``image``) gets the full pass only: no sampler runs, no ``pad`` variant
GOLDEN_IMAGES = {"wide", "tall", "small", "square"}
#: generate_with_embeds computes float32 logits and a float64 softmax over EVERY row of the sequence
#: (~12 bytes x 126349 x rows, several copies): the square image's 3.7k-row sequence needs > 10 GB,
#: more than this shared machine has, so its sampler is not recorded (its full pass is)
MAX_SAMPLER_VISUAL = 2000


def _snapshot(repo_id: str) -> Path:
    """An offline HF cache entry for ``repo_id``: refs/main and an empty snapshot folder to fill."""
    root = Path(_HF_HOME) / "hub" / ("models--" + repo_id.replace("/", "--"))
    rev = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def serve_hub(ckpt: Path, vision_id: str) -> None:
    """Serve the tokenizer hub id and the vision-tower hub id from the checkpoint's own files."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    snap = _snapshot(TOKENIZER_HUB_ID)
    for f in ckpt.iterdir():
        if f.suffix == ".json":
            (snap / f.name).symlink_to(f.resolve())
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    pre = "model.vision_tower.vision_tower."
    tower = {}
    for key, shard in sorted(index.items()):
        if key.startswith(pre):
            with safe_open(str(ckpt / shard), framework="pt") as h:
                tower[key[len(pre):]] = h.get_tensor(key)
    patch = tower["vision_model.embeddings.patch_embedding.weight"]
    n_pos = tower["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in tower if k.startswith("vision_model.encoder.layers."))
    hidden, ps = patch.shape[0], patch.shape[-1]
    side = int(round(n_pos ** 0.5))
    vision = {"hidden_size": hidden, "intermediate_size": tower["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
              "num_hidden_layers": layers + 1, "num_attention_heads": max(1, hidden // 72), "image_size": side * ps,
              "patch_size": ps, "num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06,
              "attention_dropout": 0.0, "model_type": "siglip_vision_model"}
    if (side, ps) == (27, 14):  # so400m-patch14-384: 384 px, 384 // 14 = 27 patches per side
        vision["image_size"] = 384
    snap = _snapshot(vision_id)
    (snap / "config.json").write_text(json.dumps({"architectures": ["SiglipModel"], "model_type": "siglip",
                                                  "vision_config": vision,
                                                  "text_config": {"model_type": "siglip_text_model"}}, indent=1))
    (snap / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor", "resample": 2,
        "rescale_factor": 1 / 255, "size": {"height": vision["image_size"], "width": vision["image_size"]}}, indent=1))
    save_file({k: v.contiguous() for k, v in tower.items()}, str(snap / "model.safetensors"), metadata={"format": "pt"})


def variant(ckpt: Path, folder: Path, **changes) -> tuple[Path, str]:
    """``ckpt`` with ``config.json`` changed (JSON as the formats module writes it); other files linked."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f.resolve())
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    text = json.dumps(cfg, indent=1, sort_keys=True) + "\n"
    (folder / "config.json").write_text(text)
    return folder, hashlib.sha256(text.encode()).hexdigest()


def load(ckpt: Path, dtype: str):
    import pdb

    from llava.model.builder import load_pretrained_model

    kw = dict(device_map="auto", attn_implementation="sdpa", multimodal=True,
              overwrite_config={"mm_spatial_pool_stride": 2, "mm_spatial_pool_mode": "bilinear"}, torch_dtype=dtype)
    trace = pdb.set_trace
    if dtype == "float32":  # builder.py:40 stops in pdb for float32: continue at once
        pdb.set_trace = lambda *a, **k: None
    try:
        tokenizer, model, processor, _ = load_pretrained_model(str(ckpt), None, "llava_llada", **kw)
    finally:
        pdb.set_trace = trace
    model.eval()
    return tokenizer, model, processor


def slot_ids(rows: torch.Tensor, table: torch.Tensor) -> np.ndarray:
    """The token id whose embedding equals each row exactly (-1 if none)."""
    out = []
    for v in rows:
        hit = (table == v).all(-1).nonzero()
        out.append(int(hit[0, 0]) if hit.numel() else -1)
    return np.array(out, dtype=np.int64)


def run_image(w: Writer, key: str, image_path: str, question: str, L: int, tok, model, processor, sel, samplers):
    from PIL import Image

    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import get_anyres_image_grid_shape, process_images, tokenizer_image_token

    image = Image.open(image_path).convert("RGB")
    cfg = model.config
    image_tensor = process_images([image], processor, cfg)
    # the eval casts to float16 = its model's dtype (builder default torch_dtype="float16"); the tower
    # returns features in the pixels' dtype (siglip_encoder.py:586), so they must match the projector's
    if isinstance(image_tensor, list):
        image_tensor = [t.to(dtype=model.dtype, device=model.device) for t in image_tensor]
    else:
        image_tensor = image_tensor.to(dtype=model.dtype, device=model.device)
    conv = copy.deepcopy(conv_templates["llava_llada"])
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    input_ids = tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    input_ids = input_ids.to(model.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    attention_mask = input_ids.ne(pad)
    sizes = [image.size]
    with torch.no_grad():
        out = model.prepare_inputs_labels_for_multimodal(input_ids, None, attention_mask, None, None, image_tensor,
                                                         ["image"], image_sizes=sizes)
        embeds = out[4]
        P = embeds.shape[1]
        n_vis = P - (input_ids.shape[1] - 1)
        v0 = int((input_ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
        ids = input_ids[0].tolist()
        prompt_ids = ids[:v0] + [IMAGE_TOKEN_INDEX] * n_vis + ids[v0 + 1:]
        emb = model.model.embed_tokens
        mask_embed = emb(torch.tensor([126336], device=model.device))
        x = torch.cat([embeds, mask_embed[None].expand(1, L, -1)], 1)
        # the head on the L + 1 rows read (the sampler applies it to every row: the same row-wise product)
        logits = model.lm_head(model.model(inputs_embeds=x)[0][:, P - 1: P + L]).float()[0]
        summ = row_summary(logits.cpu(), sel)
        span = embeds[0, v0: v0 + n_vis].float().cpu()
        newline = model.model.image_newline.float().cpu()
        nl = (span == newline).all(-1).nonzero()[:, 0].tolist()
        offs = np.unique(np.linspace(0, n_vis - 1, N_VISUAL_SEL).round().astype(np.int64))
    pix = image_tensor[0] if isinstance(image_tensor, list) else image_tensor[0]
    pix = pix if pix.ndim == 4 else pix[None]
    w.put(key, "prompt_ids", np.array(prompt_ids, dtype=np.int64))
    for f, v in summ.items():
        w.put(key, f, v)
    w.put(key, "visual_sel", span[torch.as_tensor(offs)].numpy().astype(np.float32))
    if not key.startswith("pad."):  # the whole span, for comparing the language model alone (bf16 as f16: exact)
        w.put(key, "visual_embeds", span.numpy().astype(np.float32 if model.dtype == torch.float32 else np.float16))
    w.put(key, "visual_offsets", offs)
    w.put(key, "tile_mean", pix.float().mean((-1, -2)).cpu().numpy().astype(np.float32))
    aspect = str(getattr(cfg, "image_aspect_ratio", ""))
    grid = None
    if aspect.startswith("anyres"):
        grid = list(get_anyres_image_grid_shape(image.size, cfg.image_grid_pinpoints, processor.size[0]))
    info = {"image_size": list(image.size), "n_visual": n_vis, "placeholder": IMAGE_TOKEN_INDEX,
            "visual_start": v0, "prompt_len": P, "n_tiles": int(pix.shape[0]), "tile_px": list(pix.shape[-2:]),
            "grid_wh": grid, "newline_offsets": nl, "n_newline": len(nl), "prompt_text": prompt,
            "vocab_after_load": int(logits.shape[-1]), "sampler": {}}
    table = emb.weight.detach()
    for name, gen, block, steps in (samplers if n_vis <= MAX_SAMPLER_VISUAL else []):
        print(f"{key}: sampler {name}", file=sys.stderr, flush=True)
        rec = ForwardRecorder(model.model, lambda a, k, g=gen: torch.as_tensor(
            slot_ids(k["inputs_embeds"][0, P: P + g], table)))
        try:
            with torch.no_grad():
                res = model.generate(input_ids, attention_mask=attention_mask, pad_token_id=pad, images=image_tensor,
                                     use_cache=False, image_sizes=sizes, temperature=0, cfg=0.0,
                                     remasking="low_confidence", gen_length=gen, block_length=block, gen_steps=steps,
                                     steps=steps, stopping_criteria=list(STOP), tokenizer=tok)
        finally:
            rec.restore()
        steps_in = rec.stacked()
        output = res[0].cpu().numpy().astype(np.int64)
        w.put(key, f"{name}/step_inputs", steps_in)
        w.put(key, f"{name}/output", output)
        info["sampler"][name] = {"n_forward": int(steps_in.shape[0]), "output_len": int(output.shape[0]),
                                 "stopped": bool(output.shape[0] < gen)}
    w.info(key, **info)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = read_inputs(args.inputs)
    ckpt = Path(args.checkpoint).resolve()
    cfg = json.loads((ckpt / "config.json").read_text())
    serve_hub(ckpt, cfg["mm_vision_tower"])
    sys.path.insert(0, str(Path(args.repo).resolve() / "train"))
    w = Writer(args.out)
    w.meta["notes"] += [
        "shim: pdb.set_trace is a no-op during load_pretrained_model for float32 (builder.py:40); "
        "no torch_dtype then reaches from_pretrained, which loads float32",
        "hub ids GSAI-ML/LLaDA-V (conv template tokenizer) and google/siglip2-so400m-patch14-384 (vision tower "
        "config + weights) served from an offline HF cache built from the checkpoint",
        "device_map='auto' (CPU): the eval's device_map='cuda:0' would also cast the vision tower to float16 "
        "(builder.py:308-309) and generate_with_embeds' torch.cuda.amp.autocast is inactive on CPU",
        "pixels cast to the model dtype (the eval casts them to float16 = its model dtype, the builder's default; "
        "llava_onevision_llada.py:487-491)",
        "question without the eval's think_mode suffix (' /no_think' in evaluate.sh gen_kwargs)",
    ]
    sampler_meta = {name: {"gen_length": g, "block_length": b, "steps": s, "gen_steps": s, "temperature": 0,
                           "cfg": 0.0, "remasking": "low_confidence", "stopping_criteria": STOP, "mask_id": 126336,
                           "call": "model.generate(input_ids, attention_mask, pad_token_id, images, use_cache=False, "
                                   "image_sizes, tokenizer, **gen_kwargs)"}
                    for name, g, b, s in SAMPLERS}
    w.meta["sampler"] = sampler_meta
    L = int(spec["answer_length"])
    tok, model, processor = load(ckpt, args.dtype)
    vocab = int(model.lm_head.weight.shape[0])
    sel = sel_ids(vocab, SPECIAL)
    w.put(None, "sel_ids", sel)
    w.meta["vocab_after_load"] = vocab
    w.meta["len_tokenizer"] = len(tok)
    goldens = set(spec["images"]) == GOLDEN_IMAGES  # else a verify run: the full pass of each image only
    for name, path in sorted(spec["images"].items()):
        run_image(w, name, path, spec["question"], L, tok, model, processor, sel, SAMPLERS if goldens else [])
        w.save()
    del model
    if not goldens:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        vdir, sha = variant(ckpt, Path(tmp) / "pad", image_aspect_ratio="pad")
        w.meta["variants"] = {"pad": {"changes": {"image_aspect_ratio": "pad"}, "config_sha256": sha,
                                      "samplers": [s[0] for s in PAD_SAMPLERS]}}
        tok, model, processor = load(vdir, args.dtype)
        for name, path in sorted(spec["images"].items()):
            run_image(w, f"pad.{name}", path, spec["question"], L, tok, model, processor, sel, PAD_SAMPLERS)
            w.save()
    w.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
