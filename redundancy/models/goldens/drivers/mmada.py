"""Golden driver for MMaDA (Gen-Verse/MMaDA): runs the ORIGINAL code of a clone on a tiny checkpoint.

Run under a Python with transformers 4.46 (MMaDA's requirements pin 4.46.0; /work/venvs/mmada has
4.46.2) plus the imports of MMaDA's ``models`` package (diffusers 0.32.2, einops, jaxtyping,
typeguard, omegaconf, pandas)::

    PY drivers/mmada.py --repo MMaDA --checkpoint CKPT --inputs inputs.json --dtype float32 --out OUT

What it calls, all from the clone:

* ``models.MMadaModelLM.from_pretrained(ckpt, trust_remote_code=True, torch_dtype=...)``
  (``inference_mmu.py:57``, ``evaluation/VLMEvalKit/vlmeval/vlm/mmada/mmada.py:99-103``);
* ``transformers.AutoTokenizer.from_pretrained(ckpt, padding_side="left")`` and
  ``training.prompting_utils.UniversalPrompting(..., use_reserved_token=True)`` for the special ids
  (``<|mmu|>`` 126089, ``<|soi|>`` 126084, ``<|eoi|>`` 126085, ``<|sot|>`` = bos);
* the VLMEvalKit wrapper's ``build_mmada_prompt`` (``vlmeval/vlm/mmada/utils.py:53-57``: the literal text
  ``<eot_id>``, as the training data writes it, ``training/data.py:192,413``), executed from its source
  file (that module's package imports VLMEvalKit, which is not installed: only this one function is
  compiled from the file, unchanged);
* ``MMadaModelLM.mmu_generate`` with the arguments the scripts pass, and ``model(x).logits`` for the
  full pass (the call ``mmu_generate`` makes at every step, ``models/modeling_mmada.py:424``).

Two prompt layouts per image, both built as the originals build them:

* ``vlmevalkit`` (fields ``prompt_ids`` ... ``output``): ``mmada.py:235-249``:
  ``[<|mmu|>, <|soi|>, codes + len(tokenizer), <|eoi|>, <|sot|>, tokenizer([build_mmada_prompt(q)])]``,
  decoded with ``mmu_generate(input_ids, max_new_tokens, steps, block_length)`` at the ratios of the
  wrapper's ``MathVista_MINI`` config (``dataset_configs.py:9-13``: 96/96/48 -> L, L, L/2);
* ``inference_mmu`` (fields ``chat_*``): ``inference_mmu.py:94-123``:
  ``[<|mmu|>, <|soi|>, codes + len(tokenizer), <|eoi|>, apply_chat_template(messages, tokenize=True,
  add_generation_prompt=True)]`` with the checkpoint's chat template, decoded with
  ``max_new_tokens=L, steps=L // 2, block_length=L // 4``.

IMAGES ARE FIXED VQ CODES: the MAGVIT-v2 tokenizer (``showlab/magvitv2``) is hub-only, so each image's
codes are drawn from a generator seeded by the crc32 of the image file's pixels (``codes`` field):
1024 codes (32 x 32, MMaDA-8B-MixCoT's 512 px, ``configs/mmada_demo.yaml``) for the ``square`` image and
256 (16 x 16, the VLMEvalKit wrapper's default 256 px) for the others. Everything after
``vq_model.get_code`` is the original's.

Shims (environment only): HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set and HF_HOME pointed at a temporary
folder (no hub; the checkpoint is a local folder); the repository root put on ``sys.path`` (as the
VLMEvalKit wrapper does, ``mmada.py:12-13``). No upstream computation is patched; the model's
``forward`` is wrapped only to record the answer slots at the input of every call.
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import driver_io  # noqa: E402

VQ_OFFSET_NOTE = "image ids = codes + len(tokenizer) (inference_mmu.py:94, vlmeval mmada.py:235)"
N_CODES = {"square": 1024}  # others 256
CODEBOOK = 8192


def _load_function(path: Path, name: str):
    """Compile one top-level function of a source file (unchanged) without importing its module."""
    tree = ast.parse(path.read_text(), str(path))
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not fn:
        raise SystemExit(f"{path} has no function {name}")
    mod = ast.Module(body=fn, type_ignores=[])
    ns: dict = {}
    exec(compile(mod, str(path), "exec"), ns)
    return ns[name]


def _codes(image_path: str, n: int):
    import numpy as np
    import torch
    from PIL import Image

    px = np.asarray(Image.open(image_path).convert("RGB"))
    g = torch.Generator().manual_seed(zlib.crc32(px.tobytes()))
    return torch.randint(0, CODEBOOK, (n,), generator=g)


def main(argv=None) -> int:
    args = driver_io.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="mmada-hf-")
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=tmp, TOKENIZERS_PARALLELISM="false")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    from transformers import AutoTokenizer

    from models import MMadaModelLM
    from training.prompting_utils import UniversalPrompting

    build_mmada_prompt = _load_function(repo / "evaluation/VLMEvalKit/vlmeval/vlm/mmada/utils.py",
                                        "build_mmada_prompt")
    spec = driver_io.read_inputs(args.inputs)
    L = int(spec["answer_length"])
    question = spec["question"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    w = driver_io.Writer(args.out)

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, padding_side="left")
    uni = UniversalPrompting(tokenizer, max_text_len=2048,
                             special_tokens=("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>",
                                             "<|t2v|>", "<|v2v|>", "<|lvg|>"),
                             ignore_id=-100, cond_dropout_prob=0.0, use_reserved_token=True)
    model = MMadaModelLM.from_pretrained(args.checkpoint, trust_remote_code=True, torch_dtype=dtype).eval()
    mask_id = int(model.config.mask_token_id)
    vocab = int(model.config.vocab_size)
    sp = {k: int(v) for k, v in uni.sptids_dict.items()}
    offset = len(uni.text_tokenizer)
    special = sorted({sp["<|mmu|>"], sp["<|soi|>"], sp["<|eoi|>"], sp["<|sot|>"], sp["<|eot|>"], mask_id,
                      sp["<|start_header_id|>"], sp["<|end_header_id|>"], sp["<|eot_id|>"],
                      offset, offset + CODEBOOK - 1, 126464, vocab - 1})
    ids_sel = driver_io.sel_ids(vocab, special)
    w.put(None, "sel_ids", ids_sel)

    samplers = {
        "vlmevalkit": dict(max_new_tokens=L, steps=L, block_length=L // 2),
        "inference_mmu": dict(max_new_tokens=L, steps=max(1, L // 2), block_length=max(1, L // 4)),
    }
    w.meta["sampler"] = {
        "vlmevalkit": {**samplers["vlmevalkit"], "function": "MMadaModelLM.mmu_generate", "temperature": 0.0,
                       "remasking": "low_confidence", "cfg_scale": 0.0, "mask_id": mask_id,
                       "rule": "vlmeval/vlm/mmada/dataset_configs.py MathVista_MINI (96, 96, 48) scaled to L: "
                               "steps = L, block_length = L / 2; temperature not passed -> 0"},
        "inference_mmu": {**samplers["inference_mmu"], "function": "MMadaModelLM.mmu_generate",
                          "temperature": 0.0, "remasking": "low_confidence", "cfg_scale": 0.0, "mask_id": mask_id,
                          "rule": "inference_mmu.py:118-123: max_new_tokens = max_seq_length, steps = // 2, "
                                  "block_length = // 4 (max_seq_length = L here)"},
    }
    w.meta["image_offset"] = offset
    w.meta["special_ids"] = sp
    w.meta["vocab_size"] = vocab
    w.meta["notes"] += [
        "images are fixed VQ codes (MAGVIT-v2 weights are hub-only): crc32(pixels)-seeded torch.randint(0, 8192); "
        "1024 codes for 'square' (512 px), 256 for the others (256 px)",
        VQ_OFFSET_NOTE + f" = {offset}",
        "fields prompt_ids..output: the VLMEvalKit wrapper's / training layout (<|sot|> after <|eoi|>, literal "
        "'<eot_id>' text); fields chat_*: inference_mmu.py's layout (apply_chat_template of the checkpoint)",
        "shims: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE, HF_HOME=tmp; build_mmada_prompt compiled from "
        "vlmeval/vlm/mmada/utils.py without importing the vlmeval package",
        "full pass = model(x).logits with the L answer slots masked (no attention_bias: bidirectional)",
    ]

    def image_ids(codes):
        return codes[None] + len(uni.text_tokenizer)  # inference_mmu.py:94

    def run(name: str, prefix: str, input_ids, sampler: str) -> dict:
        P = input_ids.shape[1]
        w.put(name, prefix + "prompt_ids", input_ids[0].long())
        x = torch.full((1, P + L), mask_id, dtype=torch.long)
        x[:, :P] = input_ids
        with torch.no_grad():
            logits = model(x).logits[0, P - 1: P + L]
        for k, v in driver_io.row_summary(logits, ids_sel).items():
            w.put(name, prefix + k, v)
        rec = driver_io.ForwardRecorder(model, lambda a, kw: a[0][0, P:P + L])
        try:
            out = model.mmu_generate(input_ids, **samplers[sampler])
        finally:
            rec.restore()
        gen = out[0, P:]
        w.put(name, prefix + "step_inputs", rec.stacked())
        w.put(name, prefix + "output", gen.long())
        text = uni.text_tokenizer.batch_decode(out[:, P:], skip_special_tokens=True)[0]
        return {prefix + "n_forward": len(rec.calls), prefix + "text": text, prefix + "prompt_len": P}

    for name, path in sorted(spec["images"].items()):
        n = N_CODES.get(name, 256)
        codes = _codes(path, n)
        w.put(name, "codes", codes.long())
        img = image_ids(codes)
        # VLMEvalKit wrapper (mmada.py:235-249), the training layout
        input_text = build_mmada_prompt(question, uni.sptids_dict)
        text_ids = torch.tensor(uni.text_tokenizer([input_text])["input_ids"])
        ones = torch.ones(text_ids.shape[0], 1)
        a = torch.cat([ones * uni.sptids_dict["<|mmu|>"], ones * uni.sptids_dict["<|soi|>"], img,
                       ones * uni.sptids_dict["<|eoi|>"], ones * uni.sptids_dict["<|sot|>"], text_ids], dim=1).long()
        info = run(name, "", a, "vlmevalkit")
        # inference_mmu.py:94-108
        messages = [{"role": "user", "content": question}]
        chat_ids = uni.text_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                          return_tensors="pt")
        chat_text = uni.text_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ones = torch.ones(img.shape[0], 1)
        b = torch.cat([ones * uni.sptids_dict["<|mmu|>"], ones * uni.sptids_dict["<|soi|>"], img,
                       ones * uni.sptids_dict["<|eoi|>"], chat_ids], dim=1).long()
        info.update(run(name, "chat_", b, "inference_mmu"))
        side = int(round(n ** 0.5))
        w.info(name, n_visual=n, visual_start=2, placeholder=None, grid=[side, side], image_offset=offset,
               prompt_text=input_text, chat_prompt_text=chat_text, n_text_after=int(a.shape[1] - 2 - n),
               chat_n_text_after=int(b.shape[1] - 2 - n), **info)
        print(f"[mmada {args.dtype}] {name}: P={a.shape[1]} out={info['text']!r} chat={info['chat_text']!r}",
              flush=True)
    w.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
