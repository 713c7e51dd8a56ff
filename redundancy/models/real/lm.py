"""The real models' language models re-hosted on transformers' Llama / Qwen2 modules.

Three checkpoint layouts map onto them (docs/adapters.md section 1.7):

* ``llama``: LLaDA-V's renamed LLaDA (``model.layers.N.self_attn.q_proj`` ..., ``lm_head``);
* ``olmo``: the OLMo-style LLaDA of LaViDa-LLaDA and MMaDA (``model.transformer.blocks.N.q_proj``,
  ``attn_out``, ``ff_proj`` (gate), ``up_proj``, ``ff_out`` (down), ``wte``, ``ln_f``, ``ff_out``);
* ``qwen2``: Dream / Dimple (``model.layers.N`` with q/k/v biases, ``lm_head``).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .checkpoint import CheckpointError, Weights, require

OLMO_SWITCHES = {  # config value the Llama mapping needs (docs/adapters.md 1.7)
    "block_type": "llama", "activation_type": "silu", "attention_layer_norm": False, "include_bias": False,
    "include_qkv_bias": False, "input_emb_norm": False, "scale_logits": False, "layer_norm_type": "rms",
    "block_group_size": 1,
}


def lm_config(layout: str, cfg: Mapping, where: str) -> dict:
    """Normalised sizes from a checkpoint's config fields (Llama / Qwen2 names, or OLMo ``d_model`` ...)."""
    c = dict(cfg.get("llm_config") or cfg)
    if layout == "olmo" and "d_model" in c:
        require(c, ("d_model", "n_layers", "n_heads"), where)
        for k, need in OLMO_SWITCHES.items():
            if k in c and c[k] is not None and c[k] != need:
                raise CheckpointError(f"{where}: config field {k}={c[k]!r} is not supported; the Llama mapping "
                                      f"needs {k}={need!r} (docs/adapters.md 1.7)")
        d = c["d_model"]
        return dict(hidden=d, layers=c["n_layers"], heads=c["n_heads"], kv_heads=c.get("n_kv_heads") or c["n_heads"],
                    intermediate=c.get("mlp_hidden_size") or c.get("mlp_ratio", 4) * d,
                    vocab=c.get("embedding_size") or c["vocab_size"], rope_theta=c.get("rope_theta", 10000.0),
                    eps=c.get("rms_norm_eps", 1e-5), tied=bool(c.get("weight_tying", False)),
                    max_pos=c.get("max_sequence_length", 4096))
    require(c, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"), where)
    return dict(hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"], intermediate=c["intermediate_size"],
                vocab=c["vocab_size"], rope_theta=c.get("rope_theta", 10000.0), eps=c.get("rms_norm_eps", 1e-6),
                tied=bool(c.get("tie_word_embeddings", False)), max_pos=c.get("max_position_embeddings", 32768),
                mrope_section=mrope_section(c))


def mrope_section(c: Mapping) -> list[int] | None:
    """M-RoPE frequency bands: Dimple's config holds ``mrope_section`` at the top level with
    ``rope_scaling: None`` (Dimple ``configuration_dimple.py`` 114-151); Qwen2-VL-style configs keep
    it in ``rope_scaling``."""
    if c.get("mrope_section"):
        return [int(v) for v in c["mrope_section"]]
    rs = c.get("rope_scaling") or {}
    return [int(v) for v in rs["mrope_section"]] if rs.get("mrope_section") else None


def build_lm(layout: str, s: Mapping, dtype: torch.dtype,
             device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Linear]:
    """An empty transformers decoder and head of the given sizes (eager attention, bidirectional use),
    allocated directly in ``dtype`` on ``device`` (no float32 copy of an 8B model on the host)."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    common = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                  num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                  max_position_embeddings=s["max_pos"], rope_theta=s["rope_theta"], rms_norm_eps=s["eps"],
                  tie_word_embeddings=False)
    if layout == "qwen2":
        dc = Qwen2Config(**common, use_sliding_window=False)
    else:
        dc = LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    dc._attn_implementation = "eager"
    with torch.device("meta"):
        lm = (Qwen2Model if layout == "qwen2" else LlamaModel)(dc)
        head = nn.Linear(s["hidden"], s["vocab"], bias=False)
    lm = lm.to(dtype).to_empty(device=device)
    head = head.to(dtype).to_empty(device=device)
    # the rotary tables are buffers computed at init: rebuild them (float32) on the real device
    with torch.device(device):
        lm.rotary_emb = type(lm.rotary_emb)(config=dc)
    return lm, head


def weight_map(layout: str, n_layers: int, tied: bool) -> tuple[dict, dict]:
    """Checkpoint key -> parameter name, for the decoder (``lm.``) and the head (``head.``)."""
    lm, head = {}, {}
    if layout == "olmo":
        p = "model.transformer."
        lm[p + "wte.weight"] = "embed_tokens.weight"
        lm[p + "ln_f.weight"] = "norm.weight"
        names = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                 "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
                 "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
        for i in range(n_layers):
            for a, b in names.items():
                lm[f"{p}blocks.{i}.{a}.weight"] = f"layers.{i}.{b}.weight"
        head[(p + "wte.weight") if tied else (p + "ff_out.weight")] = "weight"
        return lm, head
    lm["model.embed_tokens.weight"] = "embed_tokens.weight"
    lm["model.norm.weight"] = "norm.weight"
    parts = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
             "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
             "post_attention_layernorm.weight"]
    if layout == "qwen2":
        parts += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    for i in range(n_layers):
        for q in parts:
            lm[f"model.layers.{i}.{q}"] = f"layers.{i}.{q}"
    head["model.embed_tokens.weight" if tied else "lm_head.weight"] = "weight"
    return lm, head


def load_lm(layout: str, weights: Weights, cfg: Mapping, dtype: torch.dtype,
            device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Linear, dict]:
    """Build and fill the decoder and head from a checkpoint."""
    s = lm_config(layout, cfg, str(weights.path / "config.json"))
    lm, head = build_lm(layout, s, dtype, device)
    lm_map, head_map = weight_map(layout, s["layers"], s["tied"])
    weights.load_into(lm, lm_map, dtype)
    weights.load_into(head, head_map, dtype)
    lm.eval()
    return lm, head, s
