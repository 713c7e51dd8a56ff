"""GPU smoke test: one model-sized forward and a short pruned generation on CUDA, random weights.

    python benchmarks/gpu_smoke.py                   # LLaDA-V-sized decoder, bf16, on cuda (< 5 min)
    python benchmarks/gpu_smoke.py --device cpu --tiny   # the same code path in seconds (CI)

The decoder has LLaDA-V's language-model shape (32 layers, width 4096, 32 heads, MLP 12288) with
729 visual tokens (27 x 27 patches, one SigLIP tile); the weights are created directly in bf16 on
the device. It checks that the engine, a pruning policy (FastV, K=2, keep 25%) and the sampler run
there with finite logits, and prints times, tokens executed and peak memory as RESULT lines.
"""

from __future__ import annotations

import argparse
import time

from _common import print_results

import torch  # noqa: E402  (after _common puts the repository on the path)

LLADA_V_SIZE = dict(image_size=378, patch_size=14, vision_hidden=64, vision_layers=1, vision_heads=2,
                    vision_intermediate=128, hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=12288,
                    question_len=10, rope_theta=500000.0)
TINY = dict(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
            hidden=64, layers=4, heads=4, kv_heads=4, intermediate=128, question_len=10)


def build(tiny: bool, device: str, dtype: torch.dtype):
    """The random-weight model, created in ``dtype`` on ``device`` (no CPU copy of the weights)."""
    from redundancy.models.toy import ToyConfig, ToyDMLLM
    from redundancy.tasks.shapes import VOCAB

    sizes = TINY if tiny else LLADA_V_SIZE
    cfg = ToyConfig(decoder="llama", family="from_scratch", logit_shift=0, words=list(VOCAB), **sizes)
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = ToyDMLLM(cfg, name="gpu-smoke")
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="a small decoder: the same code path in seconds")
    ap.add_argument("--answer-length", type=int, default=32)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU; run with --device cpu --tiny")
    from redundancy.engine import Engine
    from redundancy.generate import generate_from_prompt
    from redundancy.policies import make_policy
    from redundancy.sampling import DiffusionSampler, SamplerConfig

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = build(args.tiny, args.device, dtype)
    sync(args.device)
    t_build = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.lm.parameters())
    g = torch.Generator().manual_seed(0)
    size = model.config.image_size
    prompt = model.build_prompt([torch.rand(3, size, size, generator=g)], ["describe the image ."], args.answer_length)
    print(f"decoder parameters {n_params / 1e9:.2f} B, {prompt.n_visual} visual tokens, sequence {prompt.seq_len}, "
          f"{args.dtype} on {args.device}", flush=True)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    eng = Engine(model)
    eng.forward(prompt, prompt.input_ids)  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    out = eng.forward(prompt, prompt.input_ids)
    sync(args.device)
    t_forward = time.perf_counter() - t0
    if not torch.isfinite(out.logits).all():
        raise SystemExit("non-finite logits in the full forward")
    sampler = DiffusionSampler(SamplerConfig(steps=args.answer_length // 2))
    policy = make_policy(prune={"method": "fastv", "layer": 2, "ratio": 0.25})
    t0 = time.perf_counter()
    gen = generate_from_prompt(model, prompt, sampler, policy=policy)
    sync(args.device)
    t_gen = time.perf_counter() - t0
    if (gen.trajectory.tokens == prompt.mask_id).any():
        raise SystemExit("the pruned generation left masked slots")
    executed = sum(sum(x) for x in gen.tokens_executed)
    full = prompt.seq_len * model.num_layers * len(gen.tokens_executed)
    print(f"answer: {gen.texts[0]!r}")
    results = [("gpu_smoke.build_s", t_build), ("gpu_smoke.forward_s", t_forward),
               ("gpu_smoke.pruned_generation_s", t_gen), ("gpu_smoke.tokens_executed_ratio", executed / full)]
    if args.device.startswith("cuda"):
        results.append(("gpu_smoke.peak_memory_gib", torch.cuda.max_memory_allocated() / 2**30))
    print_results(results)


if __name__ == "__main__":
    main()
