"""Golden driver for ``llada-generate``: LLaDA's own sampler, ``generate()`` of ML-GSAI/LLaDA's ``generate.py``.

What is original: the sampler. ``generate.generate`` is imported from the ``--repo`` clone and
called unchanged (``steps``, ``gen_length``, ``block_length``, ``temperature=0``, ``remasking``
``low_confidence`` / ``random``, ``logits_eos_inf``, ``confidence_eos_eot_inf``: the arguments of
``generate.py``'s own ``main()`` and of the OpenCompass wrapper ``opencompass/opencompass/models/dllm.py``,
which calls the same function). The prompt ids come from the original's own calls: the checkpoint's
``AutoTokenizer``, ``apply_chat_template([message], add_generation_prompt=True, tokenize=False)`` and
``tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")``, as ``main()`` does.

What is a STAND-IN: the model. LLaDA's modeling (``modeling_llada.py``, loaded with
``trust_remote_code``) is published only on the model hub, so it cannot be run here. The driver
builds the mask predictor from the checkpoint's tensors with transformers' (4.38.2) LLaMA modules:
``nn.Embedding``, ``LlamaDecoderLayer`` x N (eager attention) called with an all-zero additive 4-D
mask (bidirectional attention, as LLaDA's), ``LlamaRMSNorm``, and the ``lm_head``; positions
0..n-1; the logits stay in the model's dtype (LLaDA's OLMo-style head returns them uncast, as the
copies in Gen-Verse/MMaDA ``models/modeling_llada.py`` 1359-1362 and LaViDa's show). It computes what
the toolkit's ``llada-v`` language model computes on a text-only prompt; the goldens therefore test
the SAMPLER rules (which slots commit, in which order, which tokens), not LLaDA's modeling.

Recorded per case (the ``image`` field of the goldens is a case name such as
``len8_steps8_block8``): ``prompt_ids``, the full-pass row summaries (``logits_sel``, ``lse``,
``argmax`` of rows P-1 .. P+L-1 with every answer slot masked), ``step_inputs`` (the answer slots at
the input of every forward pass of ``generate``), ``output``; random remasking cases also store
``random_conf`` [n_forward, L]: the draws ``generate`` used at the answer slots (``torch.rand((b,
P + L))`` on the global generator after ``torch.manual_seed(seed)``, replayed here; the model
consumes no random numbers).

Shims: none. The checkpoint is read without the hub (local files, ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver_io import ForwardRecorder, Writer, parse_args, read_inputs, row_summary, sel_ids  # noqa: E402

EOS_ID, EOT_ID, MASK_ID = 126081, 126348, 126336
SPECIAL = [126080, EOS_ID, MASK_ID, 126346, 126347, EOT_ID]

#: (case, gen_length, steps, block_length, remasking, logits_eos_inf, confidence_eos_eot_inf)
CASES = [
    ("len8_steps8_block8", 8, 8, 8, "low_confidence", False, False),
    ("len8_steps4_block8", 8, 4, 8, "low_confidence", False, False),
    ("len8_steps3_block8", 8, 3, 8, "low_confidence", False, False),
    ("len8_steps8_block4", 8, 8, 4, "low_confidence", False, False),
    ("len8_steps6_block4", 8, 6, 4, "low_confidence", False, False),
    ("len8_steps4_block2", 8, 4, 2, "low_confidence", False, False),
    ("len8_steps16_block8", 8, 16, 8, "low_confidence", False, False),
    ("len16_steps8_block4", 16, 8, 4, "low_confidence", False, False),
    ("len16_steps16_block16", 16, 16, 16, "low_confidence", False, False),
    ("len8_steps8_block8_random", 8, 8, 8, "random", False, False),
    ("len8_steps4_block4_random", 8, 4, 4, "random", False, False),
    ("len16_steps8_block8_random", 16, 8, 8, "random", False, False),
    ("len8_steps4_block4_random_eot", 8, 4, 4, "random", False, True),
    ("len8_steps8_block8_eot", 8, 8, 8, "low_confidence", False, True),
    ("len8_steps3_block8_eot", 8, 3, 8, "low_confidence", False, True),
    ("len8_steps4_block4_eot", 8, 4, 4, "low_confidence", False, True),
    ("len16_steps16_block16_eot", 16, 16, 16, "low_confidence", False, True),
    ("len16_steps8_block4_eot", 16, 8, 4, "low_confidence", False, True),
    ("len8_steps8_block8_logitseos", 8, 8, 8, "low_confidence", True, False),
    ("len16_steps8_block4_logitseos", 16, 8, 4, "low_confidence", True, False),
    ("len16_steps16_block16_eot_logitseos", 16, 16, 16, "low_confidence", True, True),
]


class StandIn(nn.Module):
    """LLaDA's mask predictor rebuilt from the checkpoint with transformers' LLaMA modules (bidirectional)."""

    def __init__(self, ckpt: Path, dtype: torch.dtype):
        super().__init__()
        from safetensors.torch import load_file
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

        c = json.loads((ckpt / "config.json").read_text())
        cfg = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                          intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                          num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                          max_position_embeddings=c["max_position_embeddings"], rope_theta=c["rope_theta"],
                          rms_norm_eps=c["rms_norm_eps"], rope_scaling=c.get("rope_scaling"),
                          attention_bias=c.get("attention_bias", False), hidden_act=c.get("hidden_act", "silu"),
                          tie_word_embeddings=False, pretraining_tp=1, attn_implementation="eager")
        cfg._attn_implementation = "eager"
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
        sd = {}
        for shard in sorted(set(index.values())):
            sd.update(load_file(str(ckpt / shard)))
        mine = {}
        for k, v in sd.items():
            if k.startswith("model.layers.") or k in ("model.embed_tokens.weight", "model.norm.weight"):
                mine[k.removeprefix("model.")] = v
            elif k == "lm_head.weight":
                mine[k] = v
        missing, unexpected = self.load_state_dict(mine, strict=False)
        missing = [m for m in missing if "rotary_emb" not in m]
        if missing or unexpected:
            raise RuntimeError(f"stand-in weights: missing {missing}, unexpected {unexpected}")
        self.to(dtype).eval()

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def forward(self, input_ids, attention_mask=None):
        b, n = input_ids.shape
        h = self.embed_tokens(input_ids)
        dt = h.dtype
        mask = torch.zeros(b, 1, n, n, dtype=dt, device=h.device)  # every query sees every key
        if attention_mask is not None:
            mask = mask.masked_fill(~attention_mask.bool()[:, None, None, :], torch.finfo(dt).min)
        pos = torch.arange(n, device=h.device)[None].expand(b, n)
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_ids=pos)[0]
        return SimpleNamespace(logits=self.lm_head(self.norm(h)))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    repo, ckpt = Path(args.repo).resolve(), Path(args.checkpoint)
    sys.path.insert(0, str(repo))
    import generate as llada  # ML-GSAI/LLaDA generate.py
    from transformers import AutoTokenizer

    spec = read_inputs(args.inputs)
    w = Writer(args.out)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    if tokenizer.padding_side != "left":  # as generate.py main()
        tokenizer.padding_side = "left"
    assert tokenizer.pad_token_id != MASK_ID
    messages = [{"role": "user", "content": spec["question"]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = tokenizer([text], add_special_tokens=False, padding=True, return_tensors="pt")
    prompt, attn = enc["input_ids"], enc["attention_mask"]
    P = prompt.shape[1]
    model = StandIn(ckpt, dtype)
    ids = sel_ids(int(model.lm_head.weight.shape[0]), SPECIAL)
    w.put(None, "sel_ids", ids)
    full = {}
    for L in sorted({c[1] for c in CASES}):
        x = torch.cat([prompt, torch.full((1, L), MASK_ID, dtype=torch.long)], 1)
        with torch.no_grad():
            logits = model(x, attention_mask=torch.cat([attn, torch.ones(1, L, dtype=attn.dtype)], 1)).logits
        full[L] = row_summary(logits[0, P - 1: P + L], ids)
    sampler_meta = {}
    for n_case, (case, L, steps, block, remasking, logits_eos, conf_eos) in enumerate(CASES):
        kw = dict(steps=steps, gen_length=L, block_length=block, temperature=0.0, cfg_scale=0.0,
                  remasking=remasking, mask_id=MASK_ID, logits_eos_inf=logits_eos, confidence_eos_eot_inf=conf_eos)
        seed = 1000 + n_case
        rec = ForwardRecorder(model, lambda a, k: (a[0] if a else k["input_ids"])[0, P: P + L])
        torch.manual_seed(seed)
        try:
            out = llada.generate(model, prompt, attn, **kw)
        finally:
            rec.restore()
        steps_in = rec.stacked()
        w.put(case, "prompt_ids", prompt[0])
        for k, v in full[L].items():
            w.put(case, k, v)
        w.put(case, "step_inputs", steps_in)
        w.put(case, "output", out[0, P:])
        if remasking == "random":
            torch.manual_seed(seed)
            draws = [torch.rand((1, P + L))[0, P:] for _ in range(len(steps_in))]
            w.put(case, "random_conf", torch.stack(draws).float())
        ends = int(np.isin(out[0, P:].numpy(), [EOS_ID, EOT_ID]).sum())
        w.info(case, n_visual=0, placeholder=None, prompt_len=P, n_forward=int(len(steps_in)), seed=seed,
               sampler=kw, n_end_tokens_in_output=ends, prompt_text=text)
        sampler_meta[case] = kw
    w.meta["sampler"] = {"function": "generate.generate (ML-GSAI/LLaDA generate.py)", "cases": sampler_meta,
                         "attention_mask": "passed (all ones), as generate.py main()"}
    w.meta["notes"] += [
        "model: a stand-in (transformers 4.38.2 LlamaDecoderLayer x N, bidirectional all-zero 4-D mask, logits in "
        "model dtype) because LLaDA's modeling_llada.py is hub-only; the goldens test the sampler rules",
        "prompt: the checkpoint tokenizer's chat template (LLaDA-8B-Instruct's), tokenizer(add_special_tokens=False)"
        " as generate.py main()",
        "random remasking: random_conf are the answer-slot columns of torch.rand((1, P+L)) drawn once per forward "
        "after torch.manual_seed(seed), replayed by the driver",
        "no shims",
    ]
    w.save()


if __name__ == "__main__":
    main()
