"""Settings of the lmms-eval model, without lmms-eval: model arguments, answer lengths, stop strings.

lmms-eval hands a model its ``--model_args`` as keyword arguments (``k=v`` pairs split on commas,
numbers and booleans already converted). :func:`compose_config` turns them into this toolkit's
experiment config, composed from ``conf/`` exactly as ``python -m experiments.run`` composes it, so
the same names select the same model, sampler, policy and probes, and the same schema rejects a
mistyped key.

A diffusion model decodes a fixed number of answer slots, so each task needs an answer length, a
number of denoising steps and a block length. :func:`answer_settings` takes them from the model
config's table ``model.generation`` (keyed by answer type, ``short`` / ``short_free`` / ``medium`` /
``reasoning`` / ``long`` as the study set them per benchmark, or by task name) and falls back to the
task's ``max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import prompt_suffix

#: plain model arguments and the config path each one sets
MODEL_ARG_PATHS: dict[str, str] = {
    "checkpoint": "model.checkpoint",
    "device": "model.device",
    "dtype": "model.dtype",
    "attn_implementation": "model.attn_implementation",
    "batch_size": "batch_size",
    "progress": "progress",
}
#: model arguments that choose a config group (a file ``conf/<group>/<choice>.yaml``)
GROUP_ARGS: tuple[str, ...] = ("model", "sampler", "policy", "probe")
#: settings of the lmms-eval bridge itself (the ``lmms:`` section of ``config=<yaml>``)
BRIDGE_ARGS: tuple[str, ...] = ("answer_type", "answer_types", "max_new_tokens")
#: arguments lmms-eval passes to every model whatever the user wrote, and which need no setting here
IGNORED_ARGS: tuple[str, ...] = ("max_batch_size",)

LOCAL_SUFFIX = "_local"

#: answer type (the key of ``model.generation``) of the study's benchmarks (``reference/paper.md``
#: section 2, whose groups the shipped model configs follow) and of other lmms-eval tasks; local
#: copies written by :mod:`redundancy.lmms.export` (``<name>_local``) share their type
TASK_ANSWER_TYPES: dict[str, str] = {
    **{t: "short" for t in (
        "shapes_short", "mme", "mmmu_val", "mmmu_pro_standard", "mmmu_pro_vision", "mmstar", "ai2d", "seedbench",
        "mmbench_en_dev", "muirbench", "realworldqa", "pope", "scienceqa_img", "gqa",
    )},
    **{t: "short_free" for t in ("chartqa", "textvqa_val", "ocrbench")},
    **{t: "medium" for t in ("docvqa_val", "infovqa_val")},
    **{t: "reasoning" for t in (
        "mathvista_testmini", "mathvista_testmini_format", "mathvista_testmini_cot", "mathvista_testmini_solution",
        "mathverse_testmini_vision",
    )},
    **{t: "long" for t in (
        "shapes_long", "detailcaps", "coco2017_cap_val", "coco2014_cap_val", "nocaps_val", "flickr30k_test",
        "textcaps_val", "llava_in_the_wild", "mmvet",
    )},
}


@dataclass
class BridgeSettings:
    """Settings of the lmms-eval model that are not part of the experiment config.

    ``answer_type`` forces one ``model.generation`` entry on every task; ``answer_types`` adds or
    replaces the type of named tasks (see :data:`TASK_ANSWER_TYPES`); ``max_new_tokens`` is the
    answer length of a task that has neither a ``model.generation`` entry nor ``max_new_tokens``.
    """

    answer_type: str | None = None
    answer_types: dict[str, str] = field(default_factory=dict)
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.answer_type is not None and (not isinstance(self.answer_type, str) or not self.answer_type):
            raise ValueError(f"answer_type must be a model.generation key such as short or long, "
                             f"got {self.answer_type!r}")
        if not isinstance(self.answer_types, Mapping):
            raise ValueError(f"answer_types must map task names to answer types, "
                             f"got {type(self.answer_types).__name__}")
        bad = {t: k for t, k in self.answer_types.items() if not isinstance(k, str) or not k}
        if bad:
            raise ValueError(f"answer_types {bad}: each task needs a model.generation key such as short or long")
        self.answer_types = dict(self.answer_types)
        if self.max_new_tokens is not None:
            self.max_new_tokens = _positive_int("max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class AnswerSettings:
    """How one task's answers are decoded: the answer length and sampler fields that replace the
    configured sampler's (``steps``, ``block_length`` and, with ``sampler=native``, the rest)."""

    answer_length: int
    sampler: tuple[tuple[str, Any], ...] = ()  # sorted (field, value) pairs, hashable for grouping
    source: str = "max_new_tokens"  # where the numbers came from, for messages and tables
    prompt_suffix: str = ""  # appended to every question (LLaDA-V's " /no_think" / " /think")

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.sampler)


# -- config composition ---------------------------------------------------------------------------
def conf_dir() -> Path:
    """The toolkit's Hydra config folder (``conf/`` beside the package)."""
    path = Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").is_file():
        raise ValueError(f"cannot find the toolkit's configs at {path}; install the project from its source folder "
                         "(pip install -e .)")
    return path


def _choices(group: str, root: Path) -> list[str]:
    return sorted(p.stem for p in (root / group).glob("*.yaml"))


def _positive_int(name: str, value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def _nest(path: str, value: Any) -> dict:
    out: dict = {}
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def _cli_value(value: Any) -> Any:
    """A model-argument value as a config value (lists and mappings may be written inline)."""
    if isinstance(value, str) and value[:1] in "[{":
        import yaml

        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"cannot read {value!r} as a list or mapping: {e}") from None
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    return value


def read_config_file(path: str | Path) -> dict:
    """The mapping of a ``config=<yaml>`` model argument (ValueError naming the file otherwise)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def split_model_args(args: Mapping[str, Any], root: Path | None = None) -> tuple[dict, list[dict], BridgeSettings]:
    """Sort model arguments into group choices, config mappings (merged in order) and bridge settings.

    Precedence, lowest first: the groups' defaults, the ``config=<yaml>`` file, the arguments.
    """
    root = root or conf_dir()
    args = dict(args)
    for k in IGNORED_ARGS:
        args.pop(k, None)
    groups: dict[str, str] = {}
    merges: list[dict] = []
    bridge: dict[str, Any] = {}

    def choose(group: str, value: Any, origin: str) -> dict:
        """Select ``conf/<group>/<value>.yaml``; a model name without a file sets ``model.name``."""
        if not isinstance(value, str) or not value:
            raise ValueError(f"{origin}{group} must be a name, got {value!r}")
        if value in _choices(group, root):
            groups[group] = value
            return {}
        if group == "model":  # a registered name without a config file (e.g. a zoo seed, toy-scratch@1)
            return {"model": {"name": value}}
        raise ValueError(f"unknown {group} {value!r}; choose one of: {', '.join(_choices(group, root))}")

    path = args.pop("config", None)
    if path is not None:
        data = read_config_file(path)
        origin = f"config file {path}: "
        lm = data.pop("lmms", None) or {}
        if not isinstance(lm, Mapping):
            raise ValueError(f"{origin}'lmms' must be a mapping of {', '.join(BRIDGE_ARGS)}")
        unknown = sorted(set(lm) - set(BRIDGE_ARGS))
        if unknown:
            raise ValueError(f"{origin}unknown lmms setting(s) {unknown}; choose from: {', '.join(BRIDGE_ARGS)}")
        bridge.update(lm)
        file_merge: dict = {}
        for g in GROUP_ARGS:
            if isinstance(data.get(g), str):
                file_merge.update(choose(g, data.pop(g), origin))
            elif g == "model" and isinstance(data.get(g), Mapping) and data[g].get("name"):
                name = data[g]["name"]
                if name in _choices("model", root):
                    groups["model"] = name
        merges.append(file_merge)
        merges.append(data)
    cli: dict = {}
    for key, value in args.items():
        if key in GROUP_ARGS:
            cli = _merge_dicts(cli, choose(key, value, ""))
        elif key in BRIDGE_ARGS:
            bridge[key] = _cli_value(value)
        elif key in MODEL_ARG_PATHS:
            if value is not None:
                cli = _merge_dicts(cli, _nest(MODEL_ARG_PATHS[key], _cli_value(value)))
        elif "." in key and key.split(".", 1)[0] in GROUP_ARGS:
            cli = _merge_dicts(cli, _nest(key, _cli_value(value)))
        else:
            valid = [*GROUP_ARGS, *MODEL_ARG_PATHS, *BRIDGE_ARGS, "config"]
            raise ValueError(
                f"unknown model argument {key!r}; valid: {', '.join(valid)}, or a dotted config path such as "
                "policy.prune.ratio=0.25 or sampler.steps=8"
            )
    merges.append(cli)
    if "batch_size" in cli and cli["batch_size"] is not None:
        if str(cli["batch_size"]).startswith("auto"):
            raise ValueError("batch_size 'auto' is not supported; give a number of questions per batch")
        cli["batch_size"] = _positive_int("batch_size", cli["batch_size"])
    try:
        settings = BridgeSettings(**bridge)
    except TypeError as e:  # pragma: no cover - keys are checked above
        raise ValueError(str(e)) from None
    return groups, merges, settings


def _merge_dicts(a: Mapping, b: Mapping) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def compose_config(args: Mapping[str, Any], root: Path | None = None) -> tuple[dict, BridgeSettings]:
    """The experiment config (a plain dict) and bridge settings of lmms-eval model arguments.

    ``args`` as lmms-eval passes them: ``model``, ``sampler``, ``policy``, ``probe`` choose config
    files (``conf/<group>/<name>.yaml``; a model name without a file sets ``model.name``);
    ``checkpoint``, ``device``, ``dtype``, ``attn_implementation``, ``batch_size`` set those
    values; a dotted key sets any config value (``policy.prune.ratio=0.25``); ``config=<yaml>``
    reads a file of settings that do not fit the argument string (nested mappings, lists, the
    bridge's own ``lmms:`` section). Raises ValueError naming any bad key or value.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ..config import register_configs, to_plain

    root = root or conf_dir()
    groups, merges, settings = split_model_args(args, root)
    register_configs()
    # composing needs the global Hydra state; inside a running Hydra app it is restored afterwards
    # (initialize_config_dir replaces the GlobalHydra singleton, so it is looked up anew each time)
    saved = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"{g}={v}" for g, v in groups.items()])
    except HydraException as e:
        raise ValueError(str(e)) from None
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    for m in merges:
        if not m:
            continue
        try:
            cfg = OmegaConf.merge(cfg, m)
        except OmegaConfBaseException as e:  # keep the message and the key, drop OmegaConf's type dump
            lines = [ln.strip() for ln in str(e).strip().splitlines()
                     if ln.strip() and not ln.strip().startswith(("reference_type", "object_type"))]
            raise ValueError(f"bad model setting: {'; '.join(lines)}") from None
    return to_plain(cfg), settings


# -- per-task decoding ----------------------------------------------------------------------------
#: fields of a model.generation entry used whatever the sampler (the rest only with sampler=native)
SHAPE_FIELDS: tuple[str, ...] = ("steps", "block_length")


def base_task(task: str) -> str:
    """The benchmark a local copy stands for (``mme_local`` -> ``mme``)."""
    return task.removesuffix(LOCAL_SUFFIX)


def answer_type(task: str, settings: BridgeSettings | None = None) -> str | None:
    """A task's answer type: forced, then ``answer_types``, then :data:`TASK_ANSWER_TYPES`."""
    settings = settings or BridgeSettings()
    if settings.answer_type:
        return settings.answer_type
    for name in (task, base_task(task)):
        if name in settings.answer_types:
            return settings.answer_types[name]
        if name in TASK_ANSWER_TYPES:
            return TASK_ANSWER_TYPES[name]
    return None


def answer_settings(generation: Mapping[str, Any] | None, task: str, kind: str | None, max_new_tokens: Any = None,
                    sampler_fields: Iterable[str] = SHAPE_FIELDS, native: bool = False,
                    required: bool = False) -> AnswerSettings:
    """Answer length and sampler fields of ``task``.

    ``generation`` is the model config's table: keys are answer types (``kind``) or task names (the
    local copy's or the benchmark's, which win), values mappings of ``answer_length`` and sampler
    fields (``sampler_fields`` are the valid ones). The entry's answer length, ``steps`` and
    ``block_length`` apply whatever the sampler; its other fields (strategy, prefix cache, ...) only
    with ``native`` (``sampler=native``). Without an entry the answer length is ``max_new_tokens``
    and the configured sampler decides the rest; ``required`` (an answer type forced by the user)
    makes a missing entry an error.
    """
    generation = generation or {}
    if not isinstance(generation, Mapping):
        raise ValueError(f"model.generation must map answer types or task names to settings, "
                         f"got {type(generation).__name__}")
    valid = set(sampler_fields) | set(SHAPE_FIELDS)
    for key in dict.fromkeys(k for k in (task, base_task(task), kind) if k):
        if key in generation:
            entry = generation[key]
            where = f"model.generation.{key}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where} must be a mapping of answer_length and sampler fields, got {entry!r}")
            unknown = sorted(set(entry) - valid - {"answer_length", "kind", "prompt_suffix"})
            if unknown:
                raise ValueError(f"{where} has unknown field(s) {unknown}; "
                                 f"valid: answer_length, {', '.join(sorted(valid))}")
            if entry.get("answer_length") is None:
                raise ValueError(f"{where} needs answer_length")
            length = _positive_int(f"{where}.answer_length", entry["answer_length"])
            use = {k: v for k, v in entry.items()
                   if k not in ("answer_length", "kind", "prompt_suffix") and (native or k in SHAPE_FIELDS)}
            for k in SHAPE_FIELDS:
                if use.get(k) is not None:
                    use[k] = _positive_int(f"{where}.{k}", use[k])
            return AnswerSettings(length, tuple(sorted((k, _hashable(v)) for k, v in use.items())), where,
                                  prompt_suffix(entry, where))
    if required:
        raise ValueError(f"answer type {kind!r} of task {task!r} has no model.generation entry "
                         f"(it has: {', '.join(sorted(generation)) or 'none'})")
    if max_new_tokens is None:
        raise ValueError(
            f"task {task!r} sets no max_new_tokens and model.generation has no entry for it (keys: "
            f"{', '.join(sorted(generation)) or 'none'}; its answer type: {kind or 'unknown'}); add one, or set the "
            "model argument max_new_tokens"
        )
    return AnswerSettings(_positive_int(f"task {task!r} max_new_tokens", max_new_tokens))


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def sampling_temperature(gen_kwargs: Mapping[str, Any], default: float) -> float:
    """The temperature a task asks for: ``do_sample: false`` is greedy (0), else its ``temperature``."""
    do_sample = gen_kwargs.get("do_sample")
    t = gen_kwargs.get("temperature")
    if do_sample is False or (isinstance(do_sample, str) and do_sample.lower() == "false"):
        return 0.0
    if t is None:
        return float(default) if float(default) > 0 or not do_sample else 1.0
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number >= 0, got {t!r}") from None
    if t < 0:
        raise ValueError(f"temperature must be >= 0, got {t}")
    return t


def stop_strings(until: Any) -> list[str]:
    """The ``until`` generation argument as a list of non-empty stop strings."""
    if until is None:
        return []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, Iterable) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"until must be a string or a list of strings, got {until!r}")
    return [s for s in until if s]


def truncate(text: str, until: Any) -> str:
    """``text`` cut before the first occurrence of any stop string."""
    cut = len(text)
    for s in stop_strings(until):
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]
