"""The parity tool runs the original through its golden driver in another Python; here a stand-in
driver replays the stored goldens (what the original computed), so the tool's plumbing is tested
without the upstream code."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from redundancy.models import verify
from redundancy.models.goldens import golden_dir, make_image

REPLAY = textwrap.dedent('''
    """Stand-in driver: writes what the original computed on the 'square' image (tests/goldens)."""
    import argparse, json, os
    from pathlib import Path
    from safetensors.numpy import load_file, save_file
    ap = argparse.ArgumentParser()
    for a in ("--repo", "--checkpoint", "--inputs", "--dtype", "--out"):
        ap.add_argument(a)
    args = ap.parse_args()
    g = load_file(str(Path(args.repo) / "golden.safetensors"))
    meta = json.loads((Path(args.repo) / "meta.json").read_text())
    pre = f"{args.dtype}/square/"
    out = {("image/" + k[len(pre):]): v for k, v in g.items() if k.startswith(pre)}
    out["sel_ids"] = g["float32/sel_ids"]
    if os.environ.get("REPLAY_BUG"):
        out["image/logits_sel"] = out["image/logits_sel"] + 0.5
    Path(args.out).mkdir(parents=True, exist_ok=True)
    save_file(out, str(Path(args.out) / "tensors.safetensors"))
    d = meta["dtypes"][args.dtype]
    (Path(args.out) / "meta.json").write_text(json.dumps({"per_image": {"image": d["per_image"]["square"]},
                                                          "transformers": d.get("transformers")}))
''')


@pytest.mark.parametrize("model, module", [("dimple", "dimple"), ("mmada", "mmada")])
def test_verify_against_a_replayed_original(model, module, tmp_path, capsys, monkeypatch):
    import importlib

    fmt = importlib.import_module(f"redundancy.testing.formats.{module}")
    ckpt = fmt.write_real_checkpoint(tmp_path / "ckpt")
    driver = tmp_path / "replay.py"
    driver.write_text(REPLAY)
    image = tmp_path / "square.png"
    make_image("square").save(image)
    args = [model, "--checkpoint", str(ckpt), "--reference-repo", str(golden_dir(model)), "--reference-python",
            sys.executable, "--image", str(image), "--driver", str(driver), "--tolerance", "1e-4"]
    assert verify.main(args) == 0
    out = capsys.readouterr().out
    res = json.loads(out[: out.rindex("}") + 1])
    assert res["prompt_ids_equal"] and res["n_visual"] == res["n_visual_original"]
    assert res["max_logit_diff"] < 1e-4 and res["top1_agreement"] == 1.0
    monkeypatch.setenv("REPLAY_BUG", "1")
    assert verify.main(args) == 1  # a wrong original is caught
    assert verify.main([*args[:4], str(tmp_path / "nowhere"), *args[5:]]) == 2
    assert "is not a directory" in capsys.readouterr().err
