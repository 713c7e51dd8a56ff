"""Main job: ``python -m experiments.run [model=...] [task=...] [policy=...] [+sweep=<name>]``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from redundancy.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from redundancy.experiment import run

    try:
        table = run(cfg)
    except ValueError as e:  # bad input: one clear line, non-zero exit, nothing written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.print_answers and len(table) <= 12:
        cols = ["sample_id", "answer", "reference"]
        print(table[cols].to_string(index=False))


if __name__ == "__main__":
    main()
