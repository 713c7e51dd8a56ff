"""Parity check of a real-model adapter against the model's ORIGINAL code, on your checkpoint.

    python -m redundancy.models.verify llada-v --checkpoint DIR --reference-repo DIR \\
        --reference-python ~/venvs/llada-v/bin/python [--image PATH] [--question TEXT]

The original code runs in its own Python (a virtual environment with the transformers version it
needs: LLaDA-V 4.40.2, LaViDa 4.50.3, Dimple and MMaDA 4.46.2), driven by the same driver that writes
the goldens (:mod:`redundancy.models.goldens`, ``drivers/<model>.py``): it gets the checkpoint, the
image file and the question, builds the prompt with the original's own template, tokenizer and
image processing, and writes what the original computed to files. This tool then builds the same
prompt with the adapter and prints whether the prompt ids and the number of visual tokens agree and
the largest difference of the answer-row logits (the rows the answer slots read, at the driver's
sampled vocabulary ids, plus each row's logsumexp and argmax over the whole vocabulary).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .goldens import DRIVERS, QUESTION, make_image
from .real.adapter import MODELS

#: the driver of each model (``drivers/<file>.py``)
DRIVER_FILES = {m: m.replace("-", "_") for m in MODELS}


def run_reference(model: str, checkpoint: str | Path, reference_repo: str | Path, reference_python: str,
                  image: Path, question: str, answer_length: int, dtype: str, work: Path,
                  driver: str | Path | None = None) -> tuple[dict, dict]:
    """Run the original code through its driver; return (tensors of the one image, its meta)."""
    from safetensors.numpy import load_file

    inputs = work / "inputs.json"
    inputs.write_text(json.dumps({"images": {"image": str(image)}, "question": question,
                                  "answer_length": answer_length}, indent=1))
    driver = Path(driver or DRIVERS / f"{DRIVER_FILES[model]}.py")
    cmd = [reference_python, str(driver), "--repo", str(reference_repo), "--checkpoint", str(checkpoint),
           "--inputs", str(inputs), "--dtype", dtype, "--out", str(work / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise ValueError(f"the original {model} code failed (exit {proc.returncode}) under {reference_python}:\n"
                         f"{proc.stderr[-3000:]}")
    tensors = load_file(str(work / "out" / "tensors.safetensors"))
    meta = json.loads((work / "out" / "meta.json").read_text())
    return tensors, meta


def verify(model: str, checkpoint: str | Path, reference_repo: str | Path, reference_python: str, image=None,
           question: str = QUESTION, answer_length: int = 8, dtype: str = "float32",
           driver: str | Path | None = None, **options) -> dict:
    """Compare the adapter with the original on one image; return the agreement figures."""
    import torch

    from .goldens.toolkit import full_pass, load_adapter, prompt_text_ids, split_visual

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    if not Path(reference_repo).is_dir():
        raise ValueError(f"--reference-repo {str(reference_repo)!r} is not a directory; give the root of a clone of "
                         f"the model's repository")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if image is None:
            image = work / "square.png"
            make_image("square").save(image)
        tensors, meta = run_reference(model, checkpoint, reference_repo, reference_python, Path(image), question,
                                      answer_length, dtype, work, driver)
        get = lambda f: tensors[f"image/{f}"]  # noqa: E731
        info = meta["per_image"]["image"]
        adapter = load_adapter(model, Path(checkpoint), dtype, **options)
        picture = torch.from_numpy(get("codes")) if "image/codes" in tensors else str(image)
        prompt = adapter.build_prompt([picture], [question], answer_length)
    theirs = get("prompt_ids")
    placeholder = info.get("placeholder")
    if placeholder is None:
        ours = prompt.input_ids[0, :prompt.answer_start].tolist()
        ids_equal, n_theirs = ours == theirs.tolist(), int(info.get("n_visual", prompt.n_visual))
    else:
        b, n_theirs, a = split_visual(theirs, placeholder)
        n_theirs = int(info.get("n_visual", n_theirs))
        ob, _, oa = prompt_text_ids(adapter, prompt)
        ids_equal = ob == b and oa == a
    s = full_pass(adapter, prompt, tensors["sel_ids"])
    res = {"model": model, "dtype": dtype, "prompt_ids_equal": bool(ids_equal), "n_visual": prompt.n_visual,
           "n_visual_original": n_theirs, "transformers_original": meta.get("transformers")}
    if ids_equal and n_theirs == prompt.n_visual:
        res.update(max_logit_diff=float(np.abs(s.logits_sel - get("logits_sel")[s.rows]).max()),
                   max_lse_diff=float(np.abs(s.lse - get("lse")[s.rows]).max()),
                   top1_agreement=float((s.argmax == get("argmax")[s.rows]).mean()))
    else:
        res.update(max_logit_diff=float("inf"), max_lse_diff=float("inf"), top1_agreement=0.0)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    ap.add_argument("--checkpoint", required=True, help="local checkpoint directory")
    ap.add_argument("--reference-repo", required=True, help="root of a clone of the model's original repository")
    ap.add_argument("--reference-python", required=True,
                    help="python of the environment the original code runs in (its own transformers version)")
    ap.add_argument("--image", default=None, help="image file (default: a fixed 768x768 test image)")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--answer-length", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--driver", default=None, help=argparse.SUPPRESS)  # tests: a stand-in for the original
    ap.add_argument("--tolerance", type=float, default=None, help="exit 1 when the logit difference exceeds it")
    args = ap.parse_args(argv)
    if args.model not in MODELS:
        ap.error(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    try:
        res = verify(args.model, args.checkpoint, args.reference_repo, args.reference_python, image=args.image,
                     question=args.question, answer_length=args.answer_length, dtype=args.dtype, driver=args.driver)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    print(f"prompt ids equal: {res['prompt_ids_equal']}; visual tokens {res['n_visual']} "
          f"(original {res['n_visual_original']}); max |logit difference| = {res['max_logit_diff']:.3g}")
    bad = not res["prompt_ids_equal"] or res["n_visual"] != res["n_visual_original"]
    if args.tolerance is not None and (bad or res["max_logit_diff"] > args.tolerance):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
