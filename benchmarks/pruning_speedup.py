"""Wall-clock speedup of visual-token pruning and layer skipping against their analytic FLOPs speedup.

``python benchmarks/pruning_speedup.py [--repeats 3] [--batch 1] [--threads N] [--quick]``

On the CPU-scaled LLaDA-V-shaped random model (729 visual tokens, hidden 512, 8 layers; answer 64
tokens in 32 steps) one run times a generation of every case: unpruned, FastV at K=2 keeping 50% /
25% (decided once at step 0, applied from the input at later steps), VTW (every visual token
withdrawn after layer K = depth/2) and skipping the 2 middle layers. The prompt (vision tower
included) is built once, outside the timings. Each case gets one untimed warm-up generation (with a
:class:`CostProbe` attached, for the analytic FLOPs), then ``--repeats`` timed rounds run the cases
in turn (interleaved, so background load hits every case alike); the median is kept.

``flops speedup = FLOPs(unpruned) / FLOPs(case)`` and ``wall speedup = time(unpruned) / time(case)``;
the last lines are ``RESULT speedup_over_flops.<case>=<wall speedup / flops speedup>`` (1 means the
saved FLOPs turn fully into saved time).
"""

from __future__ import annotations

import argparse

from _common import (
    add_threads_arg, describe_threads, median, print_results, random_llama, random_prompt, set_threads, timed,
)

import torch  # noqa: E402  (after _common, which puts the repository on sys.path)

from redundancy.generate import generate_from_prompt  # noqa: E402
from redundancy.policies import make_policy  # noqa: E402
from redundancy.probes import CostProbe, forward_flops  # noqa: E402
from redundancy.sampling import DiffusionSampler, SamplerConfig  # noqa: E402


def cases(depth: int) -> dict[str, tuple[dict | None, dict | None]]:
    """Case name -> (prune config, skip config); ``None`` for both is the unpruned baseline."""
    once = dict(schedule="once", step=0)
    return {
        "unpruned": (None, None),
        "fastv_r0.5": (dict(method="fastv", layer=2, ratio=0.5, persist_from="input", **once), None),
        "fastv_r0.25": (dict(method="fastv", layer=2, ratio=0.25, persist_from="input", **once), None),
        # VTW keeps every visual token below K at every step, so the kept (empty) set applies from layer K
        f"vtw_k{depth // 2}": (dict(method="vtw", layer=depth // 2, persist_from="layer_k", **once), None),
        "skip2_middle": (None, dict(n=2, position="middle")),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds over all cases (median kept)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 1 round: keeps the script alive in seconds")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        answer, steps, repeats = 8, 4, 1
    else:
        answer, steps, repeats = 64, 32, args.repeats
    torch.manual_seed(0)
    model = random_llama(args.quick)
    prompt = random_prompt(model, args.batch, answer)
    sampler = DiffusionSampler(SamplerConfig(steps=steps))
    depth = model.num_layers
    table = cases(depth)
    print(f"model: random-llama hidden {model.config.hidden}, {depth} layers, {prompt.n_visual} visual tokens, "
          f"seq {prompt.seq_len}; answer {answer} in {steps} steps, batch {args.batch}; {describe_threads()}",
          flush=True)

    def run(name: str, listeners=()):
        prune, skip = table[name]
        return generate_from_prompt(model, prompt, sampler, make_policy(prune, skip), listeners)

    flops: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for name in table:  # warm-up, and the analytic cost of each case
        probe = CostProbe()
        gen = run(name, [probe])
        recount = sum(forward_flops(model, ex, head_rows=answer) for ex in gen.tokens_executed)
        if abs(recount - probe.total_flops) > 1e-6 * probe.total_flops:
            raise RuntimeError(f"{name}: CostProbe FLOPs {probe.total_flops:.4g} != recount {recount:.4g}")
        flops[name] = probe.total_flops
        tokens[name] = probe.total_tokens_executed / (len(probe.passes) * depth)

    times: dict[str, list[float]] = {name: [] for name in table}
    for r in range(repeats):
        for name in table:
            dt, _ = timed(lambda: run(name))
            times[name].append(dt)
        print(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)

    base_t, base_f = median(times["unpruned"]), flops["unpruned"]
    print(f"\n{'case':14} {'tokens/layer':>12} {'GFLOPs/gen':>11} {'flops x':>8} {'median s':>9} {'wall x':>7} "
          f"{'wall/flops':>10}")
    results = []
    for name in table:
        t = median(times[name])
        fx, wx = base_f / flops[name], base_t / t
        print(f"{name:14} {tokens[name]:12.1f} {flops[name] / 1e9:11.2f} {fx:8.3f} {t:9.3f} {wx:7.3f} {wx / fx:10.3f}")
        if name != "unpruned":
            results.append((f"speedup_over_flops.{name}", wx / fx))
    print("(FLOPs per sample: matrix products of the decoder layers and the LM head; tokens/layer: mean live "
          "tokens per executed layer slot, 0 for skipped layers)")
    print_results(results)


if __name__ == "__main__":
    main()
