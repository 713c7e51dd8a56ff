"""The tiny checkpoint of the ``llada-generate`` goldens: LLaDA's language model in LLaDA-V's published layout.

The goldens of ``llada-generate`` test LLaDA's sampler (``generate.py`` of ML-GSAI/LLaDA). LLaDA's
own modeling (``modeling_llada.py``) lives only on the model hub, and the toolkit hosts LLaDA's
language model as the language model of its ``llada-v`` adapter, so this checkpoint is a
LLaDA-V-layout directory (``GSAI-ML/LLaDA-V``: LLaDA-8B-Instruct's weights renamed to LLaMA names
by LLaDA-V's ``train/llada_v_prepare/rename_checkpoint.py``, plus a SigLIP tower, the
``mlp2x_gelu`` projector and ``image_newline``). Only its language model is used by the goldens;
the vision part is there so that the toolkit's ``llada-v`` adapter loads the directory.

What is real: the vocabulary size (126464) and LLaDA's 269 special tokens with their ids
(126080-126348: ``<|startoftext|>``, ``<|endoftext|>``, ``<|mdm_mask|>`` 126336, ``<|eot_id|>``
126348 ...), ``tokenizer_config.json`` / ``special_tokens_map.json`` as LLaDA-8B-Instruct ships them
(``add_bos_token`` false, ``bos_token`` ``<|startoftext|>``, its chat template), rope_theta 500000,
rms_norm_eps 1e-5, bfloat16 weights, two safetensors shards with an index, SigLIP geometry (patch
14, 384-px tiles, 27 x 27 = 729 positions). What is tiny: hidden 32, 3 layers, 4 heads, SigLIP
hidden 144 and 2 layers.

The tokenizer is a word-level ``tokenizer.json`` written as JSON here (no library save): every
whitespace character is its own token, so the template's ``"\\n\\n"`` shows in the ids.

Two deliberate choices: the head is drawn at scale 0.6 (proposals with probabilities around
0.1-0.5 rather than a flat 1/V), and the head rows of ``<|eot_id|>`` and ``<|endoftext|>`` are
0.98 x the rows of the two content tokens this tiny model proposes most (19164, 108232) plus noise, so
that it proposes the end tokens at some answer slots and not at others and gives them 5-25 % of
the probability elsewhere; without that a random head would almost never propose them and
LLaDA's end rules (``logits_eos_inf``, ``confidence_eos_eot_inf``) would not be exercised.

Everything is deterministic, byte for byte: all tensors come from one seeded
:class:`torch.Generator`, JSON is written with ``indent=1, sort_keys=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB = 126464
SEED = 1234
D, LAYERS, HEADS, INTER = 32, 3, 4, 64
V_HIDDEN, V_INTER, V_LAYERS, V_PATCH, V_IMAGE = 144, 64, 2, 14, 384
V_POSITIONS = (V_IMAGE // V_PATCH) ** 2  # 27 x 27 = 729
EOS_ID, EOT_ID, MASK_ID, BOS_ID = 126081, 126348, 126336, 126080
#: the scale of the head rows (sharp enough for confident proposals)
HEAD_SCALE = 0.6
#: the end tokens' head rows are these content rows (the two tokens this tiny model proposes most) plus noise
EOT_ANCHOR, EOS_ANCHOR, END_NOISE, END_GAIN = 19164, 108232, 0.3, 0.98

#: LLaDA's named special tokens; every other id in 126080..126339 is ``<|reserved_token_{id - 126084}|>``
NAMED = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126082: "[CLS]", 126083: "[gMASK]",
         126336: "<|mdm_mask|>", 126340: "<role>", 126341: "</role>", 126342: "<|arithmetic_start|>",
         126343: "<|arithmetic_end|>", 126344: "<|number_start|>", 126345: "<|number_end|>",
         126346: "<|start_header_id|>", 126347: "<|end_header_id|>", 126348: "<|eot_id|>"}
ADDITIONAL = ["<|mdm_mask|>", "<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>", "<|number_start|>",
              "<|number_end|>"]
#: LLaDA-8B-Instruct's chat template (tokenizer_config.json of the published checkpoint)
CHAT_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                 "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                 "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                 "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")
WORDS = ("system user assistant you are a helpful language and vision assistant . able to understand the visual "
         "content that provides , assist with variety of tasks using natural what colour is it red blue yes no "
         "describe image ? the answer").split()
WHITESPACE = [" ", "\n", "\t"]


def special_tokens() -> dict[int, str]:
    """All 269 special tokens of LLaDA's tokenizer, by id."""
    out = {}
    for i in range(126080, 126349):
        out[i] = NAMED.get(i, f"<|reserved_token_{i - 126084}|>")
    return out


def _dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def tokenizer_json() -> dict:
    """A word-level tokenizer with LLaDA's vocabulary size and special tokens (whitespace isolated)."""
    special = special_tokens()
    vocab: dict[str, int] = {}
    ordinary = list(dict.fromkeys(["[UNK]", *WHITESPACE, *WORDS]))
    for i in range(VOCAB):
        if i in special:
            vocab[special[i]] = i
        elif i < len(ordinary):
            vocab[ordinary[i]] = i
        else:
            vocab[f"<f{i}>"] = i
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, t in sorted(special.items())]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        # each whitespace character is a token of its own; words are the runs between them
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }


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


def config() -> dict:
    """LLaDA-V's ``config.json``: LLaDA's LLaMA-named fields plus the LLaVA-OneVision fields."""
    return {
        "architectures": ["LlavaLLaDAModelLM"], "model_type": "llava_llada",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": EOS_ID,
        "hidden_act": "silu", "hidden_size": D, "initializer_range": 0.02, "intermediate_size": INTER,
        "max_position_embeddings": 16384, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": False,
        "vocab_size": VOCAB, "mask_token_id": MASK_ID,
        "mm_vision_tower": "google/siglip2-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": V_HIDDEN, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "anyres_max_4",
        "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "mm_newline_position": "grid", "mm_spatial_pool_mode": "bilinear", "mm_resampler_type": None,
        "tokenizer_padding_side": "right", "tokenizer_model_max_length": 8192, "use_mm_proj": True,
        "vision_tower_pretrained": None,
        "vision_config": {"hidden_size": V_HIDDEN, "intermediate_size": V_INTER, "num_hidden_layers": V_LAYERS,
                          "num_attention_heads": 2, "patch_size": V_PATCH, "image_size": V_IMAGE,
                          "layer_norm_eps": 1e-06},
    }


def generation_config() -> dict:
    return {"_from_model_config": True, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "transformers_version": "4.38.2"}


def _tensors(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def g(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    sd: dict[str, torch.Tensor] = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = g(D, D)
        sd[p + "self_attn.k_proj.weight"] = g(D, D)
        sd[p + "self_attn.v_proj.weight"] = g(D, D)
        sd[p + "self_attn.o_proj.weight"] = g(D, D)
        sd[p + "mlp.gate_proj.weight"] = g(INTER, D)
        sd[p + "mlp.up_proj.weight"] = g(INTER, D)
        sd[p + "mlp.down_proj.weight"] = g(D, INTER)
        sd[p + "input_layernorm.weight"] = 1 + g(D, scale=0.1)
        sd[p + "post_attention_layernorm.weight"] = 1 + g(D, scale=0.1)
    sd["model.embed_tokens.weight"] = g(VOCAB, D, scale=1.0)
    sd["model.norm.weight"] = 1 + g(D, scale=0.1)
    head = g(VOCAB, D, scale=HEAD_SCALE)
    head[EOT_ID] = END_GAIN * head[EOT_ANCHOR] + g(D, scale=END_NOISE)
    head[EOS_ID] = END_GAIN * head[EOS_ANCHOR] + g(D, scale=END_NOISE)
    sd["lm_head.weight"] = head
    # SigLIP tower as LLaVA nests it (the last layer already removed), the projector and the newline
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
    sd[t + "post_layernorm.weight"] = 1 + g(h, scale=0.1)
    sd[t + "post_layernorm.bias"] = g(h)
    sd["model.mm_projector.0.weight"] = g(D, h)
    sd["model.mm_projector.0.bias"] = g(D)
    sd["model.mm_projector.2.weight"] = g(D, D)
    sd["model.mm_projector.2.bias"] = g(D)
    sd["model.image_newline"] = g(D, scale=1.0)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}


def write_real_checkpoint(path: Path) -> Path:
    """Write the checkpoint into ``path`` (created); return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    sd = _tensors(gen)
    # like the published shards: the decoder blocks and the vision part first, embeddings and head last
    last = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    shards = {"model-00001-of-00002.safetensors": sorted(k for k in sd if k not in last),
              "model-00002-of-00002.safetensors": sorted(last)}
    weight_map, total = {}, 0
    for name, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(path / name), metadata={"format": "pt"})
        for k in keys:
            weight_map[k] = name
            total += sd[k].numel() * sd[k].element_size()
    (path / "model.safetensors.index.json").write_text(_dumps({"metadata": {"total_size": total},
                                                               "weight_map": weight_map}))
    (path / "config.json").write_text(_dumps(config()))
    (path / "generation_config.json").write_text(_dumps(generation_config()))
    (path / "tokenizer_config.json").write_text(_dumps(tokenizer_config()))
    (path / "special_tokens_map.json").write_text(_dumps(special_tokens_map()))
    (path / "tokenizer.json").write_text(_dumps(tokenizer_json()))
    return path
