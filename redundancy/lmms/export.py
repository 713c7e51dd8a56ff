"""Write lmms-eval task folders: the synthetic ``shapes`` tasks, and local configs of the study's benchmarks.

``python -m redundancy.lmms.export --out DIR [--data-dir DATA] [--n-short 250] [--n-long 100]`` writes::

    DIR/shapes/shapes_short.yaml, shapes_long.yaml, _dmllm_shapes.yaml (group dmllm_shapes), utils.py
    DIR/shapes/data/shapes_short-test.parquet, shapes_long-test.parquet   (images embedded)
    DIR/study/<benchmark>_local.yaml       (when lmms-eval is installed)

``lmms-eval eval --include_path DIR --tasks shapes_short ...`` then runs fully offline. The shapes
tasks score with the toolkit's own scorers, so lmms-eval and ``python -m experiments.run`` agree.

A study benchmark's local config includes lmms-eval's own YAML (its prompts and scoring code) under
a new task name, ``<benchmark>_local``: a task in an include path with a built-in's name does not
replace the built-in. Given ``--data-dir DATA``, it reads the benchmark's parquet files from
``DATA/<benchmark>/`` (a download of the Hugging Face dataset the built-in names); without, it reads
the Hugging Face dataset like the built-in (online, or from the local Hugging Face cache).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..tasks import ANSWER_LENGTH, SPLITS, TASK_METRICS, ShapesTask

SHAPES_GROUP = "dmllm_shapes"
SHAPES_TASKS: tuple[str, ...] = ("shapes_short", "shapes_long")
#: test samples exported per task by default: the ``size=full`` preset of ``conf/config.yaml``
DEFAULT_N: dict[str, int] = {"shapes_short": 250, "shapes_long": 100}


@dataclass(frozen=True)
class Benchmark:
    """A study benchmark (``reference/paper.md`` section 2) and how its local copy is read."""

    name: str  # the lmms-eval task
    config: str  # its YAML, relative to lmms_eval/tasks
    split: str  # the split the task evaluates
    files: str  # glob of that split's parquet files under DATA/<name>/
    dataset: str  # the Hugging Face dataset the built-in reads (lmms-eval 0.7.3)
    kind: str  # answer type, the model.generation key (redundancy.lmms.settings.TASK_ANSWER_TYPES)
    offline: bool  # scores with no network and no API key (given the data)
    note: str  # what scoring needs

    @property
    def local_name(self) -> str:
        return f"{self.name}_local"


STUDY_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mme", "mme/mme.yaml", "test", "**/test-*.parquet", "lmms-lab-encoder/MME", "short", True,
              "perception / cognition scores computed locally"),
    Benchmark("chartqa", "chartqa/chartqa.yaml", "test", "**/test-*.parquet", "lmms-lab-encoder/ChartQA", "short_free",
              True, "relaxed accuracy computed locally"),
    Benchmark("docvqa_val", "docvqa/docvqa_val.yaml", "validation", "DocVQA/validation-*.parquet",
              "lmms-lab-encoder/DocVQA", "medium", True, "ANLS computed locally"),
    Benchmark("mathvista_testmini", "mathvista/mathvista_testmini_format.yaml", "testmini", "**/testmini-*.parquet",
              "AI4Math/MathVista", "reasoning", False,
              "answer extraction asks an OpenAI-compatible judge (OPENAI_API_KEY); offline: --predict_only"),
    Benchmark("detailcaps", "detailcaps/detailcaps.yaml", "test", "**/test-*.parquet",
              "foundation-multimodal-models/DetailCaps-4870", "long", False,
              "CAPTURE needs the capture_metric package (lmms-eval's metrics extra) and its parser models; "
              "BLEU / METEOR / ROUGE-L / CIDEr need Java"),
    Benchmark("coco2017_cap_val", "coco_cap/coco2017_cap_val.yaml", "val", "**/val-*.parquet",
              "lmms-lab-encoder/COCO-Caption2017", "long", True,
              "BLEU / METEOR / ROUGE-L / CIDEr computed locally (pycocoevalcap; METEOR and its tokenizer need Java)"),
)

_UTILS = '''"""Task functions of the exported shapes tasks (written by python -m redundancy.lmms.export)."""

from redundancy.lmms.shapes_utils import doc_to_target, doc_to_text, doc_to_visual, process_results  # noqa: F401
'''

_TASK_YAML = """\
# {comment}
task: {task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    {split}: {data}
test_split: {split}
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: {length}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
{metrics}
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
metadata:
  version: 1.0
  answer_type: {kind}
"""

_GROUP_YAML = """\
# Both synthetic shapes tasks (written by `python -m redundancy.lmms.export`).
group: {group}
task:
{tasks}
aggregate_metric_list:
  - metric: exact_match
    aggregation: mean
    weight_by_size: true
metadata:
  version: 1.0
"""

_STUDY_YAML = """\
# {name} read {where}, under its own name (a local task named like a built-in
# does not replace it); prompts and scoring are lmms-eval's own, from the included file.
# Answer type (model.generation key): {kind}. Scoring: {note}.
include: {include}
task: {local}
{data}"""


def _features(rows: list[dict]) -> dict:
    """Hugging Face ``datasets`` features of plain rows with an ``image`` column."""
    kinds = {str: "string", bool: "bool", int: "int64", float: "float64"}
    out: dict[str, Any] = {}
    for k, v in rows[0].items():
        if k == "image":
            out[k] = {"_type": "Image"}
        elif type(v) in kinds:
            out[k] = {"dtype": kinds[type(v)], "_type": "Value"}
        else:
            raise TypeError(f"column {k!r} has values of type {type(v).__name__}; only str, bool, int, float and "
                            "the image are written")
    return out


def task_yaml(task: str, data: str | Path, split: str, max_new_tokens: int, metrics: Sequence[str],
              answer_type: str, comment: str = "") -> str:
    """An lmms-eval task YAML over one parquet file whose rows ``utils.py`` (beside the YAML, importing
    :mod:`redundancy.lmms.shapes_utils`) reads: ``image``, ``question``, ``answer`` and ``task`` (the
    shapes scorer that scores the row); ``metrics`` are that scorer's metric names, averaged."""
    listed = "\n".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true" for m in metrics)
    return _TASK_YAML.format(comment=comment or f"task {task} (written by redundancy.lmms.export.task_yaml)",
                             task=task, split=split, data=json.dumps(str(data)), length=int(max_new_tokens),
                             metrics=listed, kind=answer_type)


def write_image_parquet(rows: Sequence[dict], path: str | Path) -> Path:
    """Rows with a PIL ``image`` and scalar columns to a parquet file ``datasets`` reads back with
    decoded images (PNG bytes embedded, the ``Image`` feature recorded), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    if not rows:
        raise ValueError("no rows to write")
    feats = _features(rows)
    cols: dict[str, Any] = {}
    for k in feats:
        if k == "image":
            blobs = []
            for r in rows:
                buf = io.BytesIO()
                r["image"].save(buf, format="PNG")
                blobs.append({"bytes": buf.getvalue(), "path": None})
            cols[k] = pa.array(blobs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            cols[k] = pa.array([r[k] for r in rows])
    meta = {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}
    table = pa.table(cols).replace_schema_metadata(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def export_shapes(out: str | Path, n: dict[str, int] | None = None, split: str = "test", seed: int = 0,
                  tasks: Sequence[str] = SHAPES_TASKS) -> list[Path]:
    """Write the shapes tasks under ``out`` (``out/shapes/``); returns the files written.

    Document ``i`` of an exported task is sample ``i`` of ``ShapesTask(task, split, seed=seed)``:
    columns ``sample_id``, ``task``, ``split``, ``index``, ``qtype``, ``question``, ``answer`` and
    ``image``; ``--limit k`` in lmms-eval evaluates the same first ``k`` samples as ``task.n_samples=k``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    bad = [t for t in tasks if t not in SHAPES_TASKS]
    if bad:
        raise ValueError(f"unknown shapes task(s) {bad}; choose from: {', '.join(SHAPES_TASKS)}")
    n = {**DEFAULT_N, **(n or {})}
    root = Path(out).resolve() / "shapes"
    written = [_write_text(root / "utils.py", _UTILS)]
    for task in tasks:
        count = int(n[task])
        if count < 1:
            raise ValueError(f"the number of {task} samples must be >= 1, got {count}")
        rows = [{"sample_id": s.sample_id, "task": s.task, "split": s.split, "index": s.index, "qtype": s.qtype,
                 "question": s.question, "answer": s.answer, "image": s.image}
                for s in ShapesTask(task, split=split, n=count, seed=seed)]
        data = write_image_parquet(rows, root / "data" / f"{task}-{split}.parquet")
        comment = (f"The synthetic `{task}` benchmark of dmllm-redundancy ({count} {split} samples, seed {seed}),\n"
                   "# written by `python -m redundancy.lmms.export`; scored by redundancy.tasks.score_answer.")
        text = task_yaml(task, data, split, ANSWER_LENGTH[task], TASK_METRICS[task],
                         "short" if task == "shapes_short" else "long", comment)
        written += [data, _write_text(root / f"{task}.yaml", text)]
    written.append(_write_text(root / f"_{SHAPES_GROUP}.yaml", _GROUP_YAML.format(
        group=SHAPES_GROUP, tasks="\n".join(f"  - {t}" for t in tasks))))
    return written


def lmms_tasks_dir() -> Path:
    """lmms-eval's own task folder (ValueError when lmms-eval is not installed)."""
    import importlib.util

    from . import INSTALL_HINT

    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(INSTALL_HINT)
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def export_study(out: str | Path, data_dir: str | Path | None = None,
                 benchmarks: Sequence[Benchmark] = STUDY_BENCHMARKS) -> tuple[list[Path], list[str]]:
    """Write ``out/study/<benchmark>_local.yaml`` for the study's benchmarks; returns (files, warnings).

    With ``data_dir`` each config reads ``data_dir/<benchmark>/<files glob>``; a warning names every
    benchmark whose folder holds no matching file yet.
    """
    tasks = lmms_tasks_dir()
    root = Path(out).resolve() / "study"
    written, warnings = [], []
    for b in benchmarks:
        include = tasks / b.config
        if not include.is_file():
            raise ValueError(f"lmms-eval has no {b.config} (is it lmms-eval 0.7.x?); cannot write {b.local_name}")
        if data_dir is None:
            where = f"from the Hugging Face dataset {b.dataset} (online or the local HF cache)"
            data = ""
        else:
            folder = Path(data_dir).resolve() / b.name
            pattern = folder / b.files
            where = f"from local parquet files {pattern}"
            if not any(folder.glob(b.files)):
                warnings.append(f"{b.local_name}: no files match {pattern} yet (download {b.dataset} there)")
            data = ("dataset_path: parquet\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
                    f"    {b.split}: {json.dumps(str(pattern))}\n")
        written.append(_write_text(root / f"{b.local_name}.yaml", _STUDY_YAML.format(
            name=b.name, where=where, kind=b.kind, note=b.note, include=json.dumps(str(include)), local=b.local_name,
            data=data)))
    return written, warnings


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m redundancy.lmms.export", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (pass it to lmms-eval as --include_path)")
    ap.add_argument("--data-dir", help="folder holding <benchmark>/ parquet copies of the study's benchmarks")
    ap.add_argument("--n-short", type=int, default=DEFAULT_N["shapes_short"], help="shapes_short samples")
    ap.add_argument("--n-long", type=int, default=DEFAULT_N["shapes_long"], help="shapes_long samples")
    ap.add_argument("--split", default="test", choices=SPLITS, help="shapes split to export")
    ap.add_argument("--seed", type=int, default=0, help="shapes benchmark seed")
    ap.add_argument("--no-study", action="store_true", help="write only the shapes tasks")
    a = ap.parse_args(argv)
    try:
        files = export_shapes(a.out, {"shapes_short": a.n_short, "shapes_long": a.n_long}, a.split, a.seed)
        print(f"shapes tasks ({', '.join(SHAPES_TASKS)}, group {SHAPES_GROUP}): {len(files)} files under "
              f"{Path(a.out).resolve() / 'shapes'}; they score fully offline")
        if a.no_study:
            return 0
        try:
            files, warnings = export_study(a.out, a.data_dir)
        except ValueError as e:
            print(f"study benchmarks not written: {e}", file=sys.stderr)
            return 0 if a.data_dir is None else 2
        print(f"study benchmarks (local configs under {Path(a.out).resolve() / 'study'}):")
        for b in STUDY_BENCHMARKS:
            print(f"  {b.local_name:26s} {b.kind:10s} {'offline' if b.offline else 'NOT offline':11s} "
                  f"data: {b.dataset}; scoring: {b.note}")
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
