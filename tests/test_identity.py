"""Run identity: every model field and the model's files change the run id; the caches follow it."""

from __future__ import annotations

import shutil

import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from redundancy import experiment
from redundancy.config import register_configs
from redundancy.experiment import get_model, model_identity, plan
from redundancy.models.registry import WEIGHTS_DIR
from redundancy.results import NUMERICS_VERSION
from tests.test_experiment import CONF

register_configs()


def cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[f"results_dir={tmp_path}", "progress=false",
                                                        "print_answers=false", "task.n_samples=2", *overrides])


def test_numerics_version_and_every_model_field_are_in_the_identity(tmp_path):
    p = plan(cfg(tmp_path))
    assert p.identity["numerics_version"] == NUMERICS_VERSION
    assert set(p.identity["model"]) == {"name", "checkpoint", "device", "dtype", "attn_implementation", "options",
                                        "files"}
    assert p.identity["model"]["files"] == model_identity({"name": "toy-scratch"})["files"]
    base = p.run_id
    assert plan(cfg(tmp_path, "model.attn_implementation=sdpa")).run_id != base


def test_new_weights_at_the_same_path_give_a_new_run_and_model(tmp_path):
    ck = tmp_path / "ckpt"
    shutil.copytree(WEIGHTS_DIR / "toy-scratch", ck)
    first = plan(cfg(tmp_path, f"model.checkpoint={ck}"))
    m1 = get_model(first.config["model"])
    sd = load_file(str(ck / "model.safetensors"))
    k = sorted(sd)[0]
    sd[k] = sd[k] + 1.0
    save_file(sd, str(ck / "model.safetensors"))
    second = plan(cfg(tmp_path, f"model.checkpoint={ck}"))
    assert second.run_id != first.run_id
    m2 = get_model(second.config["model"])
    assert m2 is not m1 and m2.identity != m1.identity
    assert not torch.equal(m1.state_dict()[k], m2.state_dict()[k])


def test_a_checkpoint_under_a_reused_name_is_another_model(tmp_path):
    ck = tmp_path / "other"
    shutil.copytree(WEIGHTS_DIR / "toy-scratch@1", ck)
    a = plan(cfg(tmp_path))
    b = plan(cfg(tmp_path, f"model.checkpoint={ck}"))
    assert a.run_id != b.run_id
    assert get_model(a.config["model"]).identity != get_model(b.config["model"]).identity


def test_options_change_the_run_and_the_cached_model(tmp_path):
    # random-llama takes its seed as an adapter option: two seeds are two models and two runs
    a = plan(cfg(tmp_path, "model.name=random-llama"))
    b = plan(cfg(tmp_path, "model.name=random-llama", "+model.options.seed=3"))
    assert a.run_id != b.run_id
    ma, mb = get_model(a.config["model"]), get_model(b.config["model"])
    assert ma is not mb
    assert experiment.canonical_json(model_identity(a.config["model"])) == ma.identity


import pytest  # noqa: E402

from redundancy.experiment import run  # noqa: E402


@pytest.mark.parametrize("override, message", [
    ("+policy.centre=0.5", "unknown config key 'policy.centre'; valid keys of policy: name, blind, prune, skip"),
    ("+probe.my_probe=true", "unknown config key 'probe.my_probe'; valid keys of probe: cost,"),
    ("+policy.prune.centre=1", "valid keys of policy.prune: method, layer,"),
    ("+model.options.system_promt=x", "model 'toy-scratch' has no option(s) ['system_promt']; valid options: none"),
    ("+model.options.depth=3", "has no option(s) ['depth']"),
])
def test_unknown_keys_and_options_are_refused_before_anything_is_written(tmp_path, override, message):
    c = cfg(tmp_path, override)
    with pytest.raises(ValueError) as e:
        run(c)
    assert message in str(e.value)
    assert not any(tmp_path.iterdir())


def test_real_model_options_are_checked_against_the_adapter(tmp_path):
    with pytest.raises(ValueError, match=r"'llada-v' has no option\(s\) \['system_promt'\]; valid options: "
                                         r"system_prompt,"):
        plan(cfg(tmp_path, "model=llada-v", "+model.options.system_promt=x"))


def test_prompt_suffix_of_the_native_entry_reaches_the_prompt_and_the_identity(tmp_path):
    """LLaDA-V's think suffix: a typed text field of each model.generation entry, applied where the
    prompt is built (sampler=native), and part of the run identity."""
    from redundancy.experiment import get_prompt, question_suffix

    base = ["sampler=native", "+model.generation.short={answer_length: 4, steps: 2}"]
    a = plan(cfg(tmp_path, *base))
    b = plan(cfg(tmp_path, "sampler=native",
                 "+model.generation.short={answer_length: 4, steps: 2, prompt_suffix: ' yes'}"))
    assert a.identity["prompt_suffix"] == "" and b.identity["prompt_suffix"] == " yes"
    assert a.run_id != b.run_id and "prompt_suffix" not in b.sampler.config.__dict__
    m = get_model(b.config["model"])
    pa, _ = get_prompt(m, b.config["model"], b.task, range(0, 2))
    pb, _ = get_prompt(m, b.config["model"], b.task, range(0, 2), question_suffix(b.config))
    assert not torch.equal(pa.input_ids, pb.input_ids)  # " yes" is a word of the zoo's vocabulary
    with pytest.raises(ValueError, match="prompt_suffix must be text"):
        plan(cfg(tmp_path, "sampler=native", "+model.generation.short={answer_length: 4, prompt_suffix: 3}"))
