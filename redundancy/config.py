"""Structured config schemas (Hydra ConfigStore): a mistyped key or a wrong type fails at composition."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConf:
    name: str = "toy-scratch"
    checkpoint: Optional[str] = None  # a local checkpoint directory (zoo models: overrides the shipped weights)
    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str = "eager"
    options: Dict[str, Any] = field(default_factory=dict)  # adapter keyword arguments (system_prompt, ...)
    # the model's own sampler settings per answer type (short, long, ...): used by sampler=native
    generation: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConf:
    name: str = "shapes_short"
    split: str = "test"
    n_samples: Optional[int] = None  # None: the ``samples[size]`` preset
    headline: str = "exact_match"  # the metric summaries report as accuracy
    kind: str = "shapes"  # shapes: the synthetic benchmark in-process; lmms: an lmms-eval task (docs/lmms.md)
    include_path: Optional[str] = None  # lmms: folder of task YAMLs (default: exported shapes tasks)
    answer_type: Optional[str] = None  # key into model.generation (None: short / long from the task name)


@dataclass
class SamplerConf:
    kind: str = "diffusion"  # diffusion | autoregressive | native (model.generation for the task)
    strategy: str = "low_confidence"
    steps: Optional[int] = None
    tokens_per_step: int = 2
    block_length: Optional[int] = None
    temperature: float = 0.0
    threshold: float = 0.9
    suppress_end: bool = False
    prefix_cache: bool = False
    seed: int = 0
    schedule: str = "linear"  # tokens per step: linear | shift | cosine | logit_normal | dream
    schedule_shift: float = 3.0
    threshold_fallback: str = "one"  # strategy threshold, nothing confident: one | schedule (Dimple's)
    confidence_eos_eot_inf: bool = False  # LLaDA's rule: confidences renormalised without EoT (and EOS at T=0)
    stop_at_end: bool = False  # LLaDA-V's stopping criteria: decode only before the first committed end
    threshold_on: str = "probability"  # confident decoding thresholds: probability | margin (Dimple's topk_margin)
    cap_steps: bool = False  # at most one step per answer slot (LaViDa: min(steps, max_new_tokens))
    prefill_first_token: bool = False  # LaViDa's prefix_lm: slot 0 from the prefill's argmax before step 0
    top_k: Optional[int] = None  # keep the k largest logits per slot before proposing and scoring (Dream's top_k)
    top_p: Optional[float] = None  # nucleus filtering before proposing and scoring (Dream's / Dimple's top_p)


@dataclass
class PruneConf:
    """Hydra schema of ``redundancy.policies.PruneConfig`` (same fields; a test keeps them in step)."""

    method: str = "none"  # none, or one of redundancy.policies.SCORERS
    layer: int = 3
    ratio: float = 0.5
    schedule: str = "once"
    step: int = 0
    step_fraction: Optional[float] = None  # decide at round(f x steps) instead of ``step``
    late_fraction: float = 0.5
    progressive_ratios: Optional[List[float]] = None
    persist_from: str = "input"
    seed: int = 0
    query: str = "all"
    heads_before_softmax: bool = False
    recycle: bool = True
    recycle_fraction: float = 0.3
    proportional_attention: bool = True


@dataclass
class SkipConf:
    layers: Optional[List[int]] = None
    n: Optional[int] = None
    fraction: Optional[float] = None
    position: str = "middle"
    steps: Optional[List[int]] = None


@dataclass
class PolicyConf:
    name: str = "none"  # a label for tables and figures (baseline, blind, fastv, skip, ...)
    blind: bool = False  # withdraw every visual token before the language model (the blind baseline)
    prune: PruneConf = field(default_factory=PruneConf)
    skip: SkipConf = field(default_factory=SkipConf)


@dataclass
class ProbeConf:
    cost: bool = True
    attention: bool = False
    attention_per_head: bool = False
    importance_steps: Optional[List[int]] = field(default_factory=list)  # None: every step
    importance_layers: Optional[List[int]] = None
    signals: bool = False  # answer-slot confidence and commitment per step
    answer_logit_layers: List[int] = field(default_factory=list)
    oracle_steps: List[int] = field(default_factory=list)
    information_loss: List[str] = field(default_factory=list)  # modes: free, forced


@dataclass
class ExperimentConf:
    model: ModelConf = field(default_factory=ModelConf)
    task: TaskConf = field(default_factory=TaskConf)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    policy: PolicyConf = field(default_factory=PolicyConf)
    probe: ProbeConf = field(default_factory=ProbeConf)
    size: str = "small"
    samples: Dict[str, Any] = field(default_factory=dict)  # size -> {task: n}
    batch_size: int = 16
    study: str = "single"  # results go to <results_dir>/<study>/
    results_dir: str = "results"
    output: Optional[str] = None  # an extra parquet copy of the outcome table
    print_answers: bool = True
    progress: bool = True


def register_configs() -> None:
    """Register the schema as ``experiment_schema`` (idempotent)."""
    ConfigStore.instance().store(name="experiment_schema", node=ExperimentConf)


def to_plain(cfg: Any) -> dict:
    """A resolved plain dict of a DictConfig (or a copy of a mapping)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def check_schema(cfg: Any) -> None:
    """Reject keys the schema does not know (``+key=value`` overrides included, which Hydra appends
    without checking) and values of the wrong type, naming the key and the valid choices."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    plain = to_plain(cfg)
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    try:
        OmegaConf.merge(OmegaConf.structured(ExperimentConf), plain)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node: Any = ExperimentConf
        for part in parent.split(".") if parent else []:
            node = {f.name: f for f in fields(node)}[part].default_factory
        valid = ", ".join(f.name for f in fields(node))
        raise ValueError(f"unknown config key {key!r}; valid keys{' of ' + parent if parent else ''}: {valid}") from None
    except ValidationError as e:
        raise ValueError(f"bad config value at {getattr(e, 'full_key', '?')!r}: {e.msg}") from None


def prompt_suffix(entry: Mapping[str, Any], where: str) -> str:
    """The entry's ``prompt_suffix`` (text appended to every question, e.g. LLaDA-V's eval appends
    " /no_think" or " /think" by task group: LLaDA-V eval ``llava_onevision_llada.py`` 527-532)."""
    suffix = entry.get("prompt_suffix", "")
    if suffix is None:
        return ""
    if not isinstance(suffix, str):
        raise ValueError(f"{where}.prompt_suffix must be text, got {suffix!r}")
    return suffix
