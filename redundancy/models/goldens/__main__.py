"""``python -m redundancy.models.goldens MODEL --reference-repo DIR --reference-python PY --reference-commit SHA``."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.numpy import load_file, save_file

from . import DRIVERS, DTYPES, GOLDEN_ROOT, file_hashes, write_inputs

#: model -> (upstream repository, the module of redundancy.testing.formats that writes its checkpoint)
UPSTREAM = {
    "llada-v": ("ML-GSAI/LLaDA-V", "llada_v"),
    "llada-generate": ("ML-GSAI/LLaDA", "llada_generate"),
    "lavida-llada": ("jacklishufan/LaViDa", "lavida_llada"),
    "lavida-dream": ("jacklishufan/LaViDa", "lavida_dream"),
    "dimple": ("yu-rp/Dimple", "dimple"),
    "mmada": ("Gen-Verse/MMaDA", "mmada"),
}


def write_real_checkpoint(model: str, path: Path) -> Path:
    """The deterministic tiny checkpoint of ``model`` in its published format."""
    mod = importlib.import_module(f"redundancy.testing.formats.{UPSTREAM[model][1]}")
    return mod.write_real_checkpoint(Path(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help=f"one of: {', '.join(UPSTREAM)}")
    ap.add_argument("--reference-repo", required=True, type=Path, help="root of a clone of the upstream repository")
    ap.add_argument("--reference-python", required=True, help="python of the environment the original code runs in")
    ap.add_argument("--reference-commit", required=True, help="the upstream commit of that clone (recorded)")
    ap.add_argument("--out", type=Path, default=None, help="default: tests/goldens/MODEL")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--keep", type=Path, default=None, help="also keep the checkpoint and inputs in this folder")
    args = ap.parse_args(argv)
    if args.model not in UPSTREAM:
        ap.error(f"unknown model {args.model!r}; choose one of: {', '.join(UPSTREAM)}")
    if not args.reference_repo.is_dir():
        ap.error(f"--reference-repo {args.reference_repo} is not a directory")
    out = args.out or GOLDEN_ROOT / args.model
    driver = DRIVERS / f"{args.model.replace('-', '_')}.py"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        ckpt = write_real_checkpoint(args.model, work / "checkpoint")
        inputs = write_inputs(work / "inputs")
        tensors, meta = {}, {"model": args.model, "upstream": {"repo": UPSTREAM[args.model][0],
                                                                "commit": args.reference_commit},
                             "checkpoint_sha256": file_hashes(ckpt), "inputs": json.loads(inputs.read_text()),
                             "dtypes": {}}
        for name in meta["inputs"]["images"]:
            meta["inputs"]["images"][name] = Path(meta["inputs"]["images"][name]).name
        for dt in args.dtypes:
            res = work / f"out-{dt}"
            cmd = [args.reference_python, str(driver), "--repo", str(args.reference_repo), "--checkpoint", str(ckpt),
                   "--inputs", str(inputs), "--dtype", dt, "--out", str(res)]
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            for k, v in load_file(str(res / "tensors.safetensors")).items():
                tensors[f"{dt}/{k}"] = v
            meta["dtypes"][dt] = json.loads((res / "meta.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / "golden.safetensors"))
        (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
