"""Models by name: the embedded zoo, randomly initialised toy shapes, and real-checkpoint adapters."""

from __future__ import annotations

from pathlib import Path
import inspect
from typing import Callable, Mapping, Sequence

from .base import Adapter

_LOADERS: dict[str, Callable[..., Adapter]] = {}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "zoo" / "weights"


_OPTIONS: dict[str, tuple[str, ...] | None] = {}


def register_model(name: str, loader: Callable[..., Adapter], overwrite: bool = False,
                   options: Sequence[str] | None = None) -> None:
    """Make ``load_model(name)`` call ``loader(**kwargs)``.

    ``options`` names the keyword arguments the loader accepts as ``model.options`` (default: the
    named parameters of ``loader``'s signature; ``None`` there when it takes ``**kwargs`` only).
    """
    if name in _LOADERS and not overwrite:
        raise ValueError(f"model {name!r} is already registered")
    _LOADERS[name] = loader
    if options is None:
        params = inspect.signature(loader).parameters.values()
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        options = None if any(p.kind == p.VAR_KEYWORD for p in params) and not named else named
    _OPTIONS[name] = None if options is None else tuple(o for o in options if o != "checkpoint")


def check_options(name: str, options: Mapping[str, object]) -> None:
    """Reject ``model.options`` keys the model's loader does not accept, naming the valid ones."""
    _register_zoo()
    valid = _OPTIONS.get(name)
    if valid is None:
        return
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"model {name!r} has no option(s) {bad}; valid options: {', '.join(valid) or 'none'}")


def known_models() -> list[str]:
    """All registered names, shipped zoo weights included."""
    _register_zoo()
    return sorted(_LOADERS)


def load_model(name: str, **kwargs) -> Adapter:
    """Build the adapter registered as ``name``; unknown names raise ValueError listing the known ones."""
    _register_zoo()
    if name not in _LOADERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name](**kwargs)


def model_files(name: str, checkpoint: str | Path | None = None) -> list[Path]:
    """The files a model's loader reads: every file of its checkpoint directory (a zoo model's own
    weights folder when no checkpoint is given); none for models built in code (``random-*``)."""
    _register_zoo()
    folder = Path(checkpoint) if checkpoint else WEIGHTS_DIR / name
    if not folder.is_dir() or (not checkpoint and not (folder / "config.json").is_file()):
        return []
    return sorted(f for f in folder.iterdir() if f.is_file())


def _register_zoo() -> None:
    """Register every shipped weights folder (``zoo/weights/<name>/``) under its folder name."""
    from .toy import ToyDMLLM

    if WEIGHTS_DIR.is_dir():
        for d in sorted(WEIGHTS_DIR.iterdir()):
            if (d / "config.json").is_file() and d.name not in _LOADERS:
                _LOADERS[d.name] = lambda path=d, name=d.name, checkpoint=None: ToyDMLLM.from_pretrained(
                    checkpoint or path, name=name
                )
                _OPTIONS[d.name] = ()


def _random_toy(decoder: str, family: str, shift: int) -> Callable[..., Adapter]:
    def build(seed: int = 0, **overrides) -> Adapter:
        import torch

        from ..tasks.shapes import VOCAB
        from .toy import ToyConfig, ToyDMLLM

        torch.manual_seed(seed)
        cfg = ToyConfig(decoder=decoder, family=family, logit_shift=shift, words=list(VOCAB), **overrides)
        return ToyDMLLM(cfg, name=f"random-{decoder}").eval()

    return build


def _toy_options() -> tuple[str, ...]:
    from dataclasses import fields

    from .toy import ToyConfig

    return ("seed", *(f.name for f in fields(ToyConfig) if f.name not in ("decoder", "family", "logit_shift", "words")))


register_model("random-llama", _random_toy("llama", "from_scratch", 0), options=_toy_options())
register_model("random-qwen2", _random_toy("qwen2", "ar_to_diffusion", 1), options=_toy_options())


def _register_real() -> None:
    from .real.adapter import MODELS, loader

    from .real.adapter import RealDMLLM

    params = inspect.signature(RealDMLLM.__init__).parameters
    opts = [p for p in params if p not in ("self", "spec", "checkpoint", "dtype", "device")]
    for name in MODELS:
        register_model(name, loader(name), options=opts)


_register_real()
