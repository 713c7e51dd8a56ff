"""Run identity: the config that defines a run, its ``run_id`` hash, and the row of the runs table.

The rule (also in ``docs/results.md``):

1. The resolved config is made plain (OmegaConf containers resolved, tuples -> lists, numpy scalars
   -> Python scalars, keys -> str, ``-0.0`` -> ``0.0``).
2. Keys that do not change what a run computes are dropped: a dotted path from the root listed in
   ``RUN_ID_EXCLUDED_PATHS`` (and everything under it), and a key whose own name is in
   ``RUN_ID_EXCLUDED_NAMES`` at any depth.
3. ``run_id`` = first 16 hex chars of sha256 over the canonical JSON of what is left: sorted keys,
   separators ``(",", ":")``, ASCII, floats as Python's shortest round-trip repr (so ``0.5`` and
   ``0.50`` hash equally; ``1`` and ``1.0`` differ).
"""

from __future__ import annotations

import functools

import hashlib
import json
import math
import platform
from datetime import datetime, timezone
from importlib import metadata
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .schema import RUNS_FIXED, VERSION_PREFIX

RUN_ID_EXCLUDED_PATHS: tuple[str, ...] = (
    "hydra", "output", "output_dir", "results_dir", "logging", "launcher", "progress",
)
"""Dotted paths from the root of the config left out of the run identity (with all keys under them)."""

RUN_ID_EXCLUDED_NAMES: tuple[str, ...] = ("output_dir", "results_dir", "logging", "launcher", "progress")
"""Key names left out of the run identity wherever they occur."""

RUN_ID_LENGTH = 16

NUMERICS_VERSION = 2
"""Bumped by every change of the toolkit that alters what a run computes (part of every run identity,
so results from before such a change are recomputed, never reused). 2: the fidelity fixes of the
real adapters and samplers (LLaVA tiles, prompts, Dimple's projector, LLaDA's and LLaDA-V's rules)."""

RESULTS_SCHEMA_VERSION = 1
"""Bumped by every change of the result tables' layout (part of every run identity)."""

_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def file_fingerprint(paths) -> str:
    """sha256 (first 16 hex chars) over the names and contents of ``paths``.

    Each file's own digest is cached by (path, size, mtime), so a checkpoint is read once per
    process unless it changes; new weights at the same path give a new fingerprint.
    """
    h = hashlib.sha256()
    for f in sorted(Path(x) for x in paths):
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FINGERPRINTS:
            d = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    d.update(chunk)
            _FINGERPRINTS[key] = d.hexdigest()
        h.update(f.name.encode())
        h.update(_FINGERPRINTS[key].encode())
    return h.hexdigest()[:RUN_ID_LENGTH]


def _plain(obj: Any, path: str = "") -> Any:
    try:  # resolve OmegaConf containers without making omegaconf a hard dependency
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return 0.0 if obj == 0.0 else obj
    if isinstance(obj, PathLike):
        return str(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            key = str(k)
            if key in out:
                raise ValueError(f"config key {path + key!r} appears twice after converting keys to str")
            out[key] = _plain(v, f"{path}{key}.")
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, path) for v in obj]
    raise TypeError(f"config value at {path.rstrip('.') or '<root>'!r} has unsupported type {type(obj).__name__}")


def _drop_excluded(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in obj.items():
        path = prefix + k
        if path in RUN_ID_EXCLUDED_PATHS or k in RUN_ID_EXCLUDED_NAMES:
            continue
        out[k] = _drop_excluded(v, path + ".") if isinstance(v, dict) else v
    return out


def identity_config(config: Mapping) -> dict[str, Any]:
    """The plain config with output, launcher and logging keys removed: what defines a run."""
    plain = _plain(config)
    if not isinstance(plain, dict):
        raise TypeError("config must be a mapping")
    return _drop_excluded(plain)


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, no whitespace, ASCII, shortest float repr."""
    def fix(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return {"__float__": repr(o)}  # NaN/inf: standard JSON has no literal for them
        if isinstance(o, dict):
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o

    return json.dumps(fix(_plain(obj)), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def run_id(config: Mapping) -> str:
    """sha256 (first 16 hex chars) of the canonical JSON of the identity config."""
    return hashlib.sha256(canonical_json(identity_config(config)).encode("ascii")).hexdigest()[:RUN_ID_LENGTH]


def flatten_config(config: Mapping) -> dict[str, Any]:
    """The identity config as one flat dict: nested keys dotted, lists (and empty dicts) as canonical JSON."""
    flat: dict[str, Any] = {}

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for k, v in obj.items():
            key = prefix + k
            if isinstance(v, dict) and v:
                walk(v, key + ".")
                continue
            if isinstance(v, (list, dict)):
                v = canonical_json(v)
            if key in flat:
                raise ValueError(f"config key {key!r} collides with another after flattening")
            flat[key] = v

    walk(identity_config(config), "")
    return flat


def package_versions() -> dict[str, str]:
    """``version.*`` columns: python, redundancy, torch, transformers ('unknown' when absent)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    from .. import __version__

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return (
        ("version.python", platform.python_version()),
        ("version.redundancy", __version__),
        ("version.torch", dist("torch")),
        ("version.transformers", dist("transformers")),
    )


def code_revision(start: str | PathLike | None = None) -> str:
    """The git commit checked out above ``start`` (default: this package), read from ``.git``; else 'unknown'."""
    here = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        for d in (here, *here.parents):
            git = d / ".git"
            if git.is_file():  # worktree or submodule: "gitdir: <path>"
                text = git.read_text().strip()
                if not text.startswith("gitdir:"):
                    return "unknown"
                git = (d / text.split(":", 1)[1].strip()).resolve()
            if not git.is_dir():
                continue
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head or "unknown"
            ref = head.split(":", 1)[1].strip()
            common = git
            if (git / "commondir").is_file():
                common = (git / (git / "commondir").read_text().strip()).resolve()
            for base in (git, common):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip() or "unknown"
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
            return "unknown"
    except OSError:
        pass
    return "unknown"


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def make_run_row(
    config: Mapping,
    *,
    weights_hash: str = "unknown",
    created: str | None = None,
    code_rev: str | None = None,
    versions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One row of the runs table for ``config``: run_id, created, flattened config, versions, hashes."""
    flat = flatten_config(config)
    reserved = {c.name for c in RUNS_FIXED}
    clash = sorted(k for k in flat if k in reserved or k.startswith(VERSION_PREFIX))
    if clash:
        raise ValueError(f"config key(s) {clash} clash with fixed runs columns")
    vers = dict(package_versions() if versions is None else versions)
    bad = [k for k in vers if not k.startswith(VERSION_PREFIX)]
    if bad:
        raise ValueError(f"version key(s) {bad} must start with {VERSION_PREFIX!r}")
    return {
        "run_id": run_id(config),
        "created": created if created is not None else now_iso(),
        **flat,
        **{k: str(v) for k, v in vers.items()},
        "weights_hash": str(weights_hash),
        "code_revision": code_rev if code_rev is not None else code_revision(),
    }
