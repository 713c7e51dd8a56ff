"""Tiny LaViDa-Dream checkpoint in the published format of ``jacklishufan/lavida-dream-v1.0-instruct``.

What LaViDa's ``load_pretrained_model(path, None, "llava_dream", vision_kwargs=...)`` reads:

* ``config.json``: ``LlavaDreamConfig`` (model_type ``llava_dream``) with Dream-7B's fields
  (Qwen2 layout with q/k/v biases, GQA, RoPE theta 1e6, ``tie_word_embeddings false``,
  ``mask_token_id`` 151666, ``pad/bos/eos`` 151643, vocab 152064) at tiny widths, plus the same
  LLaVA fields as LaViDa-LLaDA (:func:`.lavida_llada.llava_fields`, including ``mm_vision_tower``);
* ``generation_config.json`` (``DreamModel.from_pretrained`` reads it), ``tokenizer.json`` (word
  level, written as JSON; Qwen2.5's 22 control tokens 151643..151664 plus Dream's ``<|beginoftext|>``
  151665 and ``<|mask|>`` 151666 at their real ids, tokenizer length 151667), ``tokenizer_config.json``
  (Qwen2.5's chat template) and ``special_tokens_map.json``. The real Dream repository ships a
  remote-code ``DreamTokenizer`` (slow BPE); here ``tokenizer_class`` is transformers' own
  ``Qwen2Tokenizer`` (fast, from ``tokenizer.json``) so that no code file is part of the checkpoint;
* Qwen2-named weights (``model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}``, ``o_proj``,
  ``mlp.{gate,up,down}_proj``, the two RMSNorms, ``model.embed_tokens``, ``model.norm``,
  ``lm_head``) and the SigLIP tower / projector / newline of LaViDa, in two shards + index.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .lavida_llada import (D, INTER, LAYERS, QK_SCALE, added_tokens_decoder, dumps, llava_fields, randn, save_sharded,
                           siglip_tower, tokenizer_json)

SEED = 20240616
HEADS, KV_HEADS = 4, 2
QWEN_VOCAB = 152064
DREAM_TOKENIZER_LEN = 151667
QWEN_SPECIAL = {name: 151643 + i for i, name in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|beginoftext|>", "<|mask|>"])}
assert QWEN_SPECIAL["<|mask|>"] == 151666 and len(QWEN_SPECIAL) + 151643 == DREAM_TOKENIZER_LEN

#: Qwen2.5's chat template (the part without tools; Dream-v0-Instruct uses Qwen2.5's)
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")


def _dream_lm(gen: torch.Generator) -> dict[str, torch.Tensor]:
    hd = D // HEADS
    sd = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + randn(gen, D, scale=0.1)
        sd[p + "self_attn.q_proj.weight"] = randn(gen, D, D, scale=QK_SCALE)
        sd[p + "self_attn.q_proj.bias"] = randn(gen, D)
        sd[p + "self_attn.k_proj.weight"] = randn(gen, KV_HEADS * hd, D, scale=QK_SCALE)
        sd[p + "self_attn.k_proj.bias"] = randn(gen, KV_HEADS * hd)
        sd[p + "self_attn.v_proj.weight"] = randn(gen, KV_HEADS * hd, D)
        sd[p + "self_attn.v_proj.bias"] = randn(gen, KV_HEADS * hd)
        sd[p + "self_attn.o_proj.weight"] = randn(gen, D, D)
        sd[p + "post_attention_layernorm.weight"] = 1 + randn(gen, D, scale=0.1)
        sd[p + "mlp.gate_proj.weight"] = randn(gen, INTER, D)
        sd[p + "mlp.up_proj.weight"] = randn(gen, INTER, D)
        sd[p + "mlp.down_proj.weight"] = randn(gen, D, INTER)
    sd["model.embed_tokens.weight"] = randn(gen, QWEN_VOCAB, D, scale=1.0)
    sd["model.norm.weight"] = 1 + randn(gen, D, scale=0.1)
    sd["lm_head.weight"] = randn(gen, QWEN_VOCAB, D, scale=0.4)
    return sd


def config() -> dict:
    cfg = {
        "architectures": ["LlavaDreamForMaskedDiffusion"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": D, "initializer_range": 0.02,
        "intermediate_size": INTER, "mask_token_id": 151666, "max_position_embeddings": 131072,
        "max_window_layers": 28, "model_type": "llava_dream", "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "num_key_value_heads": KV_HEADS, "pad_token_id": 151643, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.50.3", "use_cache": False, "use_sliding_window": False,
        "vocab_size": QWEN_VOCAB,
    }
    cfg.update(llava_fields(D))
    return cfg


def write_real_checkpoint(path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    sd = _dream_lm(gen)
    sd.update(siglip_tower(gen, D))
    save_sharded(path, sd)
    (path / "config.json").write_text(dumps(config()))
    (path / "generation_config.json").write_text(dumps(
        {"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151643, "mask_token_id": 151666,
         "pad_token_id": 151643, "transformers_version": "4.50.3"}))
    (path / "tokenizer.json").write_text(dumps(tokenizer_json(DREAM_TOKENIZER_LEN, QWEN_SPECIAL, "<unk>")))
    (path / "tokenizer_config.json").write_text(dumps({
        "add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(QWEN_SPECIAL),
        "bos_token": "<|beginoftext|>", "chat_template": QWEN_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "errors": "replace", "mask_token": "<|mask|>", "model_max_length": 4096,
        "pad_token": "<|endoftext|>", "padding_side": "right", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}))
    (path / "special_tokens_map.json").write_text(dumps(
        {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "mask_token": "<|mask|>",
         "pad_token": "<|endoftext|>"}))
    return path
