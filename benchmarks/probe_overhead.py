"""Overhead of the visual attention probe: generation time with it on every layer and step / without.

``python benchmarks/probe_overhead.py [--repeats-zoo 8] [--repeats-large 3] [--threads N] [--quick]``

Two models, each in one run with the plain and probed generations interleaved (ABBA order, so a
drift in background load cancels); the ratio of the median times is kept:

(a) zoo-sized: ``toy-scratch`` when its weights load, else ``random-llama`` at the default
    ToyConfig (81 visual tokens, hidden 128, 4 layers); shapes_long-like answer of 32 tokens in 16
    steps, batch 8;
(b) the CPU-scaled LLaDA-V-shaped random model (729 visual tokens, hidden 512, 8 layers); answer
    64 tokens in 32 steps, batch 1.

The probe is ``VisualAttentionProbe()`` (every layer, every step, head-averaged, no importance).
Prompts (vision tower included) are built once, outside the timings. The last lines are
``RESULT probe_overhead.zoo=<ratio>`` and ``RESULT probe_overhead=<ratio of model (b)>``.
"""

from __future__ import annotations

import argparse

from _common import (
    add_threads_arg, describe_threads, median, print_results, random_llama, random_prompt, set_threads, timed,
)

import torch  # noqa: E402  (after _common, which puts the repository on sys.path)

from redundancy.generate import generate_from_prompt  # noqa: E402
from redundancy.models import load_model  # noqa: E402
from redundancy.probes import VisualAttentionProbe  # noqa: E402
from redundancy.sampling import DiffusionSampler, SamplerConfig  # noqa: E402


def zoo_model():
    """``toy-scratch`` if its weights are there and load, else a random model of the zoo's default size."""
    try:
        return load_model("toy-scratch")
    except (ValueError, OSError, RuntimeError) as e:  # not shipped (yet), or half written by a training run
        print(f"toy-scratch not loaded ({str(e).splitlines()[0][:80]}); using random-llama at the default ToyConfig")
        return load_model("random-llama")


def measure(label: str, model, batch: int, answer: int, steps: int, repeats: int) -> float:
    """Median probed time / median plain time, with one warm-up of each and ``repeats`` ABBA pairs."""
    prompt = random_prompt(model, batch, answer)
    sampler = DiffusionSampler(SamplerConfig(steps=steps))
    print(f"[{label}] {model.name}: hidden {model.config.hidden}, {model.num_layers} layers, {prompt.n_visual} "
          f"visual tokens, seq {prompt.seq_len}; answer {answer} in {steps} steps, batch {batch}", flush=True)

    def plain():
        return generate_from_prompt(model, prompt, sampler)

    def probed():
        probe = VisualAttentionProbe()
        generate_from_prompt(model, prompt, sampler, listeners=[probe])
        return probe

    plain()
    probe = probed()
    layers_seen = {(r["step"], r["layer"]) for r in probe.rows}
    if len(layers_seen) != steps * model.num_layers:
        raise RuntimeError(f"the probe saw {len(layers_seen)} (step, layer) pairs, expected {steps * model.num_layers}")
    times: dict[str, list[float]] = {"plain": [], "probe": []}
    pair_ratios = []
    for r in range(repeats):
        order = (("plain", plain), ("probe", probed)) if r % 2 == 0 else (("probe", probed), ("plain", plain))
        for name, fn in order:
            times[name].append(timed(fn)[0])
        pair_ratios.append(times["probe"][-1] / times["plain"][-1])
        print(f"[{label}] pair {r + 1}/{repeats}: plain {times['plain'][-1]:.3f}s probe {times['probe'][-1]:.3f}s",
              flush=True)
    tp, tq = median(times["plain"]), median(times["probe"])
    ratio = tq / tp
    print(f"[{label}] median plain {tp:.3f}s, probe {tq:.3f}s -> overhead ratio {ratio:.3f} "
          f"(median of paired ratios {median(pair_ratios):.3f}; {len(probe.rows)} rows per generation)", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats-zoo", type=int, default=8, help="timed plain/probed pairs on the zoo-sized model")
    ap.add_argument("--repeats-large", type=int, default=3, help="timed pairs on the LLaDA-V-shaped model")
    ap.add_argument("--quick", action="store_true", help="small shapes, 1 pair: keeps the script alive in seconds")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    print(describe_threads(), flush=True)
    if args.quick:
        zoo = measure("zoo", zoo_model(), batch=2, answer=8, steps=4, repeats=1)
        large = measure("llada-v", random_llama(quick=True), batch=1, answer=8, steps=4, repeats=1)
    else:
        zoo = measure("zoo", zoo_model(), batch=8, answer=32, steps=16, repeats=args.repeats_zoo)
        large = measure("llada-v", random_llama(quick=False), batch=1, answer=64, steps=32, repeats=args.repeats_large)
    print(f"\nprobe overhead (probed / plain generation time): zoo {zoo:.3f}, LLaDA-V-shaped {large:.3f}")
    print_results([("probe_overhead.zoo", zoo), ("probe_overhead", large)])


if __name__ == "__main__":
    main()
