"""Tiny LaViDa-LLaDA checkpoint in the published format of ``jacklishufan/lavida-llada-v1.0-instruct``.

What the original loader (LaViDa's ``llava.model.builder.load_pretrained_model(path, None,
"llava_llada", vision_kwargs=...)``) reads, with tiny widths and the real geometry:

* ``config.json``: ``LlavaLladaConfig`` (model_type ``llava_llada``) = every OLMo-style ``ModelConfig``
  field LLaDA-8B-Instruct publishes (``block_type llama``, rms norm, RoPE theta 500000, no biases,
  ``weight_tying false``, ``mask_token_id`` 126336, vocab / embedding size 126464, dropouts 0) plus
  the LLaVA fields LaViDa's training writes: ``mm_vision_tower`` (the SigLIP hub id the original
  loads its tower from; the driver serves that id from a local offline cache), ``mlp2x_gelu``
  projector, ``anyres`` with the five LaViDa pinpoints, ``spatial_unpad``, ``bilinear`` 2-D pooling,
  ``mm_use_im_patch_token false`` (otherwise the builder adds a token and resizes the vocabulary);
* ``generation_config.json``, ``tokenizer.json`` (word level, written as JSON here; the LLaDA special
  tokens at their real ids, the real tokenizer length 126349 = ids 0..126348, every whitespace
  character its own token), ``tokenizer_config.json`` (``PreTrainedTokenizerFast``, LLaDA's Llama-3
  chat template, bos ``<|startoftext|>``), ``special_tokens_map.json``;
* the weights under the names the original's modules have (``model.transformer.*`` OLMo blocks,
  ``model.vision_tower.vision_tower.vision_model.*`` SigLIP with its last layer already deleted as
  LLaVA saves it, ``model.mm_projector.{0,2}``, ``model.image_newline``), in two safetensors shards
  with ``model.safetensors.index.json``.

SigLIP geometry is the real one (384 px tile, patch 14, 27 x 27 = 729 positions, head dim 72);
the language model is hidden 32, 3 layers. Everything comes from one seeded ``torch.Generator``,
so the bytes are the same on every call.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20240615
# -- language model (tiny) ---------------------------------------------------------------------
D, LAYERS, HEADS, INTER = 32, 3, 4, 64
QK_SCALE = 0.4  # sharp attention, so that answer slots that differ only by position predict differently
LLADA_VOCAB = 126464  # embedding / head rows of LLaDA-8B
LLADA_TOKENIZER_LEN = 126349  # ids 0..126348 (the last special is <|eot_id|>)
LLADA_SPECIAL = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                 "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}
# -- SigLIP so400m/14 @ 384 geometry, tiny width --------------------------------------------------
V_HIDDEN, V_INTER, V_PATCH, V_IMAGE, V_LAYERS = 144, 64, 14, 384, 2
V_HEADS = V_HIDDEN // 72  # so400m: 1152 / 16 heads = head dim 72
V_SIDE = V_IMAGE // V_PATCH  # 27
PINPOINTS = [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]
SIGLIP_ID = "google/siglip-so400m-patch14-384"
TOWER = "model.vision_tower.vision_tower.vision_model."

#: the words of the templates, the LLaVA / Qwen system prompts and the fixed question
WORDS = ("system user assistant You are a helpful language and vision assistant able to understand the visual "
         "content that provides assist with variety of tasks using natural what colour is it red blue yes no "
         "describe image").split()
PUNCT = [".", ",", "?", "!", ":", "'"]
WHITESPACE = [" ", "\n", "\t"]

LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def randn(gen: torch.Generator, *shape, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def tokenizer_json(length: int, special: dict[str, int], unk: str) -> dict:
    """A word-level ``tokenizer.json`` of ``length`` ids: ``unk``, whitespace, punctuation and WORDS
    first, filler ``<fN>`` entries up to the first special id, the special ids as added tokens."""
    vocab: dict[str, int] = {}
    for w in [unk, *WHITESPACE, *PUNCT, *WORDS]:
        vocab.setdefault(w, len(vocab))
    by_id = {i: t for t, i in special.items()}
    for i in range(len(vocab), length):
        vocab[by_id.get(i, f"<f{i}>")] = i
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in sorted(special.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Isolated", "invert": False},
            {"type": "Punctuation", "behavior": "Isolated"}]},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk},
    }


def added_tokens_decoder(special: dict[str, int]) -> dict:
    return {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True} for t, i in sorted(special.items(), key=lambda kv: kv[1])}


def siglip_tower(gen: torch.Generator, d_model: int) -> dict[str, torch.Tensor]:
    """SigLIP (last layer deleted, post-norm kept as LLaVA saves it), projector and newline."""
    h, sd = V_HIDDEN, {}
    sd[TOWER + "embeddings.patch_embedding.weight"] = randn(gen, h, 3, V_PATCH, V_PATCH, scale=0.05)
    sd[TOWER + "embeddings.patch_embedding.bias"] = randn(gen, h)
    sd[TOWER + "embeddings.position_embedding.weight"] = randn(gen, V_SIDE * V_SIDE, h)
    for i in range(V_LAYERS):
        q = f"{TOWER}encoder.layers.{i}."
        for a in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[q + f"self_attn.{a}.weight"] = randn(gen, h, h, scale=0.05)
            sd[q + f"self_attn.{a}.bias"] = randn(gen, h)
        for n in ("layer_norm1", "layer_norm2"):
            sd[q + n + ".weight"] = 1 + randn(gen, h, scale=0.1)
            sd[q + n + ".bias"] = randn(gen, h)
        sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"] = randn(gen, V_INTER, h), randn(gen, V_INTER)
        sd[q + "mlp.fc2.weight"], sd[q + "mlp.fc2.bias"] = randn(gen, h, V_INTER), randn(gen, h)
    # kept in the checkpoint but never used for the features (hidden_states[-1] is before it)
    sd[TOWER + "post_layernorm.weight"] = 1 + randn(gen, h, scale=0.5)
    sd[TOWER + "post_layernorm.bias"] = randn(gen, h, scale=0.5)
    sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"] = randn(gen, d_model, h), randn(gen, d_model)
    sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"] = randn(gen, d_model, d_model), randn(gen, d_model)
    sd["model.image_newline"] = randn(gen, d_model, scale=1.0)
    return sd


def llava_fields(d_model: int) -> dict:
    """The LLaVA fields LaViDa's training writes into config.json (scripts/train/exps/cluster/*-s2.sh)."""
    return {
        "mm_vision_tower": SIGLIP_ID, "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": V_HIDDEN,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "spatial_unpad",
        "image_aspect_ratio": "anyres", "image_grid_pinpoints": PINPOINTS, "image_crop_resolution": None,
        "image_split_resolution": None, "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": None, "mm_newline_position": "grid",
        "mm_pooler_ratio": 2, "mm_resampler_type": None, "use_mm_proj": True,
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "mm_projector_lr": None,
        "mm_vision_tower_lr": 2e-06, "vision_tower_pretrained": None, "tokenizer_model_max_length": 4096,
        "tokenizer_padding_side": "right", "add_faster_video": False, "faster_token_stride": 10,
        "force_sample": False, "add_time_instruction": False, "use_pos_skipping": False, "pos_skipping_range": 4096,
    }


def save_sharded(path: Path, sd: dict[str, torch.Tensor], shards: int = 2) -> None:
    """Contiguous shards of about equal size over the sorted keys, plus the index."""
    keys = sorted(sd)
    total = sum(sd[k].numel() * sd[k].element_size() for k in keys)
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc, g = 0, 0
    for k in keys:
        if g < shards - 1 and acc >= total * (g + 1) / shards:
            g += 1
        groups[g].append(k)
        acc += sd[k].numel() * sd[k].element_size()
    weight_map = {}
    for s, part in enumerate(groups):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k].contiguous() for k in part}, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (path / "model.safetensors.index.json").write_text(
        dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def _llada_lm(gen: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}."
        sd[p + "attn_norm.weight"] = 1 + randn(gen, D, scale=0.1)
        sd[p + "q_proj.weight"] = randn(gen, D, D, scale=QK_SCALE)
        sd[p + "k_proj.weight"] = randn(gen, D, D, scale=QK_SCALE)
        sd[p + "v_proj.weight"] = randn(gen, D, D)
        sd[p + "attn_out.weight"] = randn(gen, D, D)
        sd[p + "ff_norm.weight"] = 1 + randn(gen, D, scale=0.1)
        sd[p + "ff_proj.weight"] = randn(gen, INTER, D)
        sd[p + "up_proj.weight"] = randn(gen, INTER, D)
        sd[p + "ff_out.weight"] = randn(gen, D, INTER)
    sd["model.transformer.wte.weight"] = randn(gen, LLADA_VOCAB, D, scale=1.0)
    sd["model.transformer.ln_f.weight"] = 1 + randn(gen, D, scale=0.1)
    sd["model.transformer.ff_out.weight"] = randn(gen, LLADA_VOCAB, D, scale=0.4)
    return sd


def config() -> dict:
    cfg = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LlavaLladaForMaskedDiffusion"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": D,
        "embedding_dropout": 0.0, "embedding_size": LLADA_VOCAB, "eos_token_id": 126081, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
        "mlp_hidden_size": INTER, "mlp_ratio": 4, "model_type": "llava_llada", "multi_query_attention": None,
        "n_heads": HEADS, "n_kv_heads": HEADS, "n_layers": LAYERS, "pad_token_id": 126081, "precision": "amp_bf16",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "bfloat16", "transformers_version": "4.50.3",
        "use_cache": False, "vocab_size": LLADA_VOCAB, "weight_tying": False,
    }
    cfg.update(llava_fields(D))
    return cfg


def write_real_checkpoint(path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    sd = _llada_lm(gen)
    sd.update(siglip_tower(gen, D))
    save_sharded(path, sd)
    (path / "config.json").write_text(dumps(config()))
    (path / "generation_config.json").write_text(dumps(
        {"_from_model_config": True, "bos_token_id": 126080, "eos_token_id": 126081, "pad_token_id": 126081,
         "transformers_version": "4.50.3"}))
    (path / "tokenizer.json").write_text(dumps(tokenizer_json(LLADA_TOKENIZER_LEN, LLADA_SPECIAL, "<unk>")))
    (path / "tokenizer_config.json").write_text(dumps({
        "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": added_tokens_decoder(LLADA_SPECIAL),
        "bos_token": "<|startoftext|>", "chat_template": LLADA_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "model_max_length": 4096, "pad_token": "<|endoftext|>", "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    (path / "special_tokens_map.json").write_text(dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return path
