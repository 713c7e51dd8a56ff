"""Real-model adapters on tiny checkpoints written in each model's own format (no downloads)."""

from __future__ import annotations

import json
import sys
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from redundancy.engine import Engine, TokenState
from redundancy.generate import generate_from_prompt
from redundancy.models.real import MODELS, CheckpointError
from redundancy.models.registry import load_model
from redundancy.policies import make_policy
from redundancy.sampling import DiffusionSampler, SamplerConfig
from redundancy.testing.tinyckpt import LLADA_SPECIAL, QWEN_SPECIAL, reference_logits, reference_siglip_tile, write_checkpoint

QUESTIONS = ["what colour is it ?", "describe image"]


def image(w=56, h=28, seed=0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def images_for(name: str, n: int = 2) -> list:
    if name == "mmada":
        g = torch.Generator().manual_seed(1)
        return [torch.randint(0, 8192, (16,), generator=g) for _ in range(n)]
    return [image(seed=i) for i in range(n)]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {m: write_checkpoint(m, root / m) for m in MODELS}


@pytest.fixture(scope="session")
def real(ckpt):
    return {m: load_model(m, checkpoint=str(ckpt[m])) for m in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_independent_reference(name, ckpt, real):
    m = real[name]
    p = m.build_prompt(images_for(name), QUESTIONS, 4)
    assert not p.key_valid.all()  # the two questions differ in length: the shorter row is padded
    out = Engine(m).forward(p, p.input_ids)
    ref = reference_logits(ckpt[name], p.input_ids, p.visual_embeds, p.visual_index, p.position_ids, p.key_valid)
    # models whose loader cuts the vocabulary to the tokenizer (ModelSpec.resize_to_tokenizer) keep its first rows
    ref = ref[..., : m.sizes["vocab"]]
    rows = p.answer_index - m.logit_shift
    assert out.logits.shape == (2, 4, ref.shape[-1])
    assert (out.logits.double() - ref[:, rows]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_dropped_visual_tokens_equal_reference_with_those_keys_masked(name, ckpt, real):
    m = real[name]
    p = m.build_prompt(images_for(name), QUESTIONS, 4)
    drop = p.visual_index[[0, p.n_visual - 1]]
    out = Engine(m).forward(p, p.input_ids, state=TokenState.dropping(2, p.seq_len, drop))
    valid = p.key_valid.clone()
    valid[:, drop] = False
    ref = reference_logits(ckpt[name], p.input_ids, p.visual_embeds, p.visual_index, p.position_ids, valid)
    ref = ref[..., : m.sizes["vocab"]]
    assert (out.logits.double() - ref[:, p.answer_index - m.logit_shift]).abs().max().item() < 1e-4
    full = Engine(m).forward(p, p.input_ids)
    assert (full.logits - out.logits).abs().max().item() > 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_padded_batch_row_equals_single_prompt(name, real):
    m = real[name]
    ims = images_for(name)
    batch = Engine(m).forward(*(lambda p: (p, p.input_ids))(m.build_prompt(ims, QUESTIONS, 4))).logits
    one = m.build_prompt(ims[1:], QUESTIONS[1:], 4)
    single = Engine(m).forward(one, one.input_ids).logits
    assert (batch[1:] - single).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_generation_with_and_without_policy(name, real):
    m = real[name]
    p = m.build_prompt(images_for(name), QUESTIONS, 4)
    sampler = DiffusionSampler(SamplerConfig(steps=2))
    base = generate_from_prompt(m, p, sampler)
    pruned = generate_from_prompt(m, p, sampler, policy=make_policy(prune={"method": "fastv", "layer": 1, "ratio": 0.5}))
    assert len(base.texts) == len(pruned.texts) == 2
    assert all(isinstance(t, str) for t in base.texts + pruned.texts)
    assert (base.trajectory.tokens != m.tokenizer.mask_id).all() and (pruned.trajectory.tokens != m.tokenizer.mask_id).all()
    ex_base = base.tokens_executed[0]
    ex_pruned = pruned.tokens_executed[0]
    assert p.n_visual % 2 == 0
    assert ex_pruned[0] == ex_base[0] and ex_pruned[1] == ex_base[1] - p.n_visual // 2


def test_special_ids_are_the_real_ones(real):
    assert real["llada-v"].tokenizer.mask_id == LLADA_SPECIAL["<|mdm_mask|>"] == 126336
    assert real["llada-v"].tokenizer.end_id == LLADA_SPECIAL["<|eot_id|>"]
    assert real["mmada"].tokenizer.mask_id == 126336
    for name in ("lavida-dream", "dimple"):
        assert real[name].tokenizer.mask_id == QWEN_SPECIAL["<|mask|>"] == 151666
        assert real[name].logit_shift == 1
    assert sorted(real["llada-v"].forbidden_ids) == [126080, 126081, 126346, 126347]
    tok = real["llada-v"].tokenizer
    ids = tok.encode("red blue") + [tok.end_id, tok.encode("yes")[0]]
    assert tok.decode(ids) == "red blue"


def test_llada_v_prompt_layout_and_anyres_tiles(ckpt, real):
    m = real["llada-v"]
    p = m.build_prompt([image(56, 28)], ["what colour is it ?"], 3)
    ids = p.input_ids[0].tolist()
    assert ids[0] == LLADA_SPECIAL["<|startoftext|>"]
    assert ids[p.answer_index[0] - 1] != m.tokenizer.mask_id and ids[p.answer_index[0]:] == [126336] * 3
    # 2x2 base tile + the 56x28 image on a 2x1 tile grid: 2 rows x 4 cols, one newline per row
    assert p.n_visual == 4 + 2 * (4 + 1)
    assert p.meta["newline"] == [4 + 4, 4 + 9]
    nl = p.visual_embeds[0, p.meta["newline"]]
    assert torch.allclose(nl, m.vision.newline.expand_as(nl))
    # the base tile's features equal an independent SigLIP + projector forward from the raw keys
    pix = m.vision.pixels(image(56, 28))
    assert pix.shape[0] == 3  # base + 2 grid tiles
    ref = reference_siglip_tile(ckpt["llada-v"], pix[:1])[0]
    assert (p.visual_embeds[0, :4].double() - ref).abs().max().item() < 1e-4
    # a 56x40 image picks the 2x2 grid (4x4 features); the rows of padding are cropped away again
    wide = m.build_prompt([image(56, 40)], ["what colour is it ?"], 3)
    assert wide.n_visual == 4 + 2 * (4 + 1) and len(wide.meta["newline"]) == 2


def test_lavida_pools_each_tile(real):
    m = real["lavida-llada"]
    assert m.vision.unit == 1 and m.vision.pool
    p = m.build_prompt([image(56, 28)], ["what colour is it ?"], 2)
    assert p.n_visual == 1 + 1 * (2 + 1)


def test_dimple_mrope_positions(real):
    m = real["dimple"]
    p = m.build_prompt([image(56, 56)], ["what colour is it ?"], 2)
    assert p.position_ids.shape == (3, 1, p.seq_len)
    s, n = int(p.visual_index[0]), p.n_visual
    assert n == 4 and p.grid == (2, 2)
    pos = p.position_ids[:, 0]
    assert pos[:, :s].tolist() == [list(range(s))] * 3  # text: t = h = w = index
    assert pos[0, s:s + n].tolist() == [s] * 4
    assert pos[1, s:s + n].tolist() == [s, s, s + 1, s + 1]
    assert pos[2, s:s + n].tolist() == [s, s + 1, s, s + 1]
    assert pos[:, s + n].tolist() == [s + 2] * 3  # text resumes after max(h, w)
    assert (p.input_ids[0, p.visual_index] == QWEN_SPECIAL["<|image_pad|>"]).all()


def test_dimple_with_a_qwen2_vl_tower(tmp_path):
    """The vision transformer is chosen by the checkpoint's keys (fc1/fc2: Qwen2-VL; gate/up/down: 2.5)."""
    d = write_checkpoint("dimple", tmp_path / "d", qwen2_vl=True)
    m = load_model("dimple", checkpoint=str(d))
    assert type(m.vision.tower).__name__ == "Qwen2VisionTransformerPretrainedModel"
    p = m.build_prompt([image(56, 56)], ["what colour is it ?"], 2)
    assert p.n_visual == 4 and p.visual_embeds.shape == (1, 4, 32) and torch.isfinite(p.visual_embeds).all()


def test_mmada_codes(real):
    m = real["mmada"]
    codes = torch.arange(16)
    p = m.build_prompt([codes], ["what colour is it ?"], 2)
    # code c is token len(tokenizer) + c, as MMaDA adds it (inference_mmu.py 94)
    assert p.input_ids[0, p.visual_index].tolist() == (codes + len(m.tokenizer.tok)).tolist()
    assert p.input_ids[0, p.visual_index[0] - 1] == LLADA_SPECIAL["<|soi|>"]
    assert p.input_ids[0, p.visual_index[-1] + 1] == LLADA_SPECIAL["<|eoi|>"]
    assert p.grid == (4, 4)
    with pytest.raises(ValueError, match="precomputed image codes"):
        m.build_prompt([image()], ["what colour is it ?"], 2)
    with pytest.raises(ValueError, match="image codes must lie in"):
        m.build_prompt([torch.tensor([0, 9000])], ["what colour is it ?"], 2)


def test_bfloat16_loads_and_tracks_float32(ckpt, real):
    m16 = load_model("llada-v", checkpoint=str(ckpt["llada-v"]), dtype="bfloat16")
    assert m16.dtype == torch.bfloat16 and m16.vision.newline.dtype == torch.bfloat16
    m = real["llada-v"]
    p = m.build_prompt(images_for("llada-v", 1), QUESTIONS[:1], 2)
    p16 = m16.build_prompt(images_for("llada-v", 1), QUESTIONS[:1], 2)
    a = Engine(m).forward(p, p.input_ids).logits
    b = Engine(m16).forward(p16, p16.input_ids).logits.float()
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


# -- format errors ----------------------------------------------------------------------------------
def test_missing_checkpoint_names_the_fix():
    with pytest.raises(ValueError, match="model.checkpoint=DIR"):
        load_model("llada-v")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("dimple", checkpoint="/nonexistent/dimple")


def test_missing_shard(ckpt, tmp_path):
    d = shutil.copytree(ckpt["llada-v"], tmp_path / "c")
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing shard .*{shard.name}"):
        load_model("llada-v", checkpoint=str(d))


def test_wrong_key_names_file_and_key(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(ckpt["lavida-llada"], tmp_path / "c")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    key = "model.transformer.blocks.1.attn_out.weight"
    f = d / index["weight_map"].pop(key)
    sd = load_file(str(f))
    sd["model.transformer.blocks.1.o_proj.weight"] = sd.pop(key)
    save_file(sd, str(f))
    index["weight_map"]["model.transformer.blocks.1.o_proj.weight"] = f.name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"missing weight '{key}'"):
        load_model("lavida-llada", checkpoint=str(d))


def test_mismatched_config(ckpt, tmp_path):
    d = shutil.copytree(ckpt["lavida-dream"], tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp.gate_proj.weight' has shape \(64, 32\).*\(48, 32\)"):
        load_model("lavida-dream", checkpoint=str(d))
    cfg["intermediate_size"] = 64
    cfg["block_type"] = "sequential"
    (d / "config.json").write_text(json.dumps(cfg))
    d2 = shutil.copytree(ckpt["mmada"], tmp_path / "m")
    c2 = json.loads((d2 / "config.json").read_text())
    c2["block_type"] = "sequential"
    (d2 / "config.json").write_text(json.dumps(c2))
    with pytest.raises(CheckpointError, match="block_type='sequential' is not supported"):
        load_model("mmada", checkpoint=str(d2))


# -- through the experiment configs -------------------------------------------------------------------
@pytest.mark.parametrize("name,policy,sampler", [("llada-v", "fastv", "native"), ("lavida-dream", "vtw", "native"),
                                                 ("dimple", "skip", "native")])
def test_hydra_run_with_model_checkpoint(name, policy, sampler, ckpt, tmp_path):
    from hydra import compose, initialize_config_dir

    from redundancy.experiment import run
    from redundancy.results import load_results
    from test_experiment import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        c = compose(config_name="config", overrides=[
            f"results_dir={tmp_path}", "progress=false", "print_answers=false", f"model={name}",
            f"model.checkpoint={ckpt[name]}", "model.dtype=float32", f"sampler={sampler}", "task=shapes_short",
            "task.n_samples=2", "batch_size=2", f"policy={policy}", "probe=attention"])
    table = run(c)
    assert len(table) == 2 and set(table["qtype"]) <= {"count", "colour", "presence", "position", "shape"}
    res = load_results(tmp_path / "single")
    assert res.runs["model.name"].iloc[0] == name and res.runs["label.policy"].iloc[0] == policy
    shares = res.traces[res.traces["metric"] == "visual_share"]
    assert len(shares) and shares["value"].between(0, 1).all()


def test_native_sampler_takes_the_models_generation_settings(ckpt, tmp_path):
    from hydra import compose, initialize_config_dir

    from redundancy.experiment import plan
    from test_experiment import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        c = compose(config_name="config", overrides=["model=dimple", f"model.checkpoint={ckpt['dimple']}",
                                                     "sampler=native", "task=shapes_long", "model.dtype=float32"])
        p = plan(c)
        assert p.sampler.config.strategy == "threshold" and p.sampler.config.threshold == 0.95
        assert p.sampler.config.threshold_fallback == "schedule"
        c2 = compose(config_name="config", overrides=["model=toy-scratch", "sampler=native"])
        with pytest.raises(ValueError, match="model.generation.short"):
            plan(c2)


def test_mmada_encodes_images_with_the_users_magvit(ckpt, tmp_path):
    """The MAGVIT-v2 tokenizer comes from the user's MMaDA clone (here a stand-in with its API)."""
    repo = tmp_path / "MMaDA"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "__init__.py").write_text(
        "import torch\n"
        "class MAGVITv2(torch.nn.Module):\n"
        "    @classmethod\n"
        "    def from_pretrained(cls, path):\n"
        "        m = cls(); m.path = path; return m\n"
        "    def get_code(self, x):\n"
        "        assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1\n"
        "        return (x[:, 0, ::8, ::8].flatten(1) * 100).long().abs() % 8192\n")
    m = load_model("mmada", checkpoint=str(ckpt["mmada"]), mmada_repo=str(repo), vq_model_path="magvit", resolution=32)
    p = m.build_prompt([image(40, 32)], ["what colour is it ?"], 2)
    assert p.n_visual == 16 and p.grid == (4, 4)
    assert (p.input_ids[0, p.visual_index] >= 126464).all()
    with pytest.raises(ValueError, match="no models/ package"):
        load_model("mmada", checkpoint=str(ckpt["mmada"]), mmada_repo=str(tmp_path), vq_model_path="x")


@pytest.mark.slow
def test_cli_sweep_accepts_a_real_model(ckpt, tmp_path):
    """``+sweep=smoke model=llada-v model.checkpoint=DIR``: every sweep point runs on the real model."""
    import os
    import subprocess

    from redundancy.results import load_results

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+sweep=smoke", "model=llada-v", f"model.checkpoint={ckpt['llada-v']}",
         "model.dtype=float32", f"results_dir={tmp_path}", "hydra.sweep.dir=" + str(tmp_path / "multirun")],
        cwd=repo, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = load_results(tmp_path / "smoke")
    assert len(res.runs) == 16 and set(res.runs["model.name"]) == {"llada-v"}
    assert set(res.outcomes["run_id"]) == set(res.runs.index if res.runs.index.name == "run_id" else res.runs["run_id"])
