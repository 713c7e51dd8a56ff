"""The embedded zoo: the training path stays alive, the shipped weights load and ship."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from redundancy.models import load_model
from redundancy.models.registry import WEIGHTS_DIR
from redundancy.zoo import train as T

SHIPPED = {
    "toy-scratch": ("from_scratch", 0), "toy-scratch@1": ("from_scratch", 0), "toy-scratch@2": ("from_scratch", 0),
    "toy-ar2diff": ("ar_to_diffusion", 1), "toy-ar2diff@1": ("ar_to_diffusion", 1),
    "toy-ar2diff@2": ("ar_to_diffusion", 1), "toy-ar": ("autoregressive", 1),
}
SMALL = dict(image_size=32, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
             hidden=64, layers=2, heads=2, kv_heads=2, intermediate=128)


def _fixed_loss(model, objective):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(float(T._loss(model, task, range(16), 0, objective, g)) for task in ("shapes_short", "shapes_long"))


def _small_model(decoder, monkeypatch):
    torch.manual_seed(0)
    shift = 0 if decoder == "llama" else 1
    model = T.ToyDMLLM(T.base_config(decoder, "from_scratch" if shift == 0 else "autoregressive", shift, **SMALL))
    # 32-px images: resample the 72-px scenes on the way in
    orig = model.pixels_from_uint8
    monkeypatch.setattr(model, "pixels_from_uint8", lambda im: torch.nn.functional.interpolate(
        orig(im).float(), size=(32, 32), mode="bilinear", align_corners=False))
    for p in model.vision.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("decoder, objective, attn", [("llama", "diffusion", "sdpa"), ("qwen2", "ar", "sdpa"),
                                                      ("qwen2", "diffusion", "eager")])
def test_training_loss_halves_on_fixed_samples(decoder, objective, attn, monkeypatch):
    model = _small_model(decoder, monkeypatch)
    before = _fixed_loss(model, objective)
    T.train_lm(model, steps=50, objective=objective, seed=0, batch=16, lr=3e-3, fixed_batch=True, attn=attn)
    after = _fixed_loss(model, objective)
    assert after < 0.5 * before, (before, after)
    assert model.attn_implementation == "eager"  # training's choice does not leak into inference


@pytest.mark.parametrize("objective", ["diffusion", "ar"])
def test_eager_and_sdpa_training_losses_agree(objective, monkeypatch):
    """Recipe v4 trains with eager attention only for speed: the loss is the same function."""
    model = _small_model("qwen2", monkeypatch)
    losses = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        losses[impl] = _fixed_loss(model, objective)
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-4)


def test_question_type_shares():
    w = T.RECIPES["v4"]["qtypes"]
    assert T.qtype_counts(48, w) == {"count": 6, "colour": 6, "presence": 18, "position": 12, "shape": 6}
    uneven = T.qtype_counts(7, {q: 1 for q in T.QTYPES})
    assert sum(uneven.values()) == 7 and sorted(uneven.values()) == [1, 1, 1, 2, 2]
    assert T.qtype_counts(10, {"presence": 1}) == {"count": 0, "colour": 0, "presence": 10, "position": 0, "shape": 0}
    for bad in ({"size": 1}, {"count": 0}, {"count": -1, "shape": 2}):
        with pytest.raises(ValueError, match="bad question-type weights .* for: count, colour, presence"):
            T.qtype_counts(8, bad)


def test_short_indices_follow_the_shares_and_never_repeat():
    from redundancy.tasks import generate_batch
    from redundancy.tasks.shapes import qtype_of

    w = T.RECIPES["v4"]["qtypes"]
    seen = set()
    for step in range(20):
        idx = T.short_indices(step, 48, w)
        assert len(idx) == 48 and not seen & set(idx)
        seen |= set(idx)
        assert {q: sum(qtype_of(i) == q for i in idx) for q in T.QTYPES} == T.qtype_counts(48, w)
    b = generate_batch("shapes_short", "train", T.short_indices(3, 48, w))
    answers = [a for a, q in zip(b.answers, b.questions) if q.startswith("is there")]
    assert answers.count("yes") == answers.count("no") == 9  # presence stays balanced


def _question(qtype, question, answer, objects):
    from redundancy.tasks.shapes import Sample, Scene, SceneObject

    scene = Scene(tuple(SceneObject(s, c, cell // 3, cell % 3) for s, c, cell in objects))
    return Sample("x", "shapes_short", "train", 0, qtype, question, answer, scene, 0)


def test_needs_both_attributes_on_hand_built_scenes():
    two = [("square", "red", 0), ("circle", "blue", 4)]
    where = "where is the red square ?"
    assert not T.needs_both_attributes(_question("position", where, "top-left", two))  # the only square, red
    assert T.needs_both_attributes(_question("position", where, "top-left", two + [("square", "green", 8)]))
    assert T.needs_both_attributes(_question("position", where, "top-left", two + [("diamond", "red", 8)]))
    assert T.needs_both_attributes(_question("presence", "is there a red circle ?", "no", two))  # red and circle
    assert not T.needs_both_attributes(_question("presence", "is there a red diamond ?", "no", two))
    assert not T.needs_both_attributes(_question("presence", "is there a green square ?", "no", two))
    assert T.needs_both_attributes(_question("presence", "is there a red square ?", "yes", two))
    assert T.needs_both_attributes(_question("colour", "what colour is the circle ?", "blue", two))


def test_short_stream_hard_questions_balanced_and_never_repeated():
    from redundancy.tasks.shapes import make_sample

    uniform = {q: 1 for q in T.QTYPES}
    plain = T.ShortStream(48, T.RECIPES["v4"]["qtypes"], seed=0)
    assert all(plain.indices(k) == T.short_indices(k, 48, T.RECIPES["v4"]["qtypes"]) for k in range(10))
    for seed in (0, 2):
        hard, seen, yes = T.ShortStream(48, uniform, seed=seed, hard=True), set(), 0
        for step in range(12):
            idx = hard.indices(step)
            assert len(idx) == 48 and not seen & set(idx)
            seen |= set(idx)
            samples = [make_sample("shapes_short", "train", i, seed) for i in idx]
            assert {q: sum(s.qtype == q for s in samples) for q in T.QTYPES} == T.qtype_counts(48, uniform)
            assert all(T.needs_both_attributes(s) for s in samples)
            presence = [s.answer for s in samples if s.qtype == "presence"]
            yes += presence.count("yes") - presence.count("no")
            assert abs(yes) <= 1  # 10 presence questions per step: 5 yes, 5 no
        assert T.RECIPES["v6"]["hard"] is True


def test_colour_lookup_questions_are_answered_by_the_scene():
    b = T.colour_lookup_batch(range(60), seed=1)
    kinds = {"where": 0, "yes": 0, "no": 0}
    for q, a, s in zip(b.questions, b.answers, b.samples):
        words = q.split()
        colours = [o.colour for o in s.scene.objects]
        assert words[-2:] == ["shape", "?"] and words[-3] in T.COLOUR_NAMES
        if words[0] == "where":
            assert colours.count(words[3]) == 1
            assert a == next(o.cell_word for o in s.scene.objects if o.colour == words[3])
            kinds["where"] += 1
        else:
            assert q.startswith("is there a ") and a == ("yes" if words[3] in colours else "no")
            kinds[a] += 1
    assert min(kinds.values()) >= 10 and abs(kinds["yes"] - kinds["no"]) <= 1
    assert b.images.shape == (60, 72, 72, 3)
    assert T.colour_lookup_batch([5], seed=1).questions == [b.questions[5]]  # per-index deterministic
    # every scene gets a question, also one with all six colours (no colour is absent)
    from redundancy.tasks.shapes import Scene, SceneObject, make_sample

    rainbow = Scene(tuple(SceneObject("square", c, cell // 3, cell % 3) for cell, c in enumerate(T.COLOUR_NAMES)))
    q, a = T.colour_lookup_question(rainbow, 3)  # a "no" turn, but no colour is absent: ask where
    assert q.startswith("where is the ") and a == next(o.cell_word for o in rainbow.objects if o.colour == q.split()[3])
    for i in range(3000):
        q, a = T.colour_lookup_question(make_sample("shapes_short", "train", T.COLOUR_LOOKUP_OFFSET + i).scene, i)
        assert a in ("yes", "no") or q.startswith("where")


@pytest.mark.parametrize("recipe", ["v7", "v8"])
def test_train_family_applies_the_recipe_and_prints_progress(recipe, tmp_path, capsys):
    small = {**SMALL, "image_size": 72}  # the scenes' own size: no resampling
    T.train_vision(steps=1, batch=4, out=tmp_path / "_vision", **small)
    res = T.train_family("toy-scratch", steps=2, root=tmp_path, n_eval=(5, 2), recipe=recipe, eval_every=1, **small)
    m = res["toy-scratch"]
    assert (m["lm_recipe"], m["hard"], m["steps"]) == (recipe, True, 2)
    assert m["mix"] == {k: list(v) for k, v in T.RECIPES[recipe]["mix"].items()}
    cfg = json.loads((tmp_path / "toy-scratch" / "config.json").read_text())
    assert cfg["visual_positions"] is (recipe == "v7") and cfg["hidden"] == SMALL["hidden"]
    assert m.get("config") == T.RECIPES[recipe].get("config")
    rows = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(r["model"], r["step"]) for r in rows] == [("toy-scratch", 1), ("toy-scratch", 2)]
    assert set(rows[0]) == {"model", "step", *T.QTYPES} and all(0 <= rows[0][q] <= 1 for q in T.QTYPES)
    with pytest.raises(ValueError, match="eval_every must be >= 1, got -1"):
        T.ProgressEval(-1)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_by_name(name):
    model = load_model(name)
    fam, shift = SHIPPED[name]
    assert (model.family, model.logit_shift, model.name) == (fam, shift, name)
    metrics = json.loads((WEIGHTS_DIR / name / "metrics.json").read_text())
    for key in ("train_seconds", "data_seed", "init_seed", "git_revision", "shapes_short/exact_match",
                "shapes_long/object_recall", "blind/shapes_short/exact_match"):
        assert key in metrics
    # every zoo model shares the one frozen vision tower
    ref = load_model("toy-scratch").vision.state_dict()
    for k, v in model.vision.state_dict().items():
        assert torch.equal(v, ref[k])


def test_shipped_model_really_looks_at_the_image():
    """A trained model must beat its own blind (no visual tokens) score on the long task."""
    m = json.loads((WEIGHTS_DIR / "toy-scratch" / "metrics.json").read_text())
    assert m["shapes_long/object_recall"] > m["blind/shapes_long/object_recall"] + 0.3


@pytest.mark.slow
def test_non_editable_install_ships_weights(tmp_path):
    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(root)],
        check=True, cwd=tmp_path,
    )
    for name in SHIPPED:
        assert (target / "redundancy" / "zoo" / "weights" / name / "model.safetensors").is_file()
    code = "import redundancy.models as m; x = m.load_model('toy-ar2diff'); print(x.family, m.known_models())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert "ar_to_diffusion" in out.stdout and "toy-scratch@2" in out.stdout
    assert str(target) in subprocess.run(
        [sys.executable, "-c", "import redundancy; print(redundancy.__file__)"], capture_output=True, text=True,
        cwd=tmp_path, env={"PYTHONPATH": str(target)}).stdout


def test_recipes_and_their_errors(capsys):
    recipe = T.RECIPES[T.DEFAULT_RECIPE]
    ar_steps = int(recipe["steps"] * recipe["ar_fraction"])
    for name in SHIPPED:  # the shipped zoo is the default recipe's, every model and seed
        m = json.loads((WEIGHTS_DIR / name / "metrics.json").read_text())
        assert m["lm_recipe"] == T.DEFAULT_RECIPE, name
        assert m["mix"] == {k: list(v) for k, v in recipe["mix"].items()}
        if name.startswith("toy-scratch"):
            assert m["steps"] == recipe["steps"]
        elif name.startswith("toy-ar2diff"):
            assert (m["ar_steps"], m["diffusion_steps"]) == (ar_steps, recipe["steps"] - ar_steps)
        else:
            assert m["steps"] == ar_steps
    assert T.MIX is recipe["mix"]  # train_lm's default is the shipped zoo's mix
    with pytest.raises(ValueError, match="unknown recipe 'v99'; choose one of: v1, v2, v3, v4, v5, v6, v7, v8, v9"):
        T.train_family("toy-scratch", recipe="v99")
    with pytest.raises(SystemExit):
        T.main(["toy-scratch", "--recipe", "v99"])
    assert "unknown recipe 'v99'" in capsys.readouterr().err
