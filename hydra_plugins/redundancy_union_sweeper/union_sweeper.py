"""A Hydra sweeper (shipped by dmllm-redundancy as a Hydra plugin) that runs the union of several cartesian grids (``hydra/sweeper: union``).

Hydra's basic sweeper expands one cartesian product; a study needs several (a pruning grid plus its
baselines, or every grid a set of figures needs). Each entry of ``grids`` is a mapping of
override -> comma-separated values, expanded like the basic sweeper; ``params`` apply to every
grid; identical jobs are launched once, in order of first appearance. A command-line override
replaces the sweep's values of its key and of every key below it: ``model=llada-v`` drops the
sweep's ``model.name`` list, so any sweep runs on the model given on the command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class UnionSweeperConf:
    _target_: str = "hydra_plugins.redundancy_union_sweeper.union_sweeper.UnionSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grids: List[Dict[str, Any]] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="union", node=UnionSweeperConf, provider="dmllm-redundancy")


class UnionSweeper(BasicSweeper):
    """Launches the union of the cartesian products of ``grids`` (each combined with ``params``)."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 grids: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = [{k: str(v) for k, v in dict(g).items()} for g in (grids or [{}])] or [{}]

    def jobs(self, arguments: List[str]) -> List[List[str]]:
        """Every job's overrides, deduplicated, in order."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        given = [o.get_key_element().lstrip("+~") for o in parser.parse_overrides(list(arguments))]

        def shadowed(key: str) -> bool:
            key = key.lstrip("+~")
            return any(key == g or key.startswith(g + ".") for g in given)

        seen, out = set(), []
        for grid in self.grids:
            merged = {k: v for k, v in {**(self.params or {}), **grid}.items() if not shadowed(k)}
            conf = [f"{k}={v}" for k, v in merged.items()] + list(arguments)
            for job in self.split_arguments(parser.parse_overrides(conf), None)[0]:
                key = tuple(job)
                if key not in seen:
                    seen.add(key)
                    out.append(job)
        return out

    def sweep(self, arguments: List[str]) -> Any:
        jobs = self.jobs(arguments)
        n = self.max_batch_size or len(jobs) or 1
        self.overrides = [jobs[i: i + n] for i in range(0, len(jobs), n)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        from redundancy import experiment

        experiment.start_sweep(len(jobs))
        returns, idx = [], 0
        try:
            while not self.is_done():
                # no up-front validation of every job's config (the basic sweeper's costs ~50 ms a
                # job): each job composes and validates its own config when it is launched
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=idx)
                for r in results:
                    _ = r.return_value  # re-raises a job's exception
                idx += len(batch)
                returns.append(results)
        finally:
            experiment.end_sweep()
        return returns
