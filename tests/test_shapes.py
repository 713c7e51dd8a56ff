"""Tests of the synthetic ``shapes`` benchmark and its scorers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from redundancy.models.tokenizer import WordTokenizer
from redundancy.tasks import (
    ANSWER_LENGTH,
    CELL_WORDS,
    COLOUR_NAMES,
    COLOURS,
    COLS,
    QTYPES,
    ROWS,
    SHAPES,
    SPLITS,
    TASKS,
    VOCAB,
    Scene,
    SceneObject,
    ShapesTask,
    cell_labels,
    exact_match,
    generate_batch,
    make_sample,
    make_scene,
    object_precision,
    object_recall,
    patch_labels,
    render,
    scene_key,
    score_answer,
    split_of,
    token_f1,
)


@pytest.fixture(scope="module")
def short_samples():
    return list(ShapesTask("shapes_short", "test", n=200))


@pytest.fixture(scope="module")
def long_samples():
    return list(ShapesTask("shapes_long", "validation", n=60))


# -- determinism and splits -----------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_deterministic(task, split):
    a, b = make_sample(task, split, 7, seed=3), make_sample(task, split, 7, seed=3)
    assert a == b
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.sample_id == f"{task}/{split}/7"
    c = make_sample(task, split, 7, seed=4)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_render_and_scene_seeding():
    scene = make_scene(np.random.default_rng(5))
    assert scene == make_scene(np.random.default_rng(5))
    img = render(scene, 11)
    assert img.size == (72, 72) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(render(scene, 11)))
    assert not np.array_equal(np.asarray(img), np.asarray(render(scene, 12)))


def test_fixed_eval_splits_and_unlimited_train():
    small, big = ShapesTask("shapes_short", "test", n=5), ShapesTask("shapes_short", "test", n=50)
    assert [s.answer for s in small] == [big[i].answer for i in range(5)]
    assert big[-1] == big[49]
    with pytest.raises(IndexError):
        big[50]
    task = ShapesTask("shapes_long", "train", n=10)
    far = task.sample("train", 10**9)
    assert far.index == 10**9 and split_of(far.scene) == "train"


def test_splits_disjoint():
    keys = {}
    for split in SPLITS:
        ks = set()
        for task in TASKS:
            for i in range(150):
                s = make_sample(task, split, i, seed=i % 3)
                assert split_of(s.scene) == split
                ks.add(scene_key(s.scene))
        keys[split] = ks
        assert len(ks) > 250  # scenes are diverse, not a handful repeated
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_scene_key_canonical():
    a = Scene((SceneObject("square", "red", 0, 0), SceneObject("circle", "blue", 1, 1)))
    b = Scene([SceneObject("square", "red", 0, 0), SceneObject("circle", "blue", 1, 1)])
    assert scene_key(a) == scene_key(b) == "red square top left . blue circle middle center ."
    with pytest.raises(ValueError):
        Scene((SceneObject("circle", "blue", 1, 1), SceneObject("square", "red", 0, 0)))  # not row-major
    with pytest.raises(ValueError):
        Scene((SceneObject("square", "red", 0, 0), SceneObject("circle", "blue", 0, 0)))  # same cell
    with pytest.raises(ValueError):
        Scene(())


# -- answers against the scene --------------------------------------------------------------------
def _recompute(sample) -> str:
    objs = sample.scene.objects
    w = sample.question.split()
    if sample.qtype == "count":
        assert sample.question == "how many shapes ?"
        return str(len(objs))
    if sample.qtype == "colour":
        shape = w[4]
        matches = [o for o in objs if o.shape == shape]
        assert len(matches) == 1, "colour asked about a shape that is not unique"
        return matches[0].colour
    if sample.qtype == "presence":
        colour, shape = w[3], w[4]
        return "yes" if any(o.colour == colour and o.shape == shape for o in objs) else "no"
    if sample.qtype == "position":
        colour, shape = w[3], w[4]
        matches = [o for o in objs if o.colour == colour and o.shape == shape]
        assert len(matches) == 1, "position asked about an ambiguous object"
        return f"{ROWS[matches[0].row]}-{COLS[matches[0].col]}"
    if sample.qtype == "shape":
        o = sample.scene.object_at(ROWS.index(w[4]), COLS.index(w[5]))
        assert o is not None, "shape asked about an empty cell"
        return o.shape
    raise AssertionError(sample.qtype)


def test_short_answers_correct(short_samples):
    for s in short_samples:
        assert s.answer == _recompute(s), (s.question, s.answer, scene_key(s.scene))
    assert Counter(s.qtype for s in short_samples) == {q: 40 for q in QTYPES}
    assert [s.qtype for s in short_samples[:5]] == list(QTYPES)


def test_long_answers_correct(long_samples):
    for s in long_samples:
        assert s.question == "describe the image ."
        expected = " ".join(
            f"{o.colour} {o.shape} {ROWS[o.row]} {COLS[o.col]} ." for o in sorted(s.scene.objects, key=lambda o: (o.row, o.col))
        )
        assert s.answer == expected
        assert len(s.answer.split()) == 5 * len(s.scene.objects)
    assert {len(s.scene.objects) for s in long_samples} == set(range(1, 7))


def test_presence_balanced():
    task = ShapesTask("shapes_short", "train", n=500, seed=1)
    answers = [task[i].answer for i in range(2, 500, 5)]
    assert Counter(answers) == {"yes": 50, "no": 50}


def test_answer_distributions_not_degenerate(short_samples):
    by_type = {q: Counter(s.answer for s in short_samples if s.qtype == q) for q in QTYPES}
    assert len(by_type["count"]) >= 5
    assert len(by_type["colour"]) >= 5
    assert len(by_type["shape"]) == 4
    assert len(by_type["position"]) >= 7


# -- pixels ---------------------------------------------------------------------------------------
def test_centre_pixels_match_colours(short_samples):
    for s in short_samples[:80]:
        px = np.asarray(s.image)
        occupied = {o.cell for o in s.scene.objects}
        for o in s.scene.objects:
            assert tuple(px[o.row * 24 + 12, o.col * 24 + 12]) == COLOURS[o.colour], (s.sample_id, o)
        for cell in set(range(9)) - occupied:
            r, c = divmod(cell, 3)
            assert px[r * 24 + 12, c * 24 + 12].max() < 60  # dark background
            assert px[r * 24 + 1 : r * 24 + 23, c * 24 + 1 : c * 24 + 23].max() < 60  # nothing leaks in


def test_colours_distinct():
    rgb = np.array(list(COLOURS.values()), dtype=float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert d[~np.eye(len(rgb), dtype=bool)].min() > 80


def test_cell_and_patch_labels():
    scene = Scene((SceneObject("square", "red", 0, 0), SceneObject("diamond", "white", 2, 1)))
    shape_ids, colour_ids = cell_labels(scene)
    assert shape_ids.tolist() == [1, 0, 0, 0, 0, 0, 0, 4, 0]
    assert colour_ids.tolist() == [1, 0, 0, 0, 0, 0, 0, 6, 0]
    ps, pc = patch_labels(scene)
    assert ps.shape == pc.shape == (81,)
    grid_s, grid_c = ps.reshape(9, 9), pc.reshape(9, 9)
    assert (grid_s[:3, :3] == 1).all() and (grid_c[6:, 3:6] == 6).all()
    assert grid_s.sum() == 9 * 1 + 9 * 4 and (grid_c > 0).sum() == 18


def test_generate_batch():
    batch = generate_batch("shapes_short", "train", [0, 1, 2, 3])
    assert batch.images.shape == (4, 72, 72, 3) and batch.images.dtype == np.uint8
    assert batch.patch_shape.shape == (4, 81) and batch.cell_colour.shape == (4, 9)
    s = make_sample("shapes_short", "train", 2)
    assert batch.questions[2] == s.question and np.array_equal(batch.images[2], np.asarray(s.image))
    assert np.array_equal(batch.patch_colour[2], patch_labels(s.scene)[1])


# -- vocabulary -----------------------------------------------------------------------------------
def test_vocab_covers_everything(short_samples, long_samples):
    assert VOCAB == sorted(set(VOCAB)) and "." in VOCAB and "?" in VOCAB
    assert set(SHAPES) | set(COLOUR_NAMES) | set(CELL_WORDS) <= set(VOCAB)
    tok = WordTokenizer(VOCAB)
    for s in short_samples + long_samples:
        q, a = tok.encode(s.question), tok.encode(s.answer)
        assert tok.unk_id not in q and tok.unk_id not in a, (s.question, s.answer)
        assert len(q) <= 10
        assert len(a) <= ANSWER_LENGTH[s.task]
        assert tok.decode(a) == s.answer
    assert all(len(tok.encode(s.answer)) == 1 for s in short_samples)


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_inputs():
    with pytest.raises(ValueError, match=r"unknown task 'shapes_tiny'; choose one of: shapes_long, shapes_short"):
        ShapesTask("shapes_tiny")
    with pytest.raises(ValueError, match=r"'dev'.*test, train, validation"):
        ShapesTask("shapes_short", split="dev")
    with pytest.raises(ValueError, match="n must be"):
        ShapesTask("shapes_short", n=0)
    with pytest.raises(ValueError, match="'val'.*validation"):
        make_sample("shapes_long", "val", 0)
    with pytest.raises(ValueError, match="index"):
        make_sample("shapes_long", "train", -1)
    with pytest.raises(ValueError, match="shapes_long, shapes_short"):
        score_answer("vqa", "a", "a")


# -- scorers --------------------------------------------------------------------------------------
REF = "red square top left . blue circle middle center . white diamond bottom right ."


def test_exact_match_normalises():
    assert exact_match("  Yes ", "yes") == 1.0
    assert exact_match("top-left", "TOP-LEFT") == 1.0
    assert exact_match("red  square\ttop left .", "red square top left .") == 1.0
    assert exact_match("no", "yes") == 0.0


def test_object_recall_and_precision():
    assert object_recall(REF, REF) == 1.0
    one_wrong = "red square top left . green circle middle center . white diamond bottom right ."
    assert object_recall(one_wrong, REF) == pytest.approx(2 / 3)
    # order does not matter; hyphenated cells parse as two words
    assert object_recall("white diamond bottom-right . red square top-left .", REF) == pytest.approx(2 / 3)
    # a repeated object only matches once
    assert object_recall("red square top left . red square top left .", REF) == pytest.approx(1 / 3)
    assert object_precision("red square top left . red square top left .", REF) == pytest.approx(1 / 2)
    assert object_precision("", REF) == 0.0 and object_recall("", REF) == 0.0
    assert object_precision(REF + " green triangle top right .", REF) == pytest.approx(3 / 4)


def test_token_f1():
    assert token_f1(REF, REF) == 1.0
    # pred: red square top left (4 content tokens); ref: red circle top right (4); common: red, top
    assert token_f1("red square top left .", "red circle top right .") == pytest.approx(0.5)
    # multiset counts: pred has 'red' twice, ref once -> common 1; p = 1/2, r = 1/1 -> f1 = 2/3
    assert token_f1("red red", "red") == pytest.approx(2 / 3)
    assert token_f1("yellow", "red") == 0.0
    assert token_f1("", "red") == 0.0


def test_score_answer_and_task_score():
    assert score_answer("shapes_short", "Yes", "yes") == {"exact_match": 1.0}
    out = score_answer("shapes_long", "red square top left .", REF)
    assert out["object_recall"] == pytest.approx(1 / 3) and out["exact_match"] == 0.0
    assert set(out) == {"object_recall", "object_precision", "token_f1", "exact_match"}
    task = ShapesTask("shapes_long", "test", n=3)
    assert task.answer_length == 32 and set(task.metrics) == set(out)
    s = task[0]
    assert task.score(s.answer, s)["object_recall"] == 1.0
    short = ShapesTask("shapes_short", n=1)
    assert short.answer_length == 4 and short.metrics == ["exact_match"]
