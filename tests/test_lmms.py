"""lmms-eval end to end, fully offline (needs the eval extra; .ci/run runs this file in .venv-eval):
the lmms-eval command line on the exported shapes tasks against the toolkit's own scores, the Hydra
path's tables, the model's request handling, loglikelihood, exit codes, and the study benchmarks'
local configs on local data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# before datasets / huggingface_hub are imported: nothing below may reach a hub
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (the eval extra: pip install -e '.[eval]', "
                                        "docs/lmms.md); .ci/run runs these tests in .venv-eval")

import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from lmms_eval import evaluator  # noqa: E402
from lmms_eval.api.instance import Instance, unwrap_generation_output  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from redundancy.config import register_configs  # noqa: E402
from redundancy.experiment import get_model, run  # noqa: E402
from redundancy.generate import generate  # noqa: E402
from redundancy.lmms.cli import evaluate as cli_evaluate  # noqa: E402
from redundancy.lmms.export import export_shapes, export_study, task_yaml, write_image_parquet  # noqa: E402
from redundancy.lmms.model import DMLLMRedundancy  # noqa: E402
from redundancy.lmms.settings import BridgeSettings, compose_config  # noqa: E402
from redundancy.results import load_results  # noqa: E402
from redundancy.sampling import make_sampler  # noqa: E402
from redundancy.tasks import ANSWER_LENGTH, ShapesTask, generate_batch, score_answer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
register_configs()
N = {"shapes_short": 16, "shapes_long": 6}
BS = 8


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms_tasks")
    export_shapes(out, N)
    return out


def toolkit_answers(task: str, n: int, model: str = "toy-scratch") -> list[str]:
    """The toolkit's own decode of the first ``n`` test samples: default sampler, batches of BS."""
    adapter = get_model({"name": model})
    sampler = make_sampler("diffusion")  # conf/sampler/low_confidence.yaml: the SamplerConfig defaults
    out = []
    for lo in range(0, n, BS):
        b = generate_batch(task, "test", range(lo, min(n, lo + BS)))
        out += generate(adapter, b.pil_images(), b.questions, ANSWER_LENGTH[task], sampler).texts
    return out


def mean_score(task: str, answers: list[str], metric: str) -> float:
    samples = list(ShapesTask(task, n=len(answers)))
    return sum(score_answer(task, a, s.answer)[metric] for a, s in zip(answers, samples)) / len(samples)


# -- the lmms-eval command line -------------------------------------------------------------------------
@pytest.mark.slow
def test_lmms_eval_cli_offline_matches_the_toolkit(tasks_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}  # an empty cache
    cmd = [sys.executable, "-m", "lmms_eval", "eval", "--model", "dmllm_redundancy",
           "--model_args", "model=toy-scratch,sampler=low_confidence", "--tasks", "shapes_short,shapes_long",
           "--include_path", str(tasks_dir), "--batch_size", str(BS), "--device", "cpu",
           "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (res_file,) = out.glob("**/*_results.json")
    res = json.loads(res_file.read_text())
    assert res["config"]["model_backend"] == "redundancy.lmms.model.DMLLMRedundancy (simple)"
    for task, metric in (("shapes_short", "exact_match"), ("shapes_long", "object_recall")):
        ours = toolkit_answers(task, N[task])
        assert res["n-samples"][task]["effective"] == N[task]
        assert abs(res["results"][task][f"{metric},none"] - mean_score(task, ours, metric)) < 1e-9
        (samples_file,) = out.glob(f"**/*_samples_{task}.jsonl")
        logged = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
        answers = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
                   for s in logged]
        assert answers == ours  # the same answers, sample by sample


@pytest.fixture()
def restore_logging():
    """lmms-eval's command line points its logger at the (captured) stdout of the test; undo that."""
    yield
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def test_failing_evaluation_exits_non_zero(tasks_dir, tmp_path, capsys, restore_logging):
    args = ["--tasks", "shapes_short", "--include_path", str(tasks_dir), "--batch_size", "4", "--device", "cpu",
            "--limit", "2"]
    rc = cli_evaluate(["--model", "dmllm_redundancy", "--model_args", "model=toy-scratch,ratio=0.5", *args])
    assert rc == 1
    err = capsys.readouterr().err
    assert "lmms-eval evaluation failed" in err and "unknown model argument 'ratio'; valid: model" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (tasks_dir / "shapes" / "shapes_short.yaml").read_text().replace("task: shapes_short", "task: broken_shapes")
    data = str(tasks_dir / "shapes" / "data" / "shapes_short-test.parquet")
    (broken / "broken_shapes.yaml").write_text(text.replace(data, str(tmp_path / "missing.parquet")))
    shutil.copy(tasks_dir / "shapes" / "utils.py", broken / "utils.py")
    rc = cli_evaluate(["--model", "dmllm_redundancy", "--model_args", "model=toy-scratch", "--tasks", "broken_shapes",
                       "--include_path", str(broken), "--batch_size", "4", "--device", "cpu"])
    assert rc == 1 and "lmms-eval evaluation failed" in capsys.readouterr().err
    assert cli_evaluate(["--model", "dmllm_redundancy", "--model_args", "model=toy-scratch", *args]) == 0


# -- the Hydra path ---------------------------------------------------------------------------------
def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"results_dir={tmp_path}", "progress=false",
                                                        "print_answers=false", *overrides])


def test_hydra_lmms_task_writes_the_same_tables_as_the_shapes_task(tmp_path, monkeypatch):
    over = ["task.n_samples=8", "policy=fastv", "probe=attention"]
    table = run(_cfg(tmp_path, "task=lmms", "task.name=shapes_short", *over))
    native = run(_cfg(tmp_path, "task=shapes_short", *over))
    res = load_results(tmp_path / "single")
    lm_id = res.runs.loc[res.runs["task.kind"] == "lmms", "run_id"].item()
    assert len(table) == 8 and table["sample_id"].tolist() == [f"shapes_short/test/{i}" for i in range(8)]
    cols = ["sample_id", "answer", "reference", "qtype", "exact_match", "baseline_agreement", "n_visual_kept",
            "tokens_executed", "flops", "image_ref", "grid_h", "grid_w"]
    pd.testing.assert_frame_equal(table[cols], native[cols])
    assert (table["n_visual_kept"] == 40).all() and table["baseline_run_id"].notna().all()
    tr = res.traces[res.traces.run_id == lm_id]
    share = tr[(tr.metric == "visual_share") & (tr.query_group == "masked")]
    assert len(share) == 8 * 4 * 2 and share["value"].between(0, 1).all()  # samples x layers x steps
    assert tr.loc[tr.metric == "importance", "token"].max() == 80
    agg = tr[tr["mode"] == "aggregate"]
    assert agg[["sample_id", "metric"]].values.tolist() == [["shapes_short", "exact_match"]]
    assert agg["value"].item() == pytest.approx(table["exact_match"].mean(), abs=1e-12)
    runs = res.runs.set_index("run_id").loc[lm_id]
    assert (runs["task.kind"], runs["label.headline"], runs["version.lmms_eval"]) == ("lmms", "exact_match", "0.7.3")
    # finished: read back, lmms-eval not called again
    monkeypatch.setattr(evaluator, "simple_evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    pd.testing.assert_frame_equal(run(_cfg(tmp_path, "task=lmms", "task.name=shapes_short", *over)), table)


def test_hydra_lmms_group_with_an_include_path(tasks_dir, tmp_path):
    table = run(_cfg(tmp_path, "task=lmms", "task.name=dmllm_shapes", f"task.include_path={tasks_dir}",
                     "task.n_samples=3", "probe=none"))
    assert sorted(table["sample_id"]) == sorted(f"{t}/test/{i}" for t in N for i in range(3))
    long = table[table.sample_id.str.startswith("shapes_long")]
    ours = toolkit_answers("shapes_long", 3)
    assert long["answer"].tolist() == ours
    assert long["object_recall"].mean() == pytest.approx(mean_score("shapes_long", ours, "object_recall"), abs=1e-12)
    assert table.loc[table.sample_id.str.startswith("shapes_short"), "object_recall"].isna().all()


def test_hydra_lmms_unknown_task_lists_the_local_ones(tasks_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown lmms-eval task 'shapes_medium'; .* has: dmllm_shapes, shapes_long, "
                                         r"shapes_short"):
        run(_cfg(tmp_path, "task=lmms", "task.name=shapes_medium", f"task.include_path={tasks_dir}"))


# -- the model's requests ---------------------------------------------------------------------------
def _model(**args) -> DMLLMRedundancy:
    lm = DMLLMRedundancy(**{"model": "toy-scratch", "progress": False, **args})
    docs = [{"image": s.image, "question": s.question, "answer": s.answer, "qtype": s.qtype}
            for s in ShapesTask("shapes_long", n=4)]
    short = [{"image": s.image, "question": s.question, "answer": s.answer, "qtype": s.qtype}
             for s in ShapesTask("shapes_short", n=10)]
    lm.task_dict = {"t_long": {"test": docs}, "t_short": {"test": short}}
    return lm


def _requests(task: str, gen_kwargs: dict, n: int, visual=lambda d: [d["image"]]) -> list[Instance]:
    docs = {"t_long": 4, "t_short": 10}
    return [Instance("generate_until", (f"{q}", dict(gen_kwargs), visual, i, task, "test"), 0,
                     {"task": task, "doc_id": i, "repeats": 1})
            for i, q in zip(range(min(n, docs[task])), _questions(task))]


def _questions(task: str) -> list[str]:
    return [s.question for s in ShapesTask("shapes_long" if task == "t_long" else "shapes_short", n=10)]


def test_answer_length_steps_and_blocks_come_from_model_generation():
    lm = _model()
    base = lm.generate_until(_requests("t_long", {"max_new_tokens": 32}, 4))
    assert base == toolkit_answers("shapes_long", 4)
    assert {(r["answer_length"], r["steps"], r["block_length"], r["settings_source"]) for r in lm.records} == {
        (32, 16, 32, "max_new_tokens")}
    cfg, settings = compose_config({"model": "toy-scratch", "progress": False})
    cfg["model"]["generation"] = {"long": {"answer_length": 32, "steps": 8, "block_length": 16}}
    untyped = DMLLMRedundancy.from_config(cfg, settings)  # t_long has no answer type: max_new_tokens
    untyped.task_dict = lm.task_dict
    assert untyped.generate_until(_requests("t_long", {"max_new_tokens": 32}, 4)) == base
    typed = DMLLMRedundancy.from_config(cfg, BridgeSettings(answer_types={"t_long": "long"}))
    typed.task_dict = lm.task_dict
    typed.generate_until(_requests("t_long", {"max_new_tokens": 512}, 4))
    assert {(r["answer_length"], r["steps"], r["block_length"], r["settings_source"]) for r in typed.records} == {
        (32, 8, 16, "model.generation.long")}


def test_until_truncates_and_temperature_is_honoured():
    lm = _model()
    greedy = lm.generate_until(_requests("t_long", {"max_new_tokens": 32, "temperature": 0, "do_sample": False}, 4))
    cut = lm.generate_until(_requests("t_long", {"max_new_tokens": 32, "until": [" ."]}, 4))
    assert cut == [g.split(" .")[0] for g in greedy] and all(" ." in g for g in greedy)
    kw = {"max_new_tokens": 32, "temperature": 20.0, "do_sample": True}
    hot = lm.generate_until(_requests("t_long", kw, 4))
    assert hot != greedy and hot == lm.generate_until(_requests("t_long", kw, 4))  # seeded
    assert {r["temperature"] for r in lm.records[-8:]} == {20.0}


def test_requests_the_model_cannot_serve_fail_clearly():
    lm = _model()
    with pytest.raises(ValueError, match="t_long document 0 has 2 visual inputs; dmllm_redundancy adapters take "
                                         "exactly one image per question"):
        lm.generate_until(_requests("t_long", {"max_new_tokens": 32}, 1, visual=lambda d: [d["image"]] * 2))
    req = Instance("generate_until_multi_round", ("q", {}, lambda d: [d["image"]], lambda *a: "", 0, "t_long", "test"),
                   0, {"task": "t_long", "doc_id": 0, "repeats": 1})
    with pytest.raises(NotImplementedError, match=r"does not support multi-round generation \(requested by task"):
        lm.generate_until_multi_round([req])
    with pytest.raises(ValueError, match=r"task 't_long' sets no max_new_tokens"):
        lm.generate_until(_requests("t_long", {}, 1))
    ar = _model(model="toy-ar", sampler="autoregressive")
    with pytest.raises(ValueError, match="the autoregressive sampler decodes greedily; the task asks for temperature"):
        ar.generate_until(_requests("t_long", {"max_new_tokens": 32, "temperature": 0.5, "do_sample": True}, 1))


def _ll_request(context: str, continuation: str, doc_id: int, task: str) -> Instance:
    return Instance("loglikelihood", (context, continuation, lambda d: [d["image"]], doc_id, task, "test"), 0,
                    {"task": task, "doc_id": doc_id, "repeats": 1})


def test_loglikelihood_prefers_the_greedy_answer():
    lm = _model()
    adapter = get_model({"name": "toy-scratch"})
    docs = lm.task_dict["t_short"]["test"]
    one_step = make_sampler("diffusion", steps=1)
    greedy = generate(adapter, [d["image"] for d in docs], [d["question"] for d in docs], 1, one_step).texts
    words = ["yes", "no", "red", "2"]
    reqs = [_ll_request(d["question"], f" {w}", i, "t_short") for i, d in enumerate(docs) for w in [*words, greedy[i]]]
    out = lm.score_continuations(reqs)
    # what lmms-eval reads: the loss, -log p (multiple choice takes the argmin)
    assert [unwrap_generation_output(x)[0] for x in lm.loglikelihood(reqs[:2])] == [(-ll, g) for ll, g in out[:2]]
    k = len(words) + 1
    for i in range(len(docs)):
        scores = out[i * k:(i + 1) * k]
        assert all(ll <= 0 for ll, _ in scores)
        ll_greedy, is_greedy = scores[-1]
        assert is_greedy and ll_greedy == pytest.approx(max(ll for ll, _ in scores), abs=1e-6)
    two = lm.score_continuations([_ll_request("describe the image .", "red square", 0, "t_long")])
    assert two[0][0] < 0


def test_multiple_choice_task_runs_through_loglikelihood(tmp_path):
    docs = [s for s in ShapesTask("shapes_short", n=60) if s.qtype == "presence"][:6]
    data = write_image_parquet([{"question": s.question, "answer": s.answer, "image": s.image} for s in docs],
                               tmp_path / "presence.parquet")
    (tmp_path / "utils.py").write_text("from redundancy.lmms.shapes_utils import doc_to_visual, doc_to_text  # noqa\n")
    (tmp_path / "presence_mc.yaml").write_text(f"""task: presence_mc
dataset_path: parquet
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: ["yes", "no"]
doc_to_target: answer
target_delimiter: " "
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0}}
""")
    lm = DMLLMRedundancy(model="toy-scratch", progress=False)
    res = evaluator.simple_evaluate(model=lm, tasks=["presence_mc"], log_samples=False, bootstrap_iters=0,
                                    task_manager=TaskManager("WARNING", include_path=str(tmp_path),
                                                             include_defaults=False))
    lm2 = _model()
    lm2.task_dict = {"p": {"test": [{"image": s.image} for s in docs]}}
    ll = lm2.score_continuations([_ll_request(s.question, f" {w}", i, "p") for i, s in enumerate(docs)
                                  for w in ("yes", "no")])
    picked = ["yes" if ll[2 * i][0] >= ll[2 * i + 1][0] else "no" for i in range(len(docs))]
    ours = sum(p == s.answer for p, s in zip(picked, docs)) / len(docs)
    assert res["results"]["presence_mc"]["acc,none"] == pytest.approx(ours, abs=1e-12)


# -- the study benchmarks' local configs ---------------------------------------------------------------
@pytest.mark.slow
def test_study_configs_score_local_data_offline(tmp_path, monkeypatch):
    """mme / chartqa / docvqa_val (and coco2017_cap_val where Java is present) copies read parquet
    files in the layout of their Hugging Face datasets and score with lmms-eval's code, offline."""
    import datasets

    imgs = [s.image for s in ShapesTask("shapes_short", n=4)]
    data = tmp_path / "data"

    def save(rows, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(path))

    save([{"question_id": f"q{i // 2}.png", "image": im, "question": "Is there a square?", "category": "existence",
           "answer": "Yes" if i % 2 else "No"} for i, im in enumerate(imgs)],  # MME pairs two questions per image
         data / "mme/data/test-00000-of-00001.parquet")
    save([{"image": im, "question": "How many?", "answer": "A" if i else "7", "type": "human_test"}
          for i, im in enumerate(imgs)], data / "chartqa/data/test-00000-of-00001.parquet")
    save([{"image": im, "question": "What?", "answers": ["A", "b"], "questionId": str(i)} for i, im in enumerate(imgs)],
         data / "docvqa_val/DocVQA/validation-00000-of-00001.parquet")
    tasks = ["mme_local", "chartqa_local", "docvqa_val_local"]
    if shutil.which("java"):
        save([{"image": im, "question": "Caption?", "answer": ["a red square", "a"], "id": i,
               "question_id": f"COCO_val2014_{i:012d}.jpg"} for i, im in enumerate(imgs)],
             data / "coco2017_cap_val/data/val-00000-of-00001.parquet")
        tasks.append("coco2017_cap_val_local")
    files, warnings = export_study(tmp_path / "tasks", data)
    assert len(files) == 6 and {w.split(":")[0] for w in warnings} == {"mathvista_testmini_local", "detailcaps_local"}
    monkeypatch.chdir(tmp_path)  # coco writes submissions/ into the working directory
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = evaluator.simple_evaluate(model="dummy", tasks=tasks, bootstrap_iters=0, log_samples=False,
                                    task_manager=TaskManager("WARNING", include_path=str(tmp_path / "tasks"),
                                                             include_defaults=False))
    r = res["results"]
    assert r["docvqa_val_local"]["anls,none"] == 1.0  # the dummy model answers "A"
    assert r["chartqa_local"]["relaxed_overall,none"] == 0.75
    assert r["mme_local"]["mme_perception_score,none"] == 0.0  # "A" is neither yes nor no
    assert res["n-samples"]["mme_local"]["effective"] == 4
    if "coco2017_cap_val_local" in tasks:
        assert 0 < r["coco2017_cap_val_local"]["coco_Bleu_1,none"] < 1


# -- a real checkpoint's adapter -------------------------------------------------------------------
def test_real_checkpoint_with_a_policy_and_its_per_task_settings(tmp_path):
    """LLaDA-V's adapter on a tiny checkpoint in its published format (tests/tinyckpt.py), pruned by
    FastV, through the Hydra path: answer length and steps come from conf/model/llada-v.yaml."""
    import numpy as np
    import yaml
    from PIL import Image
    from redundancy.testing.tinyckpt import write_checkpoint

    ckpt = write_checkpoint("llada-v", tmp_path / "llada-v")
    rng = np.random.RandomState(0)
    rows = [{"task": "shapes_short", "question": "what colour is it ?", "answer": "red",
             "image": Image.fromarray((rng.rand(28, 56, 3) * 255).astype(np.uint8))} for _ in range(3)]
    tasks = tmp_path / "tasks"
    data = write_image_parquet(rows, tasks / "tiny.parquet")
    (tasks / "utils.py").write_text("from redundancy.lmms.shapes_utils import *  # noqa\n")
    (tasks / "tiny_vqa.yaml").write_text(task_yaml("tiny_vqa", data, "test", 64, ["exact_match"], "short"))
    short = yaml.safe_load((ROOT / "conf/model/llada-v.yaml").read_text())["generation"]["short"]
    over = ["model=llada-v", f"model.checkpoint={ckpt}", "model.dtype=float32", "task=lmms", "task.name=tiny_vqa",
            f"task.include_path={tasks}", "task.answer_type=short", "sampler=native", "probe=attention", "batch_size=3"]
    table = run(_cfg(tmp_path, *over, "policy=fastv", "policy.prune.layer=1"))  # the tiny model has 2 layers
    base = run(_cfg(tmp_path, *over))
    assert len(table) == 3 and table["exact_match"].between(0, 1).all()
    assert (table["n_visual_kept"] < base["n_visual_kept"]).all() and (table["flops"] < base["flops"]).all()
    res = load_results(tmp_path / "single")
    assert set(table["baseline_run_id"]) == set(base["run_id"])
    steps = res.traces.loc[res.traces.metric == "time_step_s", "step"]
    assert sorted(steps.unique()) == list(range(short["steps"]))  # the model's short-answer steps, not 64 / 2
    assert set(res.runs["model.generation.short.answer_length"]) == {short["answer_length"]}
