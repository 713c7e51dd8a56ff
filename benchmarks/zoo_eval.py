"""Accuracy of every zoo model per task type and number of sampling steps.

``python benchmarks/zoo_eval.py [--n-short 250] [--n-long 100] [--quick]``; the last lines are
``RESULT <model>.<task>.<metric>=<value>`` at the default sampler (2 tokens per step).
"""

from __future__ import annotations

import argparse

import torch

from redundancy.models import known_models, load_model
from redundancy.sampling import DiffusionSampler, SamplerConfig
from redundancy.tasks import ANSWER_LENGTH
from redundancy.zoo.evaluate import evaluate

HEADLINE = {"shapes_short": "exact_match", "shapes_long": "object_recall"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-short", type=int, default=250)
    ap.add_argument("--n-long", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="a few samples of one model, to keep the script alive")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    names = [n for n in known_models() if n.startswith("toy-")]
    n = {"shapes_short": args.n_short, "shapes_long": args.n_long}
    if args.quick:
        names, n = names[:1], {"shapes_short": 10, "shapes_long": 4}
    results = []
    print(f"{'model':16} {'task':13} {'steps':>5} {'metric':14} value")
    for name in names:
        model = load_model(name)
        for task, L in ANSWER_LENGTH.items():
            metric = HEADLINE[task]
            if model.family == "autoregressive":
                grid = [L]
            else:
                grid = sorted({L, L // 2, max(1, L // 4)}) if not args.quick else [L // 2]
            for steps in grid:
                sampler = None if model.family == "autoregressive" else DiffusionSampler(SamplerConfig(steps=steps))
                res = evaluate(model, task, n=n[task], sampler=sampler)
                print(f"{name:16} {task:13} {steps:5d} {metric:14} {res[metric]:.3f}")
                default = model.family == "autoregressive" or steps == L // 2
                if default:
                    results.append((name, task, metric, res[metric]))
                    for k, v in res.items():
                        if "/" in k and k.startswith(metric):
                            results.append((name, task, k.replace("/", "_"), v))
    for name, task, metric, v in results:
        print(f"RESULT {name}.{task}.{metric}={v:.4f}")


if __name__ == "__main__":
    main()
