"""A tiny MMaDA checkpoint in the published format of ``Gen-Verse/MMaDA-8B-MixCoT``.

What MMaDA's own loader reads (``MMadaModelLM.from_pretrained(path, trust_remote_code=True)`` from the
repository's ``models`` package, and ``AutoTokenizer.from_pretrained(path)``):

* ``config.json``: ``model_type`` ``mmada``. :class:`MMadaConfig` is a bare ``PretrainedConfig`` (it
  fills no defaults), and ``LLaDAModelLM.__init__`` reads EVERY field of LLaDA's ``ModelConfig``
  (``create_model_config_from_pretrained_config``, ``models/modeling_llada.py:1369-1379``), so all
  of them are written: LLaDA-8B-Instruct's values (``rope`` true, ``block_type`` llama, ``silu``,
  ``rms`` norms, ``rope_theta`` 500000, ``mask_token_id`` 126336, no weight tying, ...) at tiny
  widths, plus the fields MMaDA's training merges in (``configs/mmada_pretraining_stage4_*.yaml``:
  ``llm_vocab_size`` 126464, ``codebook_size`` 8192, ``num_vq_tokens`` 1024, ``new_vocab_size``
  134656, ``num_new_special_tokens`` 0, ``w_clip_vit``, ``tie_word_embeddings``, ``tokenizer_path``)
  and ``vocab_size`` = ``embedding_size`` = 134656 (``training/train_mmada.py:194-195`` resizes the
  embeddings to ``new_vocab_size`` and sets ``embedding_size`` to it).
* weights under LLaDA's OLMo-style names (``model.transformer.wte`` [134656, d], ``blocks.N.*``,
  ``ln_f``, ``ff_out`` [134656, d]) in bfloat16 (the published dtype), two safetensors shards and
  ``model.safetensors.index.json``.
* the text tokenizer is LLaDA-8B-Instruct's (the stage configs' ``tokenizer_path``; training saves
  ``uni_prompting.text_tokenizer``): 126349 ids (``len(tokenizer)``, which MMaDA adds to every VQ code,
  ``inference_mmu.py:94``; ``app.py:396`` hard-codes 126349), the added tokens 126080-126348
  (``<|startoftext|>``, ``<|endoftext|>``, ``[CLS]``, ``[gMASK]``, ``<|reserved_token_0..255|>`` with
  ``<|mdm_mask|>`` at 126336, ``<role>`` ... ``<|eot_id|>``). ``<|soi|>``/``<|eoi|>``/``<|mmu|>`` are NOT
  tokens: MMaDA writes their reserved ids 126084/126085/126089 directly (``use_reserved_token=True``,
  ``training/prompting_utils.py:17-29,50-55``). ``tokenizer_config.json`` / ``special_tokens_map.json``
  as LLaDA's (``add_bos_token`` false, bos ``<|startoftext|>``, eos = pad ``<|endoftext|>``, LLaDA's chat
  template with ``"\\n\\n"`` after each header).  Which exact files the hub repo holds could not be read
  here (no hub); this follows the code that writes and reads them.

The tokenizer is a WordLevel model (a few real words, fillers elsewhere) whose pre-tokenizer isolates
every whitespace character and every punctuation character, so ``"\\n"``, spaces and a literal
``<eot_id>`` (five pieces ``< eot _ id >``) stay visible in the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 0
D, LAYERS, HEADS, INTER = 32, 3, 4, 64
LLM_VOCAB = 126464  # LLaDA's padded embedding size (config llm_vocab_size)
CODEBOOK = 8192
VOCAB = 134656  # new_vocab_size: LLM_VOCAB + CODEBOOK
TEXT_VOCAB = 126349  # len(tokenizer): ids 0 .. 126348
N_BASE = 126080  # ids below are the BPE vocabulary; 126080 .. 126348 are added tokens
MASK_ID = 126336
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
RESERVED = {"<|soi|>": 126084, "<|eoi|>": 126085, "<|sov|>": 126086, "<|eov|>": 126087, "<|t2i|>": 126088,
            "<|mmu|>": 126089, "<|t2v|>": 126090, "<|v2v|>": 126091, "<|lvg|>": 126092, "[iPAD]": 126093,
            "<|r2i|>": 126094}  # MMaDA's names for reserved ids (not tokenizer entries)
ADDITIONAL = ["<|mdm_mask|>", "<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>",
              "<|number_start|>", "<|number_end|>"]
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")
# the few real entries of the word-level vocabulary (ids 0 ..), the rest are fillers
WORDS = ["\n", " ", "<", ">", "|", "_", "?", ".", ",", ":", "!", "eot", "id", "user", "assistant", "system",
         "what", "colour", "is", "it", "the", "a", "image", "describe", "this", "in", "detail", "please",
         "answer", "question", "using", "single", "word", "or", "phrase", "yes", "no", "red", "blue",
         "mmu", "soi", "eoi", "sot", "start", "end", "header", "think"]
UNK = "[UNK]"


def added_tokens() -> list[tuple[int, str]]:
    """LLaDA-8B-Instruct's added tokens (id, content), 126080 .. 126348."""
    out = [(126080, BOS), (126081, EOS), (126082, "[CLS]"), (126083, "[gMASK]")]
    for k in range(256):
        i = 126084 + k
        out.append((i, "<|mdm_mask|>" if i == MASK_ID else f"<|reserved_token_{k}|>"))
    out += [(126340, "<role>"), (126341, "</role>"), (126342, "<|arithmetic_start|>"),
            (126343, "<|arithmetic_end|>"), (126344, "<|number_start|>"), (126345, "<|number_end|>"),
            (126346, "<|start_header_id|>"), (126347, "<|end_header_id|>"), (126348, "<|eot_id|>")]
    assert [i for i, _ in out] == list(range(N_BASE, TEXT_VOCAB))
    return out


def _dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def tokenizer_json() -> dict:
    vocab = {w: i for i, w in enumerate([UNK, *WORDS])}
    for i in range(len(vocab), N_BASE):
        vocab[f"w{i}"] = i
    added = added_tokens()
    vocab.update({t: i for i, t in added})
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in added],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s|[^A-Za-z0-9\\s]"}, "behavior": "Isolated",
                          "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    }


def tokenizer_config() -> dict:
    tok = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    return {
        "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t, **tok} for i, t in added_tokens()},
        "additional_special_tokens": ADDITIONAL, "bos_token": BOS, "chat_template": LLADA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "cls_token": "[CLS]", "eos_token": EOS, "fast_tokenizer": True,
        "gmask_token": "[gMASK]", "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656, "pad_token": EOS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_tokens_map() -> dict:
    def t(s):
        return {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    return {"additional_special_tokens": ADDITIONAL, "bos_token": t(BOS), "cls_token": t("[CLS]"),
            "eos_token": t(EOS), "pad_token": t(EOS)}


def config() -> dict:
    """Every ``ModelConfig`` field (LLaDA-8B-Instruct's values, tiny sizes) plus MMaDA's fields."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["MMadaModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "codebook_size": CODEBOOK,
        "d_model": D, "embedding_dropout": 0.0, "embedding_size": VOCAB, "eos_token_id": 126081,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "llm_vocab_size": LLM_VOCAB,
        "mask_token_id": MASK_ID, "max_sequence_length": 4096, "mlp_hidden_size": INTER, "mlp_ratio": 4,
        "model_type": "mmada", "multi_query_attention": None, "n_heads": HEADS, "n_kv_heads": HEADS,
        "n_layers": LAYERS, "new_vocab_size": VOCAB, "num_new_special_tokens": 0, "num_vq_tokens": 1024,
        "pad_token_id": 126081, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
        "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "tie_word_embeddings": False, "tokenizer_path": "GSAI-ML/LLaDA-8B-Instruct", "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2", "use_cache": False, "vocab_size": VOCAB, "w_clip_vit": False,
        "weight_tying": False,
    }


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)

    def r(*shape, scale=0.2, base=0.0):
        return (base + torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)

    p = "model.transformer."
    sd = {p + "wte.weight": r(VOCAB, D, scale=1.0)}
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        sd[b + "attn_norm.weight"] = r(D, scale=0.1, base=1.0)
        sd[b + "q_proj.weight"] = r(D, D)
        sd[b + "k_proj.weight"] = r(D, D)
        sd[b + "v_proj.weight"] = r(D, D)
        sd[b + "attn_out.weight"] = r(D, D)
        sd[b + "ff_norm.weight"] = r(D, scale=0.1, base=1.0)
        sd[b + "ff_proj.weight"] = r(INTER, D)
        sd[b + "up_proj.weight"] = r(INTER, D)
        sd[b + "ff_out.weight"] = r(D, INTER)
    sd[p + "ln_f.weight"] = r(D, scale=0.1, base=1.0)
    sd[p + "ff_out.weight"] = r(VOCAB, D, scale=0.5)
    return sd


def write_real_checkpoint(path: Path) -> Path:
    """Write the checkpoint into ``path`` (created); byte-identical on every call."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = _weights()
    # shard 1: embedding and blocks, shard 2: final norm and output projection (as the real shards end)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    last = {"model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    weight_map, total = {}, 0
    for s, name in enumerate(names):
        part = {k: sd[k].contiguous() for k in sorted(sd) if (k in last) == (s == 1)}
        save_file(part, str(path / name), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (path / "model.safetensors.index.json").write_text(
        _dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}))
    (path / "config.json").write_text(_dumps(config()))
    (path / "generation_config.json").write_text(_dumps({"_from_model_config": True, "bos_token_id": 126080,
                                                         "eos_token_id": 126081, "transformers_version": "4.46.2"}))
    (path / "tokenizer.json").write_text(_dumps(tokenizer_json()))
    (path / "tokenizer_config.json").write_text(_dumps(tokenizer_config()))
    (path / "special_tokens_map.json").write_text(_dumps(special_tokens_map()))
    return path
