"""A tiny Dimple checkpoint in the published ``rp-yu/Dimple-7B`` layout.

What the original loaders read (``lmms-eval/lmms_eval/models/dimple.py:141-167`` of yu-rp/Dimple):

* ``config.json`` for ``DimpleConfig`` (``dimple_model/configuration_dimple.py``): the Dream-7B text
  fields (``training-code/init.py`` builds the config from Dream-v0-Instruct-7B's), ``mrope_section``
  at the TOP level with ``rope_scaling: null``, ``hidden_act: silu`` (also the projector's activation),
  the special ids and ``vision_config`` = Qwen2.5-VL-7B-Instruct's vision tower (RMSNorm, gated
  SiLU MLP, window attention, ``fullatt_block_indexes``) at tiny width;
* ``generation_config.json`` (``DimplePreTrainedModel.from_pretrained`` reads it unconditionally);
* the slow ``DimpleTokenizer`` files: ``vocab.json`` + ``merges.txt`` (byte-level BPE with the Qwen2
  pre-tokenizer), ``tokenizer_config.json`` (added tokens 151643-151666 with Dream's ``<|mask|>``,
  bos ``<|im_start|>``, eos ``<|im_end|>``, the Qwen2.5-VL chat template that ``init.py`` copies),
  ``special_tokens_map.json``, ``added_tokens.json``; ``chat_template.json`` (processor);
* ``preprocessor_config.json`` for ``DimpleImageProcessor``: Qwen2.5-VL's settings (patch 14,
  merge 2, temporal patch 2, CLIP mean / std, min_pixels 56*56) with a small ``max_pixels``
  (28*28*128: at most 128 visual tokens) so tiny runs stay fast;
* bfloat16 safetensors (the published dtype) in two shards with ``model.safetensors.index.json``.

The remote-code ``.py`` files of the hub repository are not written: the goldens load Dimple's own
classes from the repository clone. Everything is deterministic: one seeded ``torch.Generator``,
JSON with ``indent=1, sort_keys=True``, safetensors metadata ``{"format": "pt"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 152064  # Dream-7B / Qwen2.5 padded embedding rows
BASE_VOCAB = 151643  # ids of vocab.json (byte-level BPE); the added tokens follow
HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 32, 2, 2, 1, 64  # head_dim 16 (GQA 2:1 like Dream's 28:4)
MROPE_SECTION = [2, 3, 3]  # Dimple's [16, 24, 24] scaled to head_dim 16 (sums to head_dim / 2)
V_DEPTH, V_HIDDEN, V_HEADS, V_INTER, V_OUT = 4, 32, 2, 64, 48
V_FULLATT = [1, 3]  # every other block full attention (the real tower: [7, 15, 23, 31] of 32)
PATCH, MERGE, TEMPORAL, WINDOW = 14, 2, 2, 112  # the real Qwen2.5-VL geometry
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 128
LM_HEAD_SCALE = 2.0  # a wide head peaks the answer distributions, so confidence thresholds are crossed

#: the added tokens of Dimple's tokenizer (Qwen2.5 specials + Dream's <|beginoftext|> and <|mask|>)
ADDED = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
    "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663, "<|file_sep|>": 151664, "<|beginoftext|>": 151665, "<|mask|>": 151666,
}
VISION_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

#: Qwen2-VL / Qwen2.5-VL chat template (``init.py`` takes Qwen2.5-VL-7B-Instruct's)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: words that get BPE merges (the template's and the question's, plus a few common ones); the rest
#: of any text falls back to byte tokens, so spaces and newlines stay visible in the ids
MERGED_WORDS = ["system", "user", "assistant", "\u0120assistant", "You", "\u0120are", "\u0120helpful", "what",
                "\u0120colour", "\u0120is", "\u0120it", "\u0120?", "\u0120the", "\u0120image", "\u0120red",
                "\u0120blue", "Yes", "No", "\u010a\u010a"]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def byte_alphabet() -> list[str]:
    """The 256 byte-level symbols in GPT-2 / Qwen2 id order (printable bytes first, then the others
    shifted to U+0100 and up), so " " is "Ġ" and "\\n" is "Ċ"."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    order, symbols, extra = list(printable), [chr(b) for b in printable], 0
    for b in range(256):
        if b not in printable:
            order.append(b)
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``vocab.json`` (151643 entries) and the ordered merges."""
    vocab = {s: i for i, s in enumerate(byte_alphabet())}
    merges: list[tuple[str, str]] = []
    for word in MERGED_WORDS:
        left = word[0]
        for ch in word[1:]:
            pair = (left, ch)
            left = left + ch
            if left not in vocab:
                merges.append(pair)
                vocab[left] = len(vocab)
    i = 0
    while len(vocab) < BASE_VOCAB:
        vocab[f"<fill{i}>"] = len(vocab)  # never produced by a merge: stands in for the real BPE tokens
        i += 1
    return vocab, merges


def _dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _tokenizer_files(path: Path) -> None:
    vocab, merges = vocabulary()
    (path / "vocab.json").write_text(_dump(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ADDED.items()}
    cfg = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": VISION_SPECIALS,
        "auto_map": {"AutoProcessor": "processing_dimple.DimpleProcessor",
                     "AutoTokenizer": ["tokenization_dimple.DimpleTokenizer", None]},
        "bos_token": "<|im_start|>", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "mask_token": "<|mask|>", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "padding_side": "left", "processor_class": "DimpleProcessor",
        "split_special_tokens": False, "tokenizer_class": "DimpleTokenizer", "unk_token": None,
    }
    (path / "tokenizer_config.json").write_text(_dump(cfg), encoding="utf-8")
    special = {"additional_special_tokens": VISION_SPECIALS, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
               "mask_token": "<|mask|>", "pad_token": "<|endoftext|>"}
    for k in ("bos_token", "eos_token", "mask_token", "pad_token"):
        special[k] = {"content": special[k], "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False}
    (path / "special_tokens_map.json").write_text(_dump(special), encoding="utf-8")
    (path / "added_tokens.json").write_text(_dump(ADDED), encoding="utf-8")
    (path / "chat_template.json").write_text(_dump({"chat_template": CHAT_TEMPLATE}), encoding="utf-8")


def config() -> dict:
    """``config.json`` as ``DimpleConfig.save_pretrained`` writes it (tiny widths)."""
    vision = {"depth": V_DEPTH, "fullatt_block_indexes": V_FULLATT, "hidden_act": "silu", "hidden_size": V_HIDDEN,
              "in_channels": 3, "in_chans": 3, "intermediate_size": V_INTER, "model_type": "dimple",
              "num_heads": V_HEADS, "out_hidden_size": V_OUT, "patch_size": PATCH, "spatial_merge_size": MERGE,
              "spatial_patch_size": PATCH, "temporal_patch_size": TEMPORAL, "tokens_per_second": 2,
              "window_size": WINDOW}
    return {
        "architectures": ["DimpleModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dimple.DimpleConfig", "AutoModel": "modeling_dimple.DimpleModel"},
        "bos_token_id": 151643, "eos_token_id": 151643, "full_attn_mask": True, "hidden_act": "silu",
        "hidden_size": HIDDEN, "image_token_id": 151655, "initializer_range": 0.02, "intermediate_size": INTER,
        "mask_token_id": 151666, "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "dimple",
        "mrope_section": MROPE_SECTION, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS, "pad_token_id": 151643, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False, "video_token_id": 151656,
        "vision_config": vision, "vision_end_token_id": 151653, "vision_start_token_id": 151652,
        "vision_token_id": 151654, "vocab_size": VOCAB,
    }


def preprocessor_config() -> dict:
    return {
        "auto_map": {"AutoImageProcessor": "image_processing_dimple.DimpleImageProcessor",
                     "AutoProcessor": "processing_dimple.DimpleProcessor"},
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_processor_type": "DimpleImageProcessor", "image_std": CLIP_STD,
        "max_pixels": MAX_PIXELS, "merge_size": MERGE, "min_pixels": MIN_PIXELS, "patch_size": PATCH,
        "processor_class": "DimpleProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"max_pixels": MAX_PIXELS, "min_pixels": MIN_PIXELS}, "temporal_patch_size": TEMPORAL,
    }


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of ``DimpleModel``'s state dict under its own name (bfloat16)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    def norm(n):
        return 1 + w(n, scale=0.1)

    sd: dict[str, torch.Tensor] = {}
    # vision tower (Qwen2.5-VL): Conv3d patch embed, RMSNorm blocks with gated SiLU MLP, 2x2 merger
    vh, vi = V_HIDDEN, V_INTER
    sd["visual.patch_embed.proj.weight"] = w(vh, 3, TEMPORAL, PATCH, PATCH, scale=(3 * TEMPORAL * PATCH * PATCH) ** -0.5)
    for i in range(V_DEPTH):
        p = f"visual.blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm2.weight"] = norm(vh), norm(vh)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = w(3 * vh, vh, scale=vh ** -0.5), w(3 * vh, scale=0.1)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = w(vh, vh, scale=vh ** -0.5), w(vh, scale=0.1)
        for a, (o, n) in (("gate_proj", (vi, vh)), ("up_proj", (vi, vh)), ("down_proj", (vh, vi))):
            sd[p + f"mlp.{a}.weight"], sd[p + f"mlp.{a}.bias"] = w(o, n, scale=n ** -0.5), w(o, scale=0.1)
    m = vh * MERGE * MERGE
    sd["visual.merger.ln_q.weight"] = norm(vh)
    sd["visual.merger.mlp.0.weight"], sd["visual.merger.mlp.0.bias"] = w(m, m, scale=m ** -0.5), w(m, scale=0.1)
    sd["visual.merger.mlp.2.weight"], sd["visual.merger.mlp.2.bias"] = w(V_OUT, m, scale=m ** -0.5), w(V_OUT, scale=0.1)
    # projector: linear_1 -> ACT2FN[hidden_act] -> linear_2
    sd["img_projector.linear_1.weight"] = w(HIDDEN, V_OUT, scale=V_OUT ** -0.5)
    sd["img_projector.linear_1.bias"] = w(HIDDEN, scale=0.5)
    sd["img_projector.linear_2.weight"] = w(HIDDEN, HIDDEN, scale=2 * HIDDEN ** -0.5)
    sd["img_projector.linear_2.bias"] = w(HIDDEN, scale=0.1)
    # Dream / Qwen2 decoder
    hd = HIDDEN // HEADS
    sd["model.embed_tokens.weight"] = w(VOCAB, HIDDEN, scale=1.0)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = w(HEADS * hd, HIDDEN, scale=2 * HIDDEN ** -0.5)
        sd[p + "self_attn.q_proj.bias"] = w(HEADS * hd, scale=0.1)
        sd[p + "self_attn.k_proj.weight"] = w(KV_HEADS * hd, HIDDEN, scale=2 * HIDDEN ** -0.5)
        sd[p + "self_attn.k_proj.bias"] = w(KV_HEADS * hd, scale=0.1)
        sd[p + "self_attn.v_proj.weight"] = w(KV_HEADS * hd, HIDDEN, scale=HIDDEN ** -0.5)
        sd[p + "self_attn.v_proj.bias"] = w(KV_HEADS * hd, scale=0.1)
        sd[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * hd, scale=HIDDEN ** -0.5)
        sd[p + "mlp.gate_proj.weight"] = w(INTER, HIDDEN, scale=HIDDEN ** -0.5)
        sd[p + "mlp.up_proj.weight"] = w(INTER, HIDDEN, scale=HIDDEN ** -0.5)
        sd[p + "mlp.down_proj.weight"] = w(HIDDEN, INTER, scale=INTER ** -0.5)
        sd[p + "input_layernorm.weight"], sd[p + "post_attention_layernorm.weight"] = norm(HIDDEN), norm(HIDDEN)
    sd["model.norm.weight"] = norm(HIDDEN)
    sd["lm_head.weight"] = w(VOCAB, HIDDEN, scale=LM_HEAD_SCALE)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}



def _save(path: Path, sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    keys = sorted(sd)
    sizes = {k: sd[k].numel() * sd[k].element_size() for k in keys}
    total, acc, cut = sum(sizes.values()), 0, len(keys)
    for j, k in enumerate(keys):  # first shard: keys in order until half of the bytes
        acc += sizes[k]
        if acc >= total / 2:
            cut = j + 1
            break
    parts = [keys[:cut], keys[cut:]]
    weight_map = {}
    for s, part in enumerate(parts):
        name = f"model-{s + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: sd[k] for k in part}, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(_dump(index))


def write_real_checkpoint(path: Path) -> Path:
    """Write the tiny Dimple checkpoint into ``path`` (created); return ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _save(path, weights())
    (path / "config.json").write_text(_dump(config()))
    gen = {"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151643, "pad_token_id": 151643,
           "transformers_version": "4.46.2"}
    (path / "generation_config.json").write_text(_dump(gen))
    (path / "preprocessor_config.json").write_text(_dump(preprocessor_config()))
    _tokenizer_files(path)
    return path
