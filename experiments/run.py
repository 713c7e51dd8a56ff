"""Main job: ``python -m experiments.run [model=...] [task=...] [sampler=...] [n_samples=...]``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from redundancy.experiment import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        table = run(cfg)
    except ValueError as e:  # bad input: one clear line, non-zero exit, nothing written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    with __import__("pandas").option_context("display.width", 160, "display.max_colwidth", 60):
        print(table[["sample_id", "question", "answer", "reference", *table.attrs["metrics"]]].to_string(index=False))
        means = table[table.attrs["metrics"]].mean()
        print("mean " + "  ".join(f"{k}={v:.3f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
