"""The main job as a plain function and as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from redundancy.experiment import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_run_returns_scored_rows(tmp_path):
    cfg = _cfg("n_samples=5", "task=shapes_long", f"output={tmp_path / 'out.parquet'}")
    table = run(cfg)
    assert len(table) == 5
    assert set(table.attrs["metrics"]) >= {"object_recall", "token_f1", "exact_match"}
    assert table["sample_id"].tolist() == [f"shapes_long/test/{i}" for i in range(5)]
    saved = pd.read_parquet(tmp_path / "out.parquet")
    assert saved["answer"].tolist() == table["answer"].tolist()
    # same config, same answers
    assert run(cfg)["answer"].tolist() == table["answer"].tolist()


def test_autoregressive_model_runs_with_its_sampler():
    table = run(_cfg("model=toy-ar", "sampler=autoregressive", "n_samples=3"))
    assert len(table) == 3 and table["answer"].str.len().gt(0).all()


def test_bad_sampler_fails_before_loading(tmp_path):
    cfg = _cfg("sampler.block_length=3", f"output={tmp_path / 'x.parquet'}")
    with pytest.raises(ValueError, match="block_length 3"):
        run(cfg)
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.slow
def test_command_line_bad_model_one_line_nonzero(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "experiments.run", "model.name=nope", "hydra.run.dir=" + str(tmp_path)],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 2
    assert "unknown model 'nope'; choose one of:" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_command_line_prints_answers(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "experiments.run", "n_samples=4", "hydra.run.dir=" + str(tmp_path)],
                         capture_output=True, text=True, cwd=root, check=True)
    assert "shapes_short/test/3" in out.stdout and "mean exact_match=" in out.stdout
