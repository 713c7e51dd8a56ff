"""The union-of-grids sweeper of dmllm-redundancy (``hydra/sweeper: union``)."""

from .union_sweeper import UnionSweeper, UnionSweeperConf

__all__ = ["UnionSweeper", "UnionSweeperConf"]
