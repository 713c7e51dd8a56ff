"""Tiny checkpoints in each real model's published format, and an independent reference forward.

Nothing here imports ``redundancy.models.real``: the writers follow the key names and config fields
of each model's public loading code (docs/adapters.md), and :func:`reference_logits` recomputes the
language model from those raw tensors with the original block equations (RMSNorm, RoPE with
``rotate_half``, bidirectional softmax attention, SwiGLU MLP; Qwen2 q/k/v biases; M-RoPE bands).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LLADA_VOCAB, QWEN_VOCAB = 126464, 152064
LLADA_SPECIAL = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                 "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348,
                 "<|soi|>": 126084, "<|eoi|>": 126085, "<|mmu|>": 126089}
QWEN_SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|mask|>": 151666}
WORDS = ("system user assistant you are a helpful language and vision assistant . able to understand the visual "
         "content that provides , assist with variety of tasks using natural what colour is it red blue yes no "
         "describe image ?").split()
D, LAYERS, HEADS, INTER = 32, 3, 4, 64


def write_tokenizer(path: Path, vocab_size: int, special: dict[str, int]) -> None:
    """A word-level ``tokenizer.json`` with the model's real vocabulary size and special ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {f"<f{i}>": i for i in range(vocab_size)}
    for i, w in enumerate(["[UNK]", *WORDS]):
        vocab.pop(f"<f{i}>")
        vocab[w] = i
    for tok, i in special.items():
        vocab.pop(f"<f{i}>", None)
        vocab[tok] = i
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    t.save(str(path / "tokenizer.json"))


def _g(gen, *shape, scale=0.2):
    return torch.randn(*shape, generator=gen) * scale


def _decoder(gen, layout: str, vocab: int, kv_heads: int) -> dict:
    """Decoder weights under the checkpoint's own names."""
    hd = D // HEADS
    sd = {}
    for i in range(LAYERS):
        w = {"q": _g(gen, D, D), "k": _g(gen, kv_heads * hd, D), "v": _g(gen, kv_heads * hd, D), "o": _g(gen, D, D),
             "gate": _g(gen, INTER, D), "up": _g(gen, INTER, D), "down": _g(gen, D, INTER),
             "n1": 1 + _g(gen, D, scale=0.1), "n2": 1 + _g(gen, D, scale=0.1)}
        if layout == "olmo":
            p = f"model.transformer.blocks.{i}."
            sd.update({p + "q_proj.weight": w["q"], p + "k_proj.weight": w["k"], p + "v_proj.weight": w["v"],
                       p + "attn_out.weight": w["o"], p + "ff_proj.weight": w["gate"], p + "up_proj.weight": w["up"],
                       p + "ff_out.weight": w["down"], p + "attn_norm.weight": w["n1"], p + "ff_norm.weight": w["n2"]})
        else:
            p = f"model.layers.{i}."
            sd.update({p + "self_attn.q_proj.weight": w["q"], p + "self_attn.k_proj.weight": w["k"],
                       p + "self_attn.v_proj.weight": w["v"], p + "self_attn.o_proj.weight": w["o"],
                       p + "mlp.gate_proj.weight": w["gate"], p + "mlp.up_proj.weight": w["up"],
                       p + "mlp.down_proj.weight": w["down"], p + "input_layernorm.weight": w["n1"],
                       p + "post_attention_layernorm.weight": w["n2"]})
            if layout == "qwen2":
                for a, n in (("q", D), ("k", kv_heads * hd), ("v", kv_heads * hd)):
                    sd[p + f"self_attn.{a}_proj.bias"] = _g(gen, n)
    if layout == "olmo":
        sd["model.transformer.wte.weight"] = _g(gen, vocab, D, scale=1.0)
        sd["model.transformer.ln_f.weight"] = 1 + _g(gen, D, scale=0.1)
        sd["model.transformer.ff_out.weight"] = _g(gen, vocab, D)
    else:
        sd["model.embed_tokens.weight"] = _g(gen, vocab, D, scale=1.0)
        sd["model.norm.weight"] = 1 + _g(gen, D, scale=0.1)
        sd["lm_head.weight"] = _g(gen, vocab, D)
    return sd


V_HIDDEN, V_INTER, V_PATCH, V_SIDE, V_LAYERS = 144, 64, 14, 2, 2
#: a 28-px tile (2 x 2 patches of 14) keeps these fixtures fast; ``vision_config.image_size`` says so to
#: the adapter. The real 384-px geometry is in the real-format writers (:mod:`redundancy.testing.formats`).
TILE = V_SIDE * V_PATCH
LAVIDA_PINPOINTS = [[TILE * a, TILE * b] for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]


def _siglip(gen, post_norm: bool = True) -> dict:
    """SigLIP tower weights as nested by LLaVA's ``SigLipVisionTower`` (last layer already deleted).

    ``post_norm``: whether the (unused) post-layernorm is still in the checkpoint.
    """
    p = "model.vision_tower.vision_tower.vision_model."
    h = V_HIDDEN
    sd = {p + "embeddings.patch_embedding.weight": _g(gen, h, 3, V_PATCH, V_PATCH, scale=0.05),
          p + "embeddings.patch_embedding.bias": _g(gen, h),
          p + "embeddings.position_embedding.weight": _g(gen, V_SIDE ** 2, h)}
    if post_norm:
        sd.update({p + "post_layernorm.weight": torch.ones(h), p + "post_layernorm.bias": torch.zeros(h)})
    for i in range(V_LAYERS):
        q = f"{p}encoder.layers.{i}."
        for a in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[q + f"self_attn.{a}.weight"] = _g(gen, h, h, scale=0.05)
            sd[q + f"self_attn.{a}.bias"] = _g(gen, h)
        for n in ("layer_norm1", "layer_norm2"):
            sd[q + n + ".weight"] = 1 + _g(gen, h, scale=0.1)
            sd[q + n + ".bias"] = _g(gen, h)
        sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"] = _g(gen, V_INTER, h), _g(gen, V_INTER)
        sd[q + "mlp.fc2.weight"], sd[q + "mlp.fc2.bias"] = _g(gen, h, V_INTER), _g(gen, h)
    sd["model.mm_projector.0.weight"], sd["model.mm_projector.0.bias"] = _g(gen, D, h), _g(gen, D)
    sd["model.mm_projector.2.weight"], sd["model.mm_projector.2.bias"] = _g(gen, D, D), _g(gen, D)
    sd["model.image_newline"] = _g(gen, D, scale=1.0)
    return sd


def _save(path: Path, sd: dict, shards: int) -> None:
    keys = sorted(sd)
    if shards == 1:
        save_file({k: sd[k].contiguous() for k in keys}, str(path / "model.safetensors"))
        return
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        save_file({k: sd[k].contiguous() for k in part}, str(path / name))
        weight_map.update({k: name for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_checkpoint(model: str, path: Path, seed: int = 0, shards: int = 2, qwen2_vl: bool = False) -> Path:
    """Write a tiny ``model`` checkpoint (config.json, safetensors shards, tokenizer.json) into ``path``.

    ``qwen2_vl``: Dimple with a Qwen2-VL vision tower (LayerNorm, fc1/fc2 MLP) instead of Qwen2.5-VL's.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    if model in ("llada-v", "lavida-llada", "mmada"):
        vocab = LLADA_VOCAB + (8192 if model == "mmada" else 0)
        layout = "llama" if model == "llada-v" else "olmo"
        sd = _decoder(gen, layout, vocab, HEADS)
        if layout == "llama":  # LLaDA-V: llava_llada config, LLaMA field names
            cfg = {"model_type": "llava_llada", "architectures": ["LlavaLLaDAModelLM"], "hidden_size": D,
                   "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
                   "intermediate_size": INTER, "rope_theta": 500000.0, "max_position_embeddings": 16384,
                   "vocab_size": vocab, "rms_norm_eps": 1e-5, "eos_token_id": 126081, "bos_token_id": 128000,
                   "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
                   "mm_vision_tower": "google/siglip2-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
                   "mm_hidden_size": V_HIDDEN, "image_aspect_ratio": "anyres_max_4",
                   "image_grid_pinpoints": "(1x1),...,(2x2)", "mm_patch_merge_type": "spatial_unpad",
                   "vision_config": {"image_size": TILE},
                   "mm_vision_select_layer": -2}
        else:  # OLMo-style LLaDA config (LaViDa-LLaDA, MMaDA)
            cfg = {"model_type": "mmada" if model == "mmada" else "llava_llada", "d_model": D, "n_layers": LAYERS,
                   "n_heads": HEADS, "n_kv_heads": HEADS, "mlp_hidden_size": INTER, "rope_theta": 500000.0,
                   "vocab_size": vocab, "embedding_size": vocab, "max_sequence_length": 4096, "block_type": "llama",
                   "activation_type": "silu", "attention_layer_norm": False, "include_bias": False,
                   "include_qkv_bias": False, "input_emb_norm": False, "weight_tying": False, "scale_logits": False,
                   "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "rope_full_precision": True,
                   "block_group_size": 1, "mask_token_id": 126336}
            if model == "mmada":
                cfg.update({"llm_vocab_size": LLADA_VOCAB, "codebook_size": 8192, "num_vq_tokens": 16})
            else:
                cfg.update({"mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
                            "mm_hidden_size": V_HIDDEN, "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
                            "image_grid_pinpoints": LAVIDA_PINPOINTS, "vision_config": {"image_size": TILE}})
        if model != "mmada":
            sd.update(_siglip(gen, post_norm=model == "llada-v"))
        write_tokenizer(path, LLADA_VOCAB, LLADA_SPECIAL)
    elif model in ("lavida-dream", "dimple"):
        sd = _decoder(gen, "qwen2", QWEN_VOCAB, 2)
        cfg = {"model_type": "llava_dream" if model == "lavida-dream" else "dimple", "hidden_size": D,
               "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": 2,
               "intermediate_size": INTER, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "vocab_size": QWEN_VOCAB,
               "tie_word_embeddings": False, "max_position_embeddings": 32768, "mask_token_id": 151666,
               "pad_token_id": 151643}
        if model == "lavida-dream":
            sd.update(_siglip(gen))
            cfg.update({"mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
                        "mm_hidden_size": V_HIDDEN, "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
                        "image_grid_pinpoints": LAVIDA_PINPOINTS, "vision_config": {"image_size": TILE}})
        else:
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            vc = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, temporal_patch_size=2,
                      spatial_merge_size=2, out_hidden_size=48, window_size=56, fullatt_block_indexes=[1])
            torch.manual_seed(seed)
            if qwen2_vl:
                from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
                from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

                tower = Qwen2VisionTransformerPretrainedModel._from_config(Qwen2VLVisionConfig(
                    depth=2, embed_dim=32, hidden_size=48, mlp_ratio=2, num_heads=2))
            else:
                tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**vc))
            sd.update({"visual." + k: v.detach().clone() + 0.02 * torch.randn(v.shape, generator=gen)
                       for k, v in tower.state_dict().items()})
            sd["img_projector.linear_1.weight"], sd["img_projector.linear_1.bias"] = _g(gen, D, 48), _g(gen, D)
            sd["img_projector.linear_2.weight"], sd["img_projector.linear_2.bias"] = _g(gen, D, D), _g(gen, D)
            cfg.update({"vision_config": vc, "image_token_id": 151655, "vision_start_token_id": 151652,
                        "vision_end_token_id": 151653, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
                        "full_attn_mask": True, "min_pixels": 28 * 28, "max_pixels": 56 * 56})
        write_tokenizer(path, QWEN_VOCAB, QWEN_SPECIAL)
    else:
        raise ValueError(model)
    _save(path, sd, shards)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


# -- the reference forward ------------------------------------------------------------------------
def _state(path: Path) -> dict:
    sd = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rot(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def _cos_sin(pos, hd, theta, section=None):
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    if section is None:
        ang = pos.double()[..., None] * inv  # [b, n, hd/2]
    else:  # pos [3, b, n]: frequency band j uses axis (index of its section) % 3
        axis = torch.cat([torch.full((s,), i % 3) for i, s in enumerate(section)])
        ang = torch.stack([pos[a].double()[..., None] * inv for a in range(3)])  # [3, b, n, hd/2]
        ang = ang.gather(0, axis.view(1, 1, 1, -1).expand(1, *ang.shape[1:]))[0]
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def reference_logits(path: Path, input_ids, visual_embeds, visual_index, positions, key_valid,
                     embeds=None) -> torch.Tensor:
    """Logits [b, seq, vocab] of the checkpoint's language model, from its raw tensors (float64).

    ``embeds`` (optional) replaces the token embeddings entirely (a model called with inputs_embeds).
    """
    cfg = json.loads((Path(path) / "config.json").read_text())
    sd = {k: v.double() for k, v in _state(path).items()}
    olmo = "d_model" in cfg
    qwen = "model.layers.0.self_attn.q_proj.bias" in sd
    d = cfg.get("d_model", cfg.get("hidden_size"))
    nh = cfg.get("n_heads", cfg.get("num_attention_heads"))
    nkv = cfg.get("n_kv_heads", cfg.get("num_key_value_heads", nh))
    n_layers = cfg.get("n_layers", cfg.get("num_hidden_layers"))
    eps = cfg["rms_norm_eps"]
    hd = d // nh
    section = (cfg.get("rope_scaling") or {}).get("mrope_section")
    emb = sd["model.transformer.wte.weight" if olmo else "model.embed_tokens.weight"]
    x = emb[input_ids] if embeds is None else embeds.double().clone()
    if visual_index.numel():
        x[:, visual_index] = visual_embeds.double()
    b, n, _ = x.shape
    cos, sin = _cos_sin(positions, hd, cfg["rope_theta"], section)
    cos, sin = cos[:, None], sin[:, None]
    bias = torch.zeros(b, 1, 1, n, dtype=torch.float64).masked_fill(~key_valid[:, None, None, :], -math.inf)
    for i in range(n_layers):
        if olmo:
            p = f"model.transformer.blocks.{i}."
            W = {k: sd[p + v + ".weight"] for k, v in dict(q="q_proj", k="k_proj", v="v_proj", o="attn_out", n1="attn_norm",
                                                             n2="ff_norm", gate="ff_proj", up="up_proj", down="ff_out").items()}
        else:
            p = f"model.layers.{i}."
            W = {k: sd[p + v + ".weight"] for k, v in dict(
                q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
                n1="input_layernorm", n2="post_attention_layernorm", gate="mlp.gate_proj", up="mlp.up_proj",
                down="mlp.down_proj").items()}
        h = _rms(x, W["n1"], eps)
        q, k, v = h @ W["q"].T, h @ W["k"].T, h @ W["v"].T
        if qwen:
            q, k, v = (q + sd[p + "self_attn.q_proj.bias"], k + sd[p + "self_attn.k_proj.bias"],
                       v + sd[p + "self_attn.v_proj.bias"])
        q = q.view(b, n, nh, hd).transpose(1, 2)
        k = k.view(b, n, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, 1)
        v = v.view(b, n, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, 1)
        q, k = q * cos + _rot(q) * sin, k * cos + _rot(k) * sin
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1)
        x = x + (att @ v).transpose(1, 2).reshape(b, n, d) @ W["o"].T
        h = _rms(x, W["n2"], eps)
        x = x + (torch.nn.functional.silu(h @ W["gate"].T) * (h @ W["up"].T)) @ W["down"].T
    x = _rms(x, sd["model.transformer.ln_f.weight" if olmo else "model.norm.weight"], eps)
    return x @ sd["model.transformer.ff_out.weight" if olmo else "lm_head.weight"].T


def reference_siglip_tile(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    """Projected SigLIP features of tiles [t, 3, s, s] from LLaVA's key names: no post-norm, no head."""
    sd = {k: v.double() for k, v in _state(path).items()}
    p = "model.vision_tower.vision_tower.vision_model."
    w = sd[p + "embeddings.patch_embedding.weight"]
    ps = w.shape[-1]
    x = torch.nn.functional.conv2d(pixels.double(), w, sd[p + "embeddings.patch_embedding.bias"], stride=ps)
    x = x.flatten(2).transpose(1, 2) + sd[p + "embeddings.position_embedding.weight"]
    t, n, h = x.shape
    nh = h // 72
    i = 0
    while f"{p}encoder.layers.{i}.mlp.fc1.weight" in sd:
        q = f"{p}encoder.layers.{i}."
        lin = lambda z, a: z @ sd[q + a + ".weight"].T + sd[q + a + ".bias"]  # noqa: E731
        y = torch.nn.functional.layer_norm(x, (h,), sd[q + "layer_norm1.weight"], sd[q + "layer_norm1.bias"], 1e-6)
        qq, kk, vv = (lin(y, f"self_attn.{a}").view(t, n, nh, h // nh).transpose(1, 2) for a in ("q_proj", "k_proj", "v_proj"))
        att = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(h // nh), -1)
        x = x + lin((att @ vv).transpose(1, 2).reshape(t, n, h), "self_attn.out_proj")
        y = torch.nn.functional.layer_norm(x, (h,), sd[q + "layer_norm2.weight"], sd[q + "layer_norm2.bias"], 1e-6)
        x = x + lin(torch.nn.functional.gelu(lin(y, "mlp.fc1"), approximate="tanh"), "mlp.fc2")
        i += 1
    y = x @ sd["model.mm_projector.0.weight"].T + sd["model.mm_projector.0.bias"]
    y = torch.nn.functional.gelu(y)
    return y @ sd["model.mm_projector.2.weight"].T + sd["model.mm_projector.2.bias"]
