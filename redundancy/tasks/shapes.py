"""``shapes``: a synthetic visual benchmark with short (one-word) and long (description) answers.

Images are 72x72 RGB: a dark noisy background and a 3x3 grid of 24-px cells holding 1 to 6
shapes (at most one per cell). Each shape is one of square / circle / triangle / diamond in one
of six colours, about 16 px large, with +-1.5 px position jitter and slight size jitter. The
vision model sees 9x9 patches of 8 px, so each cell covers 3x3 patches.

Tasks
    ``shapes_short``  one-word answers; question types cycle with the index through
                      ``count, colour, presence, position, shape`` (presence answers alternate
                      yes / no, so they are exactly balanced).
    ``shapes_long``   "describe the image ." -> "<colour> <shape> <row> <col> ." per object in
                      row-major order (5 tokens per object, 5..30 tokens).

Splits
    A scene belongs to exactly one split, decided by a stable hash of its canonical key
    (:func:`scene_key`, the row-major description): ``crc32(key) % 10 == 0`` -> ``test``,
    ``== 1`` -> ``validation``, otherwise ``train``. Sample ``index`` of a split draws scenes from
    its own seed stream ``default_rng((seed, split, task, index))`` and rejects those of other
    splits (and those that cannot carry the question), so the three splits never share a scene
    whatever the seeds, and sample ``i`` of a split is always the same. Generation is lazy: the
    train split is effectively unlimited (any ``index >= 0``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .scoring import LONG_TASK, SHORT_TASK, TASK_METRICS, score_answer

# -- constants ------------------------------------------------------------------------------------
IMAGE_SIZE = 72
CELL_SIZE = 24
PATCH_SIZE = 8
GRID: tuple[int, int] = (IMAGE_SIZE // PATCH_SIZE, IMAGE_SIZE // PATCH_SIZE)  # (9, 9) patches
N_CELLS = 9
MAX_OBJECTS = 6
SHAPE_SIZE = 16.0  # nominal side / diameter in px
POSITION_JITTER = 1.5  # px, uniform in [-j, j]
SIZE_JITTER = 0.1  # relative, uniform in [1 - s, 1 + s]

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 90, 255),
    "yellow": (245, 225, 20),
    "purple": (170, 50, 220),
    "white": (250, 250, 250),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
CELL_WORDS: tuple[str, ...] = tuple(f"{r}-{c}" for r in ROWS for c in COLS)  # one token per cell
COUNT_WORDS: tuple[str, ...] = tuple(str(i) for i in range(1, MAX_OBJECTS + 1))
BACKGROUND_RANGE = (8, 48)  # per-channel uniform noise, [low, high)

TASKS: tuple[str, ...] = (LONG_TASK, SHORT_TASK)
SPLITS: tuple[str, ...] = ("train", "validation", "test")
QTYPES: tuple[str, ...] = ("count", "colour", "presence", "position", "shape")
ANSWER_LENGTH: dict[str, int] = {SHORT_TASK: 4, LONG_TASK: 32}
MAX_QUESTION_TOKENS = 10
DESCRIBE_QUESTION = "describe the image ."

_SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}
_TASK_CODE = {SHORT_TASK: 0, LONG_TASK: 1}
_QUESTION_WORDS = (
    "how many shapes ? what colour is the there a where shape at describe image . yes no".split()
)
VOCAB: list[str] = sorted(
    set(_QUESTION_WORDS) | set(SHAPES) | set(COLOUR_NAMES) | set(ROWS) | set(COLS) | set(CELL_WORDS) | set(COUNT_WORDS)
)

# patch k (row-major over the 9x9 grid) -> the cell (row-major over 3x3) it lies in
PATCH_CELL = np.array(
    [(pr * PATCH_SIZE // CELL_SIZE) * 3 + pc * PATCH_SIZE // CELL_SIZE for pr in range(GRID[0]) for pc in range(GRID[1])],
    dtype=np.int64,
)


def _choose(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(valid))}")


# -- scenes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    """One shape: ``shape`` and ``colour`` names, ``row`` and ``col`` in 0..2."""

    shape: str
    colour: str
    row: int
    col: int

    @property
    def cell(self) -> int:
        """Row-major cell index 0..8."""
        return self.row * 3 + self.col

    @property
    def position(self) -> str:
        """The cell as two words, e.g. ``top left``."""
        return f"{ROWS[self.row]} {COLS[self.col]}"

    @property
    def cell_word(self) -> str:
        """The cell as one token, e.g. ``top-left``."""
        return CELL_WORDS[self.cell]

    @property
    def phrase(self) -> str:
        """``<colour> <shape> <row> <col>``."""
        return f"{self.colour} {self.shape} {self.position}"


@dataclass(frozen=True)
class Scene:
    """A scene: its objects in row-major cell order, at most one per cell."""

    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        objs = tuple(self.objects)
        object.__setattr__(self, "objects", objs)
        if not 1 <= len(objs) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(objs)}")
        cells = [o.cell for o in objs]
        if cells != sorted(set(cells)):
            raise ValueError(f"objects must be in row-major order, one per cell; got cells {cells}")
        for o in objs:
            if o.shape not in SHAPES or o.colour not in COLOURS or not (0 <= o.row < 3 and 0 <= o.col < 3):
                raise ValueError(f"invalid object {o}")

    def __len__(self) -> int:
        return len(self.objects)

    def object_at(self, row: int, col: int) -> SceneObject | None:
        """The object in cell (row, col), or None."""
        for o in self.objects:
            if o.row == row and o.col == col:
                return o
        return None

    def describe(self) -> str:
        """The long answer: ``<colour> <shape> <row> <col> .`` per object, row-major."""
        return " ".join(f"{o.phrase} ." for o in self.objects)


def scene_key(scene: Scene) -> str:
    """Canonical key of a scene (its row-major description); equal scenes have equal keys."""
    return scene.describe()


def split_of(scene: Scene) -> str:
    """The split a scene belongs to: crc32(key) % 10 == 0 -> test, == 1 -> validation, else train."""
    h = zlib.crc32(scene_key(scene).encode()) % 10
    return "test" if h == 0 else "validation" if h == 1 else "train"


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene: 1..6 objects (uniform) in distinct cells, uniform shapes and colours."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = sorted(rng.permutation(N_CELLS)[:n].tolist())
    shapes = rng.integers(0, len(SHAPES), n).tolist()
    colours = rng.integers(0, len(COLOUR_NAMES), n).tolist()
    return Scene(
        tuple(SceneObject(SHAPES[s], COLOUR_NAMES[c], cell // 3, cell % 3) for cell, s, c in zip(cells, shapes, colours))
    )


def render(scene: Scene, seed: int) -> Image.Image:
    """Draw a scene as a 72x72 RGB image; background noise and jitter are seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    lo, hi = BACKGROUND_RANGE
    img = Image.fromarray(rng.integers(lo, hi, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    n = len(scene.objects)
    jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=(n, 2)).tolist()
    scale = rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER, size=n).tolist()
    for o, (jx, jy), s in zip(scene.objects, jitter, scale):
        cx = o.col * CELL_SIZE + CELL_SIZE / 2 + jx
        cy = o.row * CELL_SIZE + CELL_SIZE / 2 + jy
        h = SHAPE_SIZE / 2 * s
        fill = COLOURS[o.colour]
        if o.shape == "square":
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif o.shape == "circle":
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=fill)
    return img


def cell_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell (shape_id[9], colour_id[9]) int64, row-major; 0 = empty, shapes 1..4, colours 1..6."""
    shape_ids = np.zeros(N_CELLS, dtype=np.int64)
    colour_ids = np.zeros(N_CELLS, dtype=np.int64)
    for o in scene.objects:
        shape_ids[o.cell] = SHAPES.index(o.shape) + 1
        colour_ids[o.cell] = COLOUR_NAMES.index(o.colour) + 1
    return shape_ids, colour_ids


def patch_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch (shape_id[81], colour_id[81]) int64 over the row-major 9x9 grid: the labels of each patch's cell."""
    shape_ids, colour_ids = cell_labels(scene)
    return shape_ids[PATCH_CELL], colour_ids[PATCH_CELL]


# -- questions ------------------------------------------------------------------------------------
def qtype_of(index: int) -> str:
    """The short-task question type of sample ``index`` (cycles through QTYPES)."""
    return QTYPES[index % len(QTYPES)]


def _short_question(scene: Scene, qtype: str, index: int, rng: np.random.Generator) -> tuple[str, str] | None:
    """(question, answer) of ``qtype`` about ``scene``, or None when the scene cannot carry it."""
    objs = scene.objects
    if qtype == "count":
        return "how many shapes ?", COUNT_WORDS[len(objs) - 1]
    if qtype == "shape":
        o = objs[int(rng.integers(len(objs)))]
        return f"what shape is at {o.position} ?", o.shape
    if qtype == "colour":
        counts: dict[str, int] = {}
        for o in objs:
            counts[o.shape] = counts.get(o.shape, 0) + 1
        unique = [o for o in objs if counts[o.shape] == 1]
        if not unique:
            return None
        o = unique[int(rng.integers(len(unique)))]
        return f"what colour is the {o.shape} ?", o.colour
    if qtype == "position":
        pairs: dict[tuple[str, str], int] = {}
        for o in objs:
            pairs[o.colour, o.shape] = pairs.get((o.colour, o.shape), 0) + 1
        unique = [o for o in objs if pairs[o.colour, o.shape] == 1]
        if not unique:
            return None
        o = unique[int(rng.integers(len(unique)))]
        return f"where is the {o.colour} {o.shape} ?", o.cell_word
    if qtype == "presence":
        if (index // len(QTYPES)) % 2 == 0:  # alternate yes / no: exactly balanced
            o = objs[int(rng.integers(len(objs)))]
            return f"is there a {o.colour} {o.shape} ?", "yes"
        present = {(o.colour, o.shape) for o in objs}
        absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
        # half of the negatives are hard: they share the colour or the shape of an object in the scene
        hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
        pool = hard if hard and rng.random() < 0.5 else absent
        c, s = pool[int(rng.integers(len(pool)))]
        return f"is there a {c} {s} ?", "no"
    raise ValueError(f"unknown question type {qtype!r}; choose one of: {', '.join(sorted(QTYPES))}")


# -- samples --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One benchmark item; ``image`` renders the scene (deterministic from ``seed``)."""

    sample_id: str
    task: str
    split: str
    index: int
    qtype: str
    question: str
    answer: str
    scene: Scene
    seed: int
    grid: tuple[int, int] = field(default=GRID)

    @property
    def image(self) -> Image.Image:
        """The rendered 72x72 RGB image (rendered on each access, not cached)."""
        return render(self.scene, self.seed)

    @property
    def answer_length(self) -> int:
        """The fixed answer length of this sample's task."""
        return ANSWER_LENGTH[self.task]


def make_sample(task: str, split: str, index: int, seed: int = 0) -> Sample:
    """Sample ``index`` of ``split`` of ``task`` (deterministic in (task, split, index, seed))."""
    _choose("task", task, TASKS)
    _choose("split", split, SPLITS)
    index, seed = int(index), int(seed)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng((seed, _SPLIT_CODE[split], _TASK_CODE[task], index))
    qtype = qtype_of(index) if task == SHORT_TASK else "describe"
    while True:
        scene = make_scene(rng)
        if split_of(scene) != split:
            continue
        if task == LONG_TASK:
            question, answer = DESCRIBE_QUESTION, scene.describe()
            break
        qa = _short_question(scene, qtype, index, rng)
        if qa is not None:
            question, answer = qa
            break
    render_seed = int(rng.integers(0, 2**31 - 1))
    return Sample(f"{task}/{split}/{index}", task, split, index, qtype, question, answer, scene, render_seed)


class ShapesTask:
    """``n`` samples of one split of ``shapes_short`` / ``shapes_long``, generated lazily by index."""

    def __init__(self, name: str, split: str = "test", n: int = 100, seed: int = 0):
        _choose("task", name, TASKS)
        _choose("split", split, SPLITS)
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.name, self.split, self.n, self.seed = name, split, int(n), int(seed)
        self.answer_length: int = ANSWER_LENGTH[name]
        self.metrics: list[str] = list(TASK_METRICS[name])
        self.grid: tuple[int, int] = GRID

    def __repr__(self) -> str:
        return f"ShapesTask({self.name!r}, split={self.split!r}, n={self.n}, seed={self.seed})"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        j = int(i) + self.n if i < 0 else int(i)
        if not 0 <= j < self.n:
            raise IndexError(f"index {i} out of range for {self!r}")
        return make_sample(self.name, self.split, j, self.seed)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.n):
            yield make_sample(self.name, self.split, i, self.seed)

    def sample(self, split: str, index: int) -> Sample:
        """Sample ``index`` of any split with this task and seed (fast path; ignores ``n``)."""
        return make_sample(self.name, split, index, self.seed)

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """The task's metrics for ``prediction`` against ``sample.answer``."""
        return score_answer(self.name, prediction, sample.answer)


@dataclass
class Batch:
    """Samples plus stacked arrays for a training loop.

    ``images`` uint8 [B, 72, 72, 3]; ``patch_shape`` / ``patch_colour`` int64 [B, 81];
    ``cell_shape`` / ``cell_colour`` int64 [B, 9].
    """

    samples: list[Sample]
    images: np.ndarray
    questions: list[str]
    answers: list[str]
    cell_shape: np.ndarray
    cell_colour: np.ndarray
    patch_shape: np.ndarray
    patch_colour: np.ndarray

    def __len__(self) -> int:
        return len(self.samples)

    def pil_images(self) -> list[Image.Image]:
        """The images as PIL images."""
        return [Image.fromarray(a, "RGB") for a in self.images]


def generate_batch(task: str | ShapesTask, split: str, indices: Sequence[int], seed: int = 0) -> Batch:
    """Samples ``indices`` of ``split`` with rendered images and cell / patch labels stacked."""
    if isinstance(task, ShapesTask):
        name, seed = task.name, task.seed
    else:
        name = task
    samples = [make_sample(name, split, int(i), seed) for i in indices]
    b = len(samples)
    images = np.empty((b, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    cell_shape = np.zeros((b, N_CELLS), dtype=np.int64)
    cell_colour = np.zeros((b, N_CELLS), dtype=np.int64)
    for k, s in enumerate(samples):
        images[k] = np.asarray(s.image)
        cell_shape[k], cell_colour[k] = cell_labels(s.scene)
    return Batch(
        samples=samples,
        images=images,
        questions=[s.question for s in samples],
        answers=[s.answer for s in samples],
        cell_shape=cell_shape,
        cell_colour=cell_colour,
        patch_shape=cell_shape[:, PATCH_CELL],
        patch_colour=cell_colour[:, PATCH_CELL],
    )
