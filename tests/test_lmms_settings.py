"""The lmms-eval bridge's pieces that need no lmms-eval: model arguments, answer settings, stop
strings, temperature, the shapes task export and the Hydra task group (tests/test_lmms.py runs
lmms-eval itself, in the eval environment)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from redundancy.config import register_configs
from redundancy.lmms.export import SHAPES_GROUP, export_shapes, write_image_parquet
from redundancy.lmms.settings import (
    BridgeSettings,
    answer_settings,
    answer_type,
    compose_config,
    sampling_temperature,
    stop_strings,
    truncate,
)
from redundancy.tasks import ShapesTask

ROOT = Path(__file__).resolve().parents[1]
register_configs()
HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None


# -- model arguments --------------------------------------------------------------------------------
def test_model_args_choose_groups_and_set_dotted_values():
    cfg, settings = compose_config({"model": "toy-scratch@1", "policy": "fastv", "policy.prune.ratio": 0.25,
                                    "sampler": "topk_margin", "probe": "attention", "batch_size": "8",
                                    "device": "cpu", "max_new_tokens": 6, "max_batch_size": None})
    assert cfg["model"]["name"] == "toy-scratch@1"  # a registered name without a config file
    assert cfg["policy"]["prune"]["method"] == "fastv" and cfg["policy"]["prune"]["ratio"] == 0.25
    assert cfg["sampler"]["strategy"] == "topk_margin" and cfg["probe"]["attention"] is True
    assert cfg["batch_size"] == 8 and settings.max_new_tokens == 6


def test_config_file_sits_between_group_defaults_and_arguments(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({
        "model": "toy-ar2diff", "policy": {"name": "fastv", "prune": {"method": "fastv", "ratio": 0.75,
                                                                      "progressive_ratios": [0.75, 0.5]}},
        "sampler": {"steps": 2}, "lmms": {"answer_types": {"my_task": "long"}, "max_new_tokens": 8},
    }))
    cfg, settings = compose_config({"config": str(f), "policy.prune.ratio": 0.5})
    assert cfg["model"]["name"] == "toy-ar2diff"
    assert cfg["policy"]["prune"]["progressive_ratios"] == [0.75, 0.5]
    assert cfg["policy"]["prune"]["ratio"] == 0.5  # the argument string wins over the file
    assert cfg["sampler"]["steps"] == 2
    assert settings.answer_types == {"my_task": "long"} and settings.max_new_tokens == 8


def test_inline_lists_in_model_args():
    cfg, _ = compose_config({"policy": "fastv", "policy.prune.progressive_ratios": "[0.75,0.5]",
                             "policy.prune.schedule": "progressive"})
    assert cfg["policy"]["prune"]["progressive_ratios"] == [0.75, 0.5]


@pytest.mark.parametrize("args, match", [
    ({"ratio": 0.5}, "unknown model argument 'ratio'; valid: model, sampler"),
    ({"policy": "fastvv"}, "unknown policy 'fastvv'; choose one of: answer_logit, blind"),
    ({"sampler": "greedy"}, "unknown sampler 'greedy'; choose one of:"),
    ({"policy.prune.ratioo": 0.5}, "Key 'ratioo' not in 'PruneConf'"),
    ({"sampler.steps": "many"}, "sampler.steps"),
    ({"config": "/nonexistent/run.yaml"}, "config file '/nonexistent/run.yaml' does not exist"),
    ({"batch_size": "auto"}, "batch_size 'auto' is not supported"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"max_new_tokens": -3}, "max_new_tokens must be a positive integer, got -3"),
])
def test_bad_model_args_name_the_value_and_the_choices(args, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")):
        compose_config(args)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lmms: {answer_kinds: {x: long}}\n")
    with pytest.raises(ValueError, match=r"unknown lmms setting\(s\) \['answer_kinds'\]; choose from: answer_type"):
        compose_config({"config": str(bad)})
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping, got list"):
        compose_config({"config": str(bad)})


def test_composing_inside_a_running_hydra_app_keeps_its_state():
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        before = GlobalHydra.instance().hydra
        compose_config({"policy": "tome"})
        assert GlobalHydra.instance().hydra is before
        assert compose(config_name="config").policy.prune.method == "none"


# -- answer settings ----------------------------------------------------------------------------------
GEN = {"short": {"answer_length": 2, "steps": 2, "block_length": 2, "strategy": "low_confidence"},
       "long": {"answer_length": 128, "steps": 64, "block_length": 128, "strategy": "topk_margin",
                "prefix_cache": True},
       "chartqa": {"answer_length": 16, "steps": 8}}
FIELDS = ("strategy", "steps", "tokens_per_step", "block_length", "temperature", "threshold", "suppress_end",
          "prefix_cache", "seed")


def test_answer_types_of_the_study_benchmarks_and_local_copies():
    assert answer_type("mme") == "short" and answer_type("mme_local") == "short"
    assert answer_type("chartqa_local") == "short_free" and answer_type("docvqa_val") == "medium"
    assert answer_type("mathvista_testmini_local") == "reasoning" and answer_type("detailcaps") == "long"
    assert answer_type("shapes_long") == "long" and answer_type("my_task") is None
    assert answer_type("my_task", BridgeSettings(answer_types={"my_task": "long"})) == "long"
    assert answer_type("mme", BridgeSettings(answer_type="long")) == "long"


def test_per_task_settings_come_from_model_generation():
    s = answer_settings(GEN, "mme_local", "short", 16, FIELDS)
    assert (s.answer_length, s.fields, s.source) == (2, {"steps": 2, "block_length": 2}, "model.generation.short")
    native = answer_settings(GEN, "detailcaps", "long", 512, FIELDS, native=True)
    assert native.answer_length == 128
    assert native.fields == {"steps": 64, "block_length": 128, "strategy": "topk_margin", "prefix_cache": True}
    # a task-name entry wins over the answer type, for the local copy too
    assert answer_settings(GEN, "chartqa_local", "short_free", 32, FIELDS).fields == {"steps": 8}
    # no entry: the task's max_new_tokens, the sampler decides the rest
    assert answer_settings(GEN, "docvqa_val", "medium", 32, FIELDS) == answer_settings({}, "x", None, 32)
    assert answer_settings({}, "x", None, 32).answer_length == 32


def test_answer_settings_errors():
    with pytest.raises(ValueError, match=r"task 'x' sets no max_new_tokens and model.generation has no entry"):
        answer_settings(GEN, "x", None, None, FIELDS)
    with pytest.raises(ValueError, match=r"model.generation.short has unknown field\(s\) \['stepz'\]"):
        answer_settings({"short": {"answer_length": 2, "stepz": 1}}, "mme", "short", 16, FIELDS)
    with pytest.raises(ValueError, match="model.generation.short needs answer_length"):
        answer_settings({"short": {"steps": 1}}, "mme", "short", 16, FIELDS)
    with pytest.raises(ValueError, match="answer type 'reasoning' of task 'mme' has no model.generation entry"):
        answer_settings(GEN, "mme", "reasoning", 16, FIELDS, required=True)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got 0"):
        answer_settings({}, "x", None, 0)


def test_stop_strings_truncate_and_temperature():
    assert truncate("red square top left . blue", ["."]) == "red square top left "
    assert truncate("a\n\nb", ["\n\n", "b"]) == "a" and truncate("abc", None) == "abc"
    assert truncate("abc", "") == "abc" and stop_strings("x") == ["x"]
    with pytest.raises(ValueError, match="until must be a string or a list of strings"):
        stop_strings([1])
    assert sampling_temperature({"temperature": 0, "do_sample": False}, 0.5) == 0.0
    assert sampling_temperature({"temperature": 0.7, "do_sample": True}, 0.0) == 0.7
    assert sampling_temperature({"temperature": 0.3, "do_sample": False}, 0.0) == 0.0
    assert sampling_temperature({}, 0.4) == 0.4 and sampling_temperature({"do_sample": True}, 0.0) == 1.0
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1.0"):
        sampling_temperature({"temperature": -1}, 0.0)


# -- export ---------------------------------------------------------------------------------------------
def test_export_writes_shapes_tasks_with_embedded_images(tmp_path):
    files = export_shapes(tmp_path, {"shapes_short": 6, "shapes_long": 3})
    root = tmp_path / "shapes"
    assert {p.name for p in files} >= {"shapes_short.yaml", "shapes_long.yaml", f"_{SHAPES_GROUP}.yaml", "utils.py"}
    df = pd.read_parquet(root / "data" / "shapes_short-test.parquet")
    samples = list(ShapesTask("shapes_short", n=6))
    assert df["sample_id"].tolist() == [s.sample_id for s in samples]
    assert df["question"].tolist() == [s.question for s in samples]
    assert df["answer"].tolist() == [s.answer for s in samples]
    img = Image.open(io.BytesIO(df["image"].iloc[2]["bytes"]))
    assert np.array_equal(np.asarray(img), np.asarray(samples[2].image))  # PNG round trip is lossless
    import pyarrow.parquet as pq

    feats = json.loads(pq.read_schema(root / "data" / "shapes_short-test.parquet").metadata[b"huggingface"])
    assert feats["info"]["features"]["image"] == {"_type": "Image"}
    text = (root / "shapes_long.yaml").read_text()
    assert "task: shapes_long" in text and "max_new_tokens: 32" in text and "metric: object_recall" in text


def test_export_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'dev'; choose one of: train, validation, test"):
        export_shapes(tmp_path, split="dev")
    with pytest.raises(ValueError, match="number of shapes_short samples must be >= 1, got 0"):
        export_shapes(tmp_path, {"shapes_short": 0})
    with pytest.raises(TypeError, match="column 'x' has values of type list"):
        write_image_parquet([{"x": [1]}], tmp_path / "x.parquet")


# -- the Hydra task ---------------------------------------------------------------------------------------
def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"results_dir={tmp_path}", "progress=false",
                                                        "print_answers=false", "task=lmms", *overrides])


def test_lmms_plan_identity_and_errors(tmp_path):
    from redundancy.experiment import plan

    a = plan(_cfg(tmp_path, "task.name=shapes_short", "task.n_samples=8"))
    assert a.identity["task"] == {"kind": "lmms", "name": "shapes_short", "limit": 8, "answer_type": None}
    assert a.identity["policy"] is None and a.baseline_run_id == a.run_id
    b = plan(_cfg(tmp_path, "task.name=shapes_short", "task.n_samples=8", "policy=fastv"))
    assert b.run_id != a.run_id and b.baseline_run_id == a.run_id
    assert plan(_cfg(tmp_path, "task.name=shapes_short")).limit == 40  # the size=small preset
    assert plan(_cfg(tmp_path, "task.name=mme_local")).limit is None  # no preset: the whole task
    with pytest.raises(ValueError, match="task.include_path '/nonexistent' is not a directory"):
        plan(_cfg(tmp_path, "task.include_path=/nonexistent"))
    with pytest.raises(ValueError, match="task.answer_type 'long' has no model.generation entry for model"):
        plan(_cfg(tmp_path, "task.answer_type=long"))
    with pytest.raises(ValueError, match="unknown task.kind 'hf'; choose one of: shapes, lmms"):
        plan(_cfg(tmp_path, "task.kind=hf"))


@pytest.mark.skipif(HAS_LMMS, reason="checks the message shown when lmms-eval is missing")
def test_lmms_task_without_lmms_eval_says_how_to_install(tmp_path):
    from redundancy.experiment import run

    with pytest.raises(ValueError, match=r"task.kind=lmms needs lmms-eval: .*pip install -e '.\[eval\]'"):
        run(_cfg(tmp_path, "task.n_samples=2"))
