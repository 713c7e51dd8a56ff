"""Golden driver for LaViDa-LLaDA: runs jacklishufan/LaViDa's own code on the tiny checkpoint.

``PY lavida_llada.py --repo LaViDa --checkpoint DIR --inputs inputs.json --dtype float32 --out DIR``
(``PY``: a venv with torch 2.13, transformers 4.50.3, tokenizers 0.21.1, accelerate 1.6.0, pillow,
einops, safetensors, numpy). Everything the model sees comes from the original's calls:

* loading: ``llava.model.builder.load_pretrained_model(ckpt, None, "llava_llada", multimodal=True,
  attn_implementation="sdpa", overwrite_config={mm_spatial_pool_stride: 2, mm_spatial_pool_mode:
  "bilinear"}, vision_kwargs=<eval/lmms_eval/models/llava_llada.py:142-150, with mm_hidden_size the
  tiny tower's>, torch_dtype=..., device_map="auto")`` as LaViDa's lmms-eval wrapper calls it, then
  ``model.eval(); model.tie_weights(); model.to(dtype)`` (predict.py) and
  ``model.model.set_activation_checkpointing(None)`` (the eval wrapper, llava_llada.py:106);
* prompt: ``conv_templates["llada"]`` (``"<image>\\n" + question``), ``tokenizer_image_token``;
* image: ``process_images([image], image_processor, model.config)`` (anyres, 384 px tiles);
* visual features and splice: ``model.prepare_inputs_labels_for_multimodal`` (what ``generate`` calls);
* sampling: ``model.generate(input_ids, attention_mask=..., pad_token_id=..., images=..., image_sizes=...,
  use_cache=True, **gen_kwargs)`` with the eval wrapper's gen_kwargs (temperature 0, block_length,
  step_per_block / step_ratio, schedule, prefix_lm) for several configs (:data:`CONFIGS`).

Recorded (pass-through wrappers, nothing changed): the ids given to ``transformer.wte`` before every
denoising forward (= the answer slots at the input of that pass) and the logits of the inner
``LLaDAModel`` calls (the first pass of the ``prefix_lm=False`` config = the full pass with every
answer slot masked; the prefill + first step of the ``prefix_lm=True`` config = the same rows under
the prefix cache).

Environment shims (no model computation is changed):

* ``deepspeed`` is not installed: a stub module (with a ``ModuleSpec`` so that transformers'
  availability probe works) satisfies ``import deepspeed`` (modeling_llada.py:178,
  modeling_dream.py:698); its ``checkpointing.checkpoint`` raises if ever called (the eval wrapper
  turns activation checkpointing off, so it is not);
* hub ids: an offline HF cache (``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE`` in a temp dir) serves
  ``google/siglip-so400m-patch14-384`` (config.json with the tiny tower's sizes and one extra encoder
  layer, which LLaVA deletes, preprocessor_config.json, model.safetensors built from the checkpoint's
  tower weights) and the tokenizer files of the checkpoint under ``GSAI-ML/LLaDA-8B-Instruct`` and
  ``Dream-org/Dream-v0-Instruct-7B`` (``llava/conversation.py`` loads both at import; only the
  first is used by the ``llada`` template);
* float32: ``load_pretrained_model`` calls ``pdb.set_trace()`` for any torch_dtype other than
  float16 / bfloat16 (builder.py:41-42); ``pdb.set_trace`` is made a no-op so the model loads in
  float32 (no torch_dtype passed);
* ``device_map="auto"``: any other value makes the builder move the tower to CUDA float16
  (builder.py:304-305), which a CPU machine cannot do;
* ``TORCHDYNAMO_DISABLE=1`` (LaViDa-Dream's decoder layer is ``@torch.compile``d; eager on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.machinery
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import driver_io  # noqa: E402

SIGLIP_ID = "google/siglip-so400m-patch14-384"
TOKENIZER_IDS = ("GSAI-ML/LLaDA-8B-Instruct", "Dream-org/Dream-v0-Instruct-7B")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SNAPSHOT = "0" * 40

#: LLaDA sampler configs: name -> gen_kwargs beyond the eval wrapper's defaults (temperature 0,
#: max_new_tokens = answer length, block_length = min(128, max_new_tokens), step_per_block =
#: block_length unless step_ratio is given). "study" is the standard one (step_inputs / output).
CONFIGS = {
    "study": {"step_per_block": "L/2", "prefix_lm": True},  # the study's table: steps = L/2, one block
    "eval_default": {"prefix_lm": True},  # step_per_block = block_length = L
    "coco": {"prefix_lm": True, "step_ratio": 0.5, "schedule": "shift", "schedule__shift": 0.33},  # eval/run_coco.sh
    "semi_ar": {"prefix_lm": True, "block_length": "L/2", "step_per_block": "L", "steps": 2},
    "cap": {"prefix_lm": True, "step_per_block": "2L"},  # step_per_block > block_length
    "noprefix": {"step_per_block": "L/2", "prefix_lm": False},
}


# -- environment -----------------------------------------------------------------------------------
def stub_deepspeed() -> None:
    def checkpoint(*a, **k):
        raise RuntimeError("deepspeed stub: activation checkpointing must be off at inference")

    ds = types.ModuleType("deepspeed")
    ds.__spec__ = importlib.machinery.ModuleSpec("deepspeed", None)
    ds.checkpointing = types.SimpleNamespace(checkpoint=checkpoint)
    sys.modules["deepspeed"] = ds


def _snapshot(cache: Path, repo_id: str) -> Path:
    d = cache / ("models--" + repo_id.replace("/", "--"))
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / "main").write_text(SNAPSHOT)
    snap = d / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def build_hub_cache(ckpt: Path, cache: Path) -> dict:
    """The offline HF cache: SigLIP built from the checkpoint's tower, the tokenizers from its files."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    idx = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    pre = "model.vision_tower.vision_tower."
    tower = {}
    for key, shard in sorted(idx.items()):
        if key.startswith(pre):
            with safe_open(str(ckpt / shard), framework="pt") as f:
                tower[key[len(pre):]] = f.get_tensor(key)
    enc = "vision_model.encoder.layers."
    n_layers = 1 + max(int(k[len(enc):].split(".")[0]) for k in tower if k.startswith(enc))
    hidden = tower["vision_model.embeddings.patch_embedding.weight"].shape[0]
    patch = tower["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    inter = tower[enc + "0.mlp.fc1.weight"].shape[0]
    side = int(round(tower["vision_model.embeddings.position_embedding.weight"].shape[0] ** 0.5))
    # the published SigLIP has one more layer than a LLaVA checkpoint keeps (LLaVA deletes the last
    # one after loading, siglip_encoder.py:570): serve it too (never used)
    for k in [k for k in tower if k.startswith(f"{enc}{n_layers - 1}.")]:
        tower[k.replace(f"{enc}{n_layers - 1}.", f"{enc}{n_layers}.")] = tower[k].clone()
    g = torch.Generator().manual_seed(0)
    # served weights differ from the checkpoint's (as the pretrained SigLIP differs from LaViDa's tuned
    # tower): features that match the checkpoint prove that the original loaded the checkpoint's tower
    tower = {k: v + 0.5 * torch.randn(v.shape, generator=g) * (v.std() if v.numel() > 1 else 1.0)
             for k, v in tower.items()}
    # the pooling head (replaced by Identity after loading)
    tower["vision_model.head.probe"] = torch.randn(1, 1, hidden, generator=g)
    tower["vision_model.head.attention.in_proj_weight"] = torch.randn(3 * hidden, hidden, generator=g) * 0.02
    tower["vision_model.head.attention.in_proj_bias"] = torch.zeros(3 * hidden)
    tower["vision_model.head.attention.out_proj.weight"] = torch.randn(hidden, hidden, generator=g) * 0.02
    tower["vision_model.head.attention.out_proj.bias"] = torch.zeros(hidden)
    tower["vision_model.head.layernorm.weight"] = torch.ones(hidden)
    tower["vision_model.head.layernorm.bias"] = torch.zeros(hidden)
    tower["vision_model.head.mlp.fc1.weight"] = torch.randn(inter, hidden, generator=g) * 0.02
    tower["vision_model.head.mlp.fc1.bias"] = torch.zeros(inter)
    tower["vision_model.head.mlp.fc2.weight"] = torch.randn(hidden, inter, generator=g) * 0.02
    tower["vision_model.head.mlp.fc2.bias"] = torch.zeros(hidden)
    snap = _snapshot(cache, SIGLIP_ID)
    save_file({k: v.contiguous() for k, v in sorted(tower.items())}, str(snap / "model.safetensors"),
              metadata={"format": "pt"})
    vision_config = {"hidden_size": hidden, "image_size": 384,
                     "intermediate_size": inter, "model_type": "siglip_vision_model",
                     "num_attention_heads": max(1, hidden // 72), "num_hidden_layers": n_layers + 1,
                     "patch_size": patch, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}
    (snap / "config.json").write_text(json.dumps({
        "architectures": ["SiglipModel"], "model_type": "siglip", "initializer_factor": 1.0,
        "text_config": {"model_type": "siglip_text_model", "hidden_size": hidden, "intermediate_size": inter,
                        "num_attention_heads": max(1, hidden // 72), "num_hidden_layers": 1,
                        "vocab_size": 32000, "max_position_embeddings": 64},
        "vision_config": vision_config}, indent=1))
    (snap / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}}, indent=1))
    for rid in TOKENIZER_IDS:
        snap = _snapshot(cache, rid)
        for f in TOKENIZER_FILES:
            if (ckpt / f).is_file():
                (snap / f).write_bytes((ckpt / f).read_bytes())
    return {"siglip_layers_served": n_layers + 1, "siglip_heads": max(1, hidden // 72), "siglip_side": side}


def setup_environment(repo: str, ckpt: Path, tmp: Path) -> dict:
    cache = tmp / "hf" / "hub"
    info = build_hub_cache(ckpt, cache)
    os.environ.update({"HF_HOME": str(tmp / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                       "TRANSFORMERS_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1",
                       "TOKENIZERS_PARALLELISM": "false"})
    stub_deepspeed()
    import pdb

    pdb.set_trace = lambda *a, **k: None  # builder.py:42 for torch_dtype "float32"
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(repo).resolve()))
    return info


# -- loading ------------------------------------------------------------------------------------------
def load(ckpt: Path, model_name: str, dtype: str, vision_kwargs: dict):
    import torch
    from llava.model.builder import load_pretrained_model

    args = {"multimodal": True, "attn_implementation": "sdpa",
            "overwrite_config": {"mm_spatial_pool_stride": 2, "mm_spatial_pool_mode": "bilinear"}}
    tok, model, proc, _ = load_pretrained_model(str(ckpt), None, model_name, device_map="auto",
                                                torch_dtype=dtype, vision_kwargs=vision_kwargs, **args)
    dt = getattr(torch, dtype)
    model.eval()
    model.tie_weights()
    model.to(dt)
    return tok, model, proc, dt


def weight_check(model, ckpt: Path) -> dict:
    """Did the original load every checkpoint tensor? Max |loaded - checkpoint| per group, mismatches."""
    from safetensors import safe_open

    state = model.state_dict()
    idx = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    groups: dict = {}
    odd = []
    for key, shard in sorted(idx.items()):
        grp = ("tower" if "vision_tower" in key else "projector" if "mm_projector" in key else
               "newline" if "image_newline" in key else "lm")
        with safe_open(str(ckpt / shard), framework="pt") as f:
            t = f.get_tensor(key).float()
        if key not in state:
            odd.append(f"{key}: not in the model")
            continue
        v = state[key].float().cpu()
        if tuple(v.shape) != tuple(t.shape):
            odd.append(f"{key}: model {tuple(v.shape)} vs checkpoint {tuple(t.shape)}")
            n = min(v.shape[0], t.shape[0])
            v, t = v[:n], t[:n]
        groups[grp] = max(groups.get(grp, 0.0), float((v - t).abs().max()))
    return {"max_abs_diff": groups, "mismatches": odd}


def prompt_ids(tok, template: str, question: str):
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    conv = copy.deepcopy(conv_templates[template])
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    text = conv.get_prompt()
    return text, tokenizer_image_token(text, tok, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)


def images_for(path: str, proc, model, dt):
    from llava.mm_utils import process_images
    from PIL import Image

    image = Image.open(path).convert("RGB")
    t = process_images([image], proc, model.config)
    t = [x.to(dtype=dt) for x in t] if isinstance(t, list) else t.to(dtype=dt)
    return image, t


class Calls:
    """Pass-through recorder of a module's / method's calls: the ids given to an embedding and the
    outputs of a forward."""

    def __init__(self, owner, attr: str, keep):
        self.owner, self.attr, self.keep, self.calls = owner, attr, keep, []
        self.orig = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            out = self.orig(*args, **kwargs)
            rec = self.keep(args, kwargs, out)
            if rec is not None:
                self.calls.append(rec)
            return out

        setattr(owner, attr, wrapped)

    def restore(self) -> None:
        if self.attr in vars(self.owner):
            delattr(self.owner, self.attr)


@contextlib.contextmanager
def recording(embedding, forward_owner, forward_attr: str, L: int):
    """(slot ids at every denoising forward, logits of every inner forward)."""
    import torch

    def ids(args, kwargs, out):
        x = args[0] if args else kwargs.get("input")
        if x.ndim != 2:  # prepare_inputs_labels_for_multimodal embeds 1-D text ids
            return None
        return x[0, -L:].detach().cpu().numpy().astype(np.int64).copy()

    def logits(args, kwargs, out):
        lg = out.logits if hasattr(out, "logits") else out[0]
        return lg[0].detach().float().cpu().clone()

    emb = Calls(embedding, "forward", ids)
    fwd = Calls(forward_owner, forward_attr, logits)
    try:
        with torch.no_grad():
            yield emb.calls, fwd.calls
    finally:
        emb.restore()
        fwd.restore()


def resolve(spec: dict, L: int) -> dict:
    """gen_kwargs for answer length L, filled in as eval/lmms_eval/models/llava_llada.py:587-610 does."""
    val = {"L": L, "L/2": L // 2, "2L": 2 * L}
    kw = {k: (val[v] if isinstance(v, str) and v in val else v) for k, v in spec.items()}
    kw["max_new_tokens"] = L
    kw.setdefault("temperature", 0)
    kw.setdefault("do_sample", False)
    kw.setdefault("top_p", None)
    kw.setdefault("num_beams", 1)
    sk = {k.replace("schedule__", ""): kw.pop(k) for k in list(kw) if k.startswith("schedule__")}
    if sk:
        kw["schedule_kwargs"] = sk
    kw.setdefault("block_length", min(128, L))
    if "step_per_block" not in kw and "step_ratio" not in kw:
        kw["step_per_block"] = kw["block_length"]
    kw["temperature"] = 0
    return kw


def main() -> int:
    a = driver_io.parse_args()
    spec = driver_io.read_inputs(a.inputs)
    L = int(spec["answer_length"])
    ckpt = Path(a.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        info = setup_environment(a.repo, ckpt, Path(tmp))
        run_llada(a, spec, L, ckpt, info)
    return 0


def vision_kwargs_for(ckpt: Path, llada: bool) -> dict:
    cfg = json.loads((ckpt / "config.json").read_text())
    kw = {"mm_vision_tower": SIGLIP_ID, "mm_resampler_type": None, "mm_projector_type": "mlp2x_gelu",
          "mm_hidden_size": int(cfg["mm_hidden_size"]), "use_mm_proj": True}
    if llada:
        kw.update({"mm_pooler_ratio": 2, "mm_patch_merge_type": "spatial_unpad"})
    return kw


def common_image_fields(w, name: str, ids, embeds, n_text: int, image, tiles) -> tuple[np.ndarray, int, int]:
    """prompt_ids with the visual span written as n_visual copies of -200 (IMAGE_TOKEN_INDEX)."""
    from llava.constants import IMAGE_TOKEN_INDEX

    ids = ids[0].tolist()
    a = ids.index(IMAGE_TOKEN_INDEX)
    P = embeds.shape[1]
    n_vis = P - (len(ids) - 1)
    full = ids[:a] + [IMAGE_TOKEN_INDEX] * n_vis + ids[a + 1:]
    w.put(name, "prompt_ids", np.array(full, dtype=np.int64))
    w.put(name, "visual_embeds", embeds[0, a: a + n_vis].detach().float().cpu())
    n_tiles = int(tiles.shape[1] if tiles.ndim == 5 else tiles.shape[0])
    w.info(name, n_visual=int(n_vis), placeholder=int(IMAGE_TOKEN_INDEX), prompt_length=int(P),
           visual_start=int(a), image_size=list(image.size), n_tiles=n_tiles,
           tile_pixels=list(tiles.shape[-2:]), n_text_before=int(a), n_text_after=int(len(ids) - a - 1))
    return np.array(full), a, n_vis


def run_llada(a, spec, L, ckpt, info) -> None:
    import torch

    w = driver_io.Writer(a.out)
    w.meta["notes"] += [
        "shims: deepspeed stub (never called), offline HF cache for the SigLIP id and the two tokenizer ids, "
        "pdb.set_trace no-op (float32 load), device_map='auto', TORCHDYNAMO_DISABLE=1",
        f"served SigLIP: {info}",
    ]
    tok, model, proc, dt = load(ckpt, "llava_llada", a.dtype, vision_kwargs_for(ckpt, True))
    model.model.set_activation_checkpointing(None)  # eval/lmms_eval/models/llava_llada.py:106
    w.meta["weights_loaded"] = weight_check(model, ckpt)
    inner = model.get_model()
    vocab = int(inner.transformer.ff_out.weight.shape[0])
    w.meta["model"] = {"logits_vocab": vocab, "wte_rows": int(inner.transformer.wte.weight.shape[0]),
                       "len_tokenizer": len(tok), "newline_dtype": str(inner.image_newline.dtype),
                       "tower_dtype": str(next(inner.vision_tower.parameters()).dtype),
                       "config_vocab_size": int(model.config.vocab_size)}
    mask_id = 126336
    special = [126080, 126081, mask_id, 126346, 126347, 126348]
    sel = driver_io.sel_ids(vocab, special)
    w.put(None, "sel_ids", sel)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    text, ids = prompt_ids(tok, "llada", spec["question"])
    w.meta["prompt_text"] = text
    w.meta["sampler"] = {"name": "study", "spec": CONFIGS["study"], "gen_kwargs": resolve(CONFIGS["study"], L)}
    w.meta["samplers"] = {}
    for name, path in sorted(spec["images"].items()):
        image, tiles = images_for(path, proc, model, dt)
        attn = ids.ne(pad)
        with torch.no_grad():
            out = model.prepare_inputs_labels_for_multimodal(ids, None, attn, None, None, tiles, ["image"],
                                                             image_sizes=[image.size])
        embeds = out[4]
        full, vstart, n_vis = common_image_fields(w, name, ids, embeds, len(ids[0]) - 1, image, tiles)
        P = embeds.shape[1]
        for cname, cspec in CONFIGS.items():
            kw = resolve(cspec, L)
            with recording(inner.transformer.wte, inner, "forward", L) as (slots, logits):
                with torch.no_grad():
                    res = model.generate(ids, attention_mask=attn, pad_token_id=pad, images=tiles,
                                         image_sizes=[image.size], use_cache=True, **kw)
            x = res[0] if isinstance(res, tuple) else res
            outp = x[0, -L:].cpu().numpy().astype(np.int64)
            steps = np.stack(slots) if slots else np.zeros((0, L), dtype=np.int64)
            prefix = "" if cname == "study" else f"samplers/{cname}/"
            w.put(name, prefix + "step_inputs", steps)
            w.put(name, prefix + "output", outp)
            w.meta["samplers"][cname] = {"spec": cspec, "gen_kwargs": kw}
            w.info(name, **{f"n_forward/{cname}": int(steps.shape[0])})
            if cname == "noprefix":  # first pass: every answer slot masked, full sequence
                first = logits[0]
                assert first.shape[0] == P + L, first.shape
                for k, v in driver_io.row_summary(first[P - 1: P + L], sel).items():
                    w.put(name, k, v)
            if cname == "study":  # prefill (prompt rows) + first cached step (answer rows)
                pre, step0 = logits[0], logits[1]
                assert pre.shape[0] == P and step0.shape[0] == L, (pre.shape, step0.shape)
                rows = torch.cat([pre[P - 1:], step0])
                for k, v in driver_io.row_summary(rows, sel).items():
                    w.put(name, k + "_cached", v)
                w.put(name, "cached_slots", steps[0])
    w.save()


if __name__ == "__main__":
    sys.exit(main())
