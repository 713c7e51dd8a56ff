"""Reading a real model's checkpoint directory: config, safetensors shards and tokenizer files.

Every format problem raises :class:`CheckpointError` (a ``ValueError``) naming the file and key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from safetensors import safe_open
from torch import Tensor

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory does not have the format its model publishes."""


def read_config(path: str | Path) -> dict:
    """``config.json`` of a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"missing {f}: every checkpoint directory needs its config.json")
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from e
    pre = path / "preprocessor_config.json"  # the image processor's own settings, where a checkpoint has them
    if pre.is_file():
        try:
            cfg["preprocessor_config"] = json.loads(pre.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{pre} is not valid JSON: {e}") from e
    return cfg


def require(config: Mapping, keys: Iterable[str], where: str | Path) -> None:
    """Raise naming the config file and the missing fields."""
    missing = [k for k in keys if k not in config]
    if missing:
        raise CheckpointError(f"{where}: config is missing field(s) {missing}")


class Weights:
    """Lazy access to the tensors of a checkpoint (one file or shards listed by an index)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index, single = self.path / INDEX, self.path / SINGLE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from e
            shards = sorted(set(weight_map.values()))
            for s in shards:
                if not (self.path / s).is_file():
                    raise CheckpointError(f"missing shard {self.path / s} (listed in {index})")
            self.where = {k: self.path / v for k, v in weight_map.items()}
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self.where = {k: single for k in f.keys()}
        else:
            raise CheckpointError(f"no weights in {self.path}: expected {SINGLE} or {INDEX} with its shards")
        self.used: set[str] = set()

    def keys(self) -> list[str]:
        return sorted(self.where)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str, dtype: torch.dtype | None = None) -> Tensor:
        """One tensor by its checkpoint key."""
        if key not in self.where:
            near = [k for k in self.where if k.split(".")[-1] == key.split(".")[-1]][:3]
            hint = f"; keys with the same ending: {near}" if near else ""
            raise CheckpointError(f"{self.path}: missing weight {key!r}{hint}")
        f = self.where[key]
        with safe_open(str(f), framework="pt") as h:
            if key not in h.keys():
                raise CheckpointError(f"{f}: weight {key!r} is listed in the index but not in this shard")
            t = h.get_tensor(key)
        self.used.add(key)
        return t if dtype is None else t.to(dtype)

    def load_into(self, module: torch.nn.Module, mapping: Mapping[str, str], dtype: torch.dtype) -> None:
        """Copy ``checkpoint key -> module parameter name`` into ``module``, checking every shape."""
        params = dict(module.state_dict(keep_vars=True))
        todo = set(params)
        for src, dst in mapping.items():
            if dst not in params:
                raise CheckpointError(f"internal mapping names unknown parameter {dst!r} for {src!r}")
            if src not in self.where:
                self.get(src)  # raises, naming the key
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for src, dst in mapping.items():
            by_file.setdefault(self.where[src], []).append((src, dst))
        for f, pairs in by_file.items():  # each shard opened once
            with safe_open(str(f), framework="pt") as h:
                present = set(h.keys())
                for src, dst in pairs:
                    if src not in present:
                        raise CheckpointError(f"{f}: weight {src!r} is listed in the index but not in this shard")
                    self._copy(src, h.get_tensor(src), params[dst], dtype)
                    todo.discard(dst)
        left = sorted(todo)
        if left:
            raise CheckpointError(f"{self.path}: no checkpoint weight for {left[:5]}")

    def _copy(self, src: str, t: Tensor, param: Tensor, dtype: torch.dtype) -> None:
        """Copy one checkpoint tensor into a parameter of the same shape."""
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{self.where[src]}: weight {src!r} has shape {tuple(t.shape)}, but the config implies "
                f"{tuple(param.shape)} (check config.json)"
            )
        with torch.no_grad():
            param.copy_(t.to(dtype))
        self.used.add(src)

    def unused(self, ignore: Sequence[str] = ()) -> list[str]:
        """Checkpoint keys that no part of the adapter read (excluding prefixes in ``ignore``)."""
        return [k for k in self.keys() if k not in self.used and not any(k.startswith(p) for p in ignore)]


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"bfloat16"``, ``"float16"`` (or a torch dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in valid:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(valid)}")
    return valid[dtype]
