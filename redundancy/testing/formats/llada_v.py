"""The tiny ``llada-v`` checkpoint in the layout GSAI-ML/LLaDA-V publishes (LLaVA-OneVision + LLaDA).

Read by the ORIGINAL loader ``llava.model.builder.load_pretrained_model(path, None, "llava_llada")``
of ML-GSAI/LLaDA-V (``train/llava``) without patches, and by the toolkit's ``llada-v`` adapter.

Files: ``config.json`` (``LlavaLLaDAConfig``: LLaDA's LLaMA-named fields as in
``train/llada_v_prepare/files/config.json`` plus the fields LLaDA-V's ``train/llava/train/train.py``
writes into the config: ``image_aspect_ratio anyres_max_4``, ``image_grid_pinpoints`` expanded to
the pixel pairs ``[[384, 384], ..., [2304, 2304]]`` of ``(1x1),...,(6x6)`` (train.py:1899-1918),
``mm_patch_merge_type spatial_unpad``, ``mm_use_im_patch_token false`` ...), ``generation_config.json``,
``tokenizer.json`` / ``tokenizer_config.json`` / ``special_tokens_map.json`` (LLaDA's 269 special
tokens at their real ids 126080-126348, ``bos_token <|startoftext|>``, ``add_bos_token false``, the
chat template), two bfloat16 safetensors shards and ``model.safetensors.index.json``.

Real geometry: vocabulary 126464 rows in the embedding and head; the tokenizer has 126349 entries
(126080 ordinary ids + the 269 specials; 126464 is 126349 rounded up to a multiple of 128), so the
original loader's ``resize_token_embeddings(len(tokenizer))`` (builder.py:303) shrinks both to 126349
rows, as it does for the published checkpoint [len of the hub tokenizer: inferred, hub unverified];
SigLIP patch 14 with 27 x 27 = 729 positions (384-px tiles), the tower's last layer already removed
(LLaVA's ``SigLipVisionTower.load_model``); ``mlp2x_gelu`` projector; ``image_newline``.
Tiny: hidden 32, 2 layers, 4 heads; SigLIP hidden 144 (2 heads of 72, as so400m's head width),
2 kept layers.

The vision tower's own config is not part of this directory (the original loads it by hub id
``mm_vision_tower``); :func:`siglip_config` is what a driver serves for that id.

The tokenizer is a word-level ``tokenizer.json`` written as JSON here: every whitespace character
and every ``.,?!:;/`` is a token of its own, so the template's ``"\\n"`` tokens show in the ids.

Two deliberate choices: the head row of ``<|eot_id|>`` is drawn at a larger scale (``EOT_SCALE``)
so that the tiny model proposes it at some answer slots, which exercises LLaDA-V's
``stopping_criteria=['<|eot_id|>']`` rule (it stops the small image's answers); and the attention
and MLP outputs are drawn larger than the token embeddings (``SCALES``), so that the answer slots'
rows differ by position and by what is committed (with unit embeddings every all-mask row had the
same argmax and every answer was one repeated token).

:func:`write_real_checkpoint` takes ``image_aspect_ratio`` for the ``pad`` variant of the goldens
(only ``config.json`` differs). Deterministic byte for byte: all tensors come from one seeded
:class:`torch.Generator`; safetensors files are serialised here (sorted keys, fixed header);
JSON is written with ``indent=1, sort_keys=True``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

VOCAB = 126464  # rows of the embedding and the head (config vocab_size)
TOKENIZER_LEN = 126349  # ids 0 .. 126348
SEED = 20250609
D, LAYERS, HEADS, INTER = 32, 2, 4, 64
V_HIDDEN, V_INTER, V_LAYERS, V_PATCH, V_IMAGE = 144, 96, 2, 14, 384
V_HEADS = V_HIDDEN // 72
V_POSITIONS = (V_IMAGE // V_PATCH) ** 2  # 27 x 27 = 729
BOS_ID, EOS_ID, MASK_ID, EOT_ID = 126080, 126081, 126336, 126348
EOT_SCALE = 1.6
#: scales of the decoder's weights: the attention and MLP outputs dominate the (unit-scale) token
#: embeddings, so that the answer slots' rows differ by position and by what is committed
SCALES = {"embed": 0.5, "attn": 0.4, "out": 1.0, "mlp": 0.3, "head": 0.2}
VISION_HUB_ID = "google/siglip2-so400m-patch14-384"
ASPECT_RATIOS = ("anyres_max_4", "pad")

NAMED = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126082: "[CLS]", 126083: "[gMASK]",
         126336: "<|mdm_mask|>", 126340: "<role>", 126341: "</role>", 126342: "<|arithmetic_start|>",
         126343: "<|arithmetic_end|>", 126344: "<|number_start|>", 126345: "<|number_end|>",
         126346: "<|start_header_id|>", 126347: "<|end_header_id|>", 126348: "<|eot_id|>"}
ADDITIONAL = ["<|mdm_mask|>", "<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>", "<|number_start|>",
              "<|number_end|>"]
CHAT_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                 "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                 "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                 "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")
WORDS = ("system user assistant You you are a helpful language and vision assistant able to understand the visual "
         "content that provides assist with variety of tasks using natural what colour is it red blue yes no "
         "describe image the answer no_think think").split()
SYMBOLS = [" ", "\n", "\t", ".", ",", "?", "!", ":", ";", "/"]
PRETOKENIZE = "\\s|[.,?!:;/]"


def _dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def special_tokens() -> dict[int, str]:
    """LLaDA's 269 special tokens by id; unnamed ids are ``<|reserved_token_{id - 126084}|>``."""
    return {i: NAMED.get(i, f"<|reserved_token_{i - 126084}|>") for i in range(BOS_ID, TOKENIZER_LEN)}


def tokenizer_json() -> dict:
    special = special_tokens()
    ordinary = list(dict.fromkeys(["[UNK]", *SYMBOLS, *WORDS]))
    vocab = {}
    for i in range(TOKENIZER_LEN):
        vocab[special[i] if i in special else ordinary[i] if i < len(ordinary) else f"<f{i}>"] = i
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, t in sorted(special.items())]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": PRETOKENIZE}, "behavior": "Isolated",
                              "invert": False},
            "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}


def tokenizer_config() -> dict:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, t in sorted(special_tokens().items())}
    return {"add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": added,
            "additional_special_tokens": ADDITIONAL, "bos_token": "<|startoftext|>", "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False, "cls_token": "[CLS]", "eos_token": "<|endoftext|>",
            "fast_tokenizer": True, "gmask_token": "[gMASK]", "merges_file": None,
            "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 1000000000000000019884624838656,
            "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast", "trust_remote_code": True,
            "vocab_file": None}


def special_tokens_map() -> dict:
    def tok(s):
        return {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    return {"additional_special_tokens": ADDITIONAL, "bos_token": tok("<|startoftext|>"), "cls_token": tok("[CLS]"),
            "eos_token": tok("<|endoftext|>"), "pad_token": tok("<|endoftext|>")}


def pinpoints(lo: int = 1, hi: int = 6, tile: int = V_IMAGE) -> list[list[int]]:
    """``(1x1),...,(6x6)`` as train.py stores it: ``[[i * 384, j * 384] for i in 1..6 for j in 1..6]``."""
    return [[i * tile, j * tile] for i in range(lo, hi + 1) for j in range(lo, hi + 1)]


def config(image_aspect_ratio: str = "anyres_max_4") -> dict:
    """``config.json``: LLaDA's fields plus the LLaVA-OneVision fields LLaDA-V's training saves."""
    if image_aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"unknown image_aspect_ratio {image_aspect_ratio!r}; "
                         f"choose one of: {', '.join(ASPECT_RATIOS)}")
    return {
        "architectures": ["LlavaLLaDAModelLM"], "model_type": "llava_llada",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": EOS_ID,
        "hidden_act": "silu", "hidden_size": D, "initializer_range": 0.02, "intermediate_size": INTER,
        "max_position_embeddings": 16384, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.2", "use_cache": False, "vocab_size": VOCAB,
        "mm_vision_tower": VISION_HUB_ID, "vision_tower_pretrained": None, "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": V_HIDDEN, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": image_aspect_ratio,
        "image_grid_pinpoints": pinpoints(), "image_crop_resolution": None, "image_split_resolution": None,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_mm_proj": True,
        "mm_newline_position": "grid", "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": None,
        "mm_resampler_type": None, "mm_projector_lr": None, "mm_vision_tower_lr": 2e-06,
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "add_faster_video": False, "faster_token_stride": 10, "force_sample": False, "add_time_instruction": False,
        "use_pos_skipping": False, "pos_skipping_range": 4096,
        "tokenizer_padding_side": "right", "tokenizer_model_max_length": 8192,
    }


def generation_config() -> dict:
    return {"_from_model_config": True, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "transformers_version": "4.38.2"}


def siglip_config() -> dict:
    """The config a driver serves for ``mm_vision_tower`` (a SigLIP config; 3 layers, of which LLaVA drops one)."""
    vision = {"hidden_size": V_HIDDEN, "intermediate_size": V_INTER, "num_hidden_layers": V_LAYERS + 1,
              "num_attention_heads": V_HEADS, "image_size": V_IMAGE, "patch_size": V_PATCH, "num_channels": 3,
              "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-06, "attention_dropout": 0.0,
              "model_type": "siglip_vision_model"}
    return {"architectures": ["SiglipModel"], "model_type": "siglip", "vision_config": vision,
            "text_config": {"model_type": "siglip_text_model", "hidden_size": V_HIDDEN}}


def siglip_preprocessor_config() -> dict:
    return {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "processor_class":
            "SiglipProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"height": V_IMAGE, "width": V_IMAGE}}


def tensors() -> dict[str, torch.Tensor]:
    """Every weight under its checkpoint name, bfloat16, drawn in a fixed order from one generator."""
    gen = torch.Generator().manual_seed(SEED)

    def g(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    sd: dict[str, torch.Tensor] = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name, shape, scale in (("self_attn.q_proj", (D, D), "attn"), ("self_attn.k_proj", (D, D), "attn"),
                                   ("self_attn.v_proj", (D, D), "out"), ("self_attn.o_proj", (D, D), "out"),
                                   ("mlp.gate_proj", (INTER, D), "mlp"), ("mlp.up_proj", (INTER, D), "mlp"),
                                   ("mlp.down_proj", (D, INTER), "mlp")):
            sd[p + name + ".weight"] = g(*shape, scale=SCALES[scale])
        sd[p + "input_layernorm.weight"] = 1 + g(D, scale=0.1)
        sd[p + "post_attention_layernorm.weight"] = 1 + g(D, scale=0.1)
    sd["model.embed_tokens.weight"] = g(VOCAB, D, scale=SCALES["embed"])
    sd["model.norm.weight"] = 1 + g(D, scale=0.1)
    head = g(VOCAB, D, scale=SCALES["head"])
    head[EOT_ID] = g(D, scale=EOT_SCALE)
    sd["lm_head.weight"] = head
    t = "model.vision_tower.vision_tower.vision_model."
    h = V_HIDDEN
    sd[t + "embeddings.patch_embedding.weight"] = g(h, 3, V_PATCH, V_PATCH, scale=0.05)
    sd[t + "embeddings.patch_embedding.bias"] = g(h)
    sd[t + "embeddings.position_embedding.weight"] = g(V_POSITIONS, h)
    for i in range(V_LAYERS):
        q = f"{t}encoder.layers.{i}."
        for a in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[q + f"self_attn.{a}.weight"] = g(h, h, scale=0.05)
            sd[q + f"self_attn.{a}.bias"] = g(h)
        for n in ("layer_norm1", "layer_norm2"):
            sd[q + n + ".weight"] = 1 + g(h, scale=0.1)
            sd[q + n + ".bias"] = g(h)
        sd[q + "mlp.fc1.weight"] = g(V_INTER, h)
        sd[q + "mlp.fc1.bias"] = g(V_INTER)
        sd[q + "mlp.fc2.weight"] = g(h, V_INTER)
        sd[q + "mlp.fc2.bias"] = g(h)
    # the post-norm stays in LLaVA checkpoints (unused by the features); the pooling head is Identity
    sd[t + "post_layernorm.weight"] = 1 + g(h, scale=0.1)
    sd[t + "post_layernorm.bias"] = g(h)
    sd["model.mm_projector.0.weight"] = g(D, h)
    sd["model.mm_projector.0.bias"] = g(D)
    sd["model.mm_projector.2.weight"] = g(D, D)
    sd["model.mm_projector.2.bias"] = g(D)
    sd["model.image_newline"] = g(D, scale=1.0)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}


_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32"}


def safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    """A safetensors file (keys sorted, metadata ``{"format": "pt"}``), serialised without the library."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k in sorted(sd):
        t = sd[k].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def write_real_checkpoint(path: Path, image_aspect_ratio: str = "anyres_max_4") -> Path:
    """Write the checkpoint into ``path`` (created); ``image_aspect_ratio``: ``anyres_max_4`` or ``pad``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = tensors()
    # two shards as the published checkpoint has: the decoder, then the head and the vision side
    first = sorted(k for k in sd if k.startswith(("model.layers.", "model.embed_tokens", "model.norm")))
    second = sorted(k for k in sd if k not in first)
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    weight_map = {}
    for name, keys in zip(names, (first, second)):
        (path / name).write_bytes(safetensors_bytes({k: sd[k] for k in keys}))
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    files = {
        "model.safetensors.index.json": {"metadata": {"total_size": total}, "weight_map": weight_map},
        "config.json": config(image_aspect_ratio),
        "generation_config.json": generation_config(),
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": tokenizer_config(),
        "special_tokens_map.json": special_tokens_map(),
    }
    for name, obj in files.items():
        (path / name).write_text(_dumps(obj) + "\n")
    return path
