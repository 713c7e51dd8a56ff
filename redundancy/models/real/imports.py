"""Importing a model's original code from the user's clone of its repository, without side effects."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


@contextlib.contextmanager
def on_path(path: str | Path):
    """Put ``path`` first on ``sys.path`` for the block; afterwards, forget the modules imported from it.

    Modules of the same top-level names imported earlier (e.g. another clone's ``models``) are set
    aside for the block and restored after it, so two repositories never mix.
    """
    path = Path(path)
    names = {p.stem for p in path.iterdir() if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in names}
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for k in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[k]
        sys.modules.update(saved)
