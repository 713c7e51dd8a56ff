"""Samplers on rigged logits (exact commit order) and end-to-end on both tiny models."""

from __future__ import annotations

import pytest
import torch

from redundancy.generate import generate
from redundancy.sampling import (
    AutoregressiveSampler,
    DiffusionSampler,
    SamplerConfig,
    fallback_count,
    transfer_counts,
)
from tests.conftest import QUESTIONS, images

MASK, END, V = 1, 2, 12


class Rigged:
    """Logits source where slot i predicts token ``target[i]`` with probability set by ``strength[i]``."""

    def __init__(self, target, strength, second=None):
        self.target = torch.as_tensor(target)
        self.strength = torch.as_tensor(strength, dtype=torch.float)
        self.second = second
        self.calls = []

    def __call__(self, x, step):
        self.calls.append((step, x.clone()))
        L = x.shape[1]
        logits = torch.zeros(x.shape[0], L, V)
        logits[:, torch.arange(L), self.target] = self.strength
        if self.second is not None:
            logits[:, torch.arange(L), (self.target + 1) % V] = torch.as_tensor(self.second, dtype=torch.float)
        return logits


def order_of(traj):
    """The slot sets committed at each step."""
    return [sorted(r.committed[0].nonzero().squeeze(1).tolist()) for r in traj.steps]


def test_transfer_counts():
    assert transfer_counts(10, 4) == [3, 3, 2, 2]
    assert transfer_counts(4, 2) == [2, 2]
    assert sum(transfer_counts(7, 3)) == 7


def _reference_schedule(n, steps, sigma):
    """Cumulative counts floor(sigma(k / S) * n) by plain float arithmetic, at least one per step."""
    s = min(steps, n)
    cum = [int(sigma(k / s) * n) for k in range(s + 1)]
    return [c1 - c0 for c0, c1 in zip(cum, cum[1:])]


@pytest.mark.parametrize("schedule", ["shift", "cosine", "logit_normal"])
@pytest.mark.parametrize("n, steps", [(16, 8), (64, 32), (32, 32), (5, 8), (128, 48), (7, 3)])
def test_non_uniform_schedules(schedule, n, steps):
    counts = transfer_counts(n, steps, schedule)
    assert sum(counts) == n and len(counts) == min(steps, n) and min(counts) >= 1
    if schedule == "shift":  # concave: the count per step never falls much, late steps commit more
        assert counts[-1] >= counts[0]
    else:  # S-shaped: symmetric up to rounding, largest in the middle
        assert max(counts) >= max(counts[0], counts[-1])


def test_shift_schedule_by_hand():
    # sigma(t) = 3t / (1 + 2t) on t = k/8, times 16: 0, 4.8, 8, 10.3, 12, 13.3, 14.4, 15.3, 16
    # -> increments 4 4 2 2 1 1 1 1, committed in reverse (few first, many last)
    assert transfer_counts(16, 8, "shift") == [1, 1, 1, 1, 2, 2, 4, 4]
    assert transfer_counts(16, 8, "shift", shift=1.0) == transfer_counts(16, 8) == [2] * 8
    ref = _reference_schedule(100, 10, lambda t: 3 * t / (1 + 2 * t))
    assert transfer_counts(100, 10, "shift") == ref[::-1]
    # more steps than tokens: one token per step, the surplus steps dropped
    assert transfer_counts(3, 8, "shift") == [1, 1, 1]
    # an excess from the one-per-step floor is taken from the first multi-token increments
    assert transfer_counts(8, 8, "cosine") == [1] * 8
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        transfer_counts(4, 2, "exp")


def test_dream_schedule_by_hand():
    # t = linspace(1, 0.001, 9): step 0 commits int(16 * 0.1249) = 1, then int(15 * 0.1427) = 2, ...
    assert transfer_counts(16, 8, "dream") == [1, 2, 2, 2, 2, 2, 2, 3]
    # one step per token: the first step commits int(8 * 0.1249) = 0, the last one two
    assert transfer_counts(8, 8, "dream") == [0, 1, 1, 1, 1, 1, 1, 2]
    assert transfer_counts(5, 1, "dream") == [5]


def test_sampler_follows_the_schedule():
    src = Rigged(target=list(range(3, 11)) * 2, strength=list(range(16, 0, -1)))
    x = torch.full((1, 16), MASK)
    traj = DiffusionSampler(strategy="low_confidence", steps=8, schedule="shift").generate(src, x, MASK)
    assert [len(c) for c in order_of(traj)] == [1, 1, 1, 1, 2, 2, 4, 4]
    assert order_of(traj)[:2] == [[0], [1]]  # the most confident slots first
    blocks = DiffusionSampler(strategy="low_confidence", steps=8, block_length=8, schedule="shift").generate(
        Rigged(target=[4] * 16, strength=[1.0] * 16), x, MASK)
    assert [len(c) for c in order_of(blocks)] == [1, 1, 2, 4] * 2  # per block: 8 tokens over 4 steps
    few = DiffusionSampler(steps=8, schedule="shift").generate(Rigged([4] * 3, [1.0] * 3), x[:, :3], MASK)
    assert [len(c) for c in order_of(few)] == [1, 1, 1] and few.n_forward == 3  # more steps than tokens


def test_low_confidence_commits_most_confident_first():
    src = Rigged(target=[5, 6, 7, 8, 9, 10], strength=[1, 6, 2, 5, 3, 4])
    x = torch.full((1, 6), MASK)
    traj = DiffusionSampler(strategy="low_confidence", steps=3).generate(src, x, MASK)
    assert order_of(traj) == [[1, 3], [4, 5], [0, 2]]
    assert traj.tokens.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert traj.n_forward == 3 == len(src.calls)
    assert [c[0] for c in src.calls] == [0, 1, 2]


def test_blocks_never_commit_outside_current_block():
    src = Rigged(target=[5, 6, 7, 8, 9, 10], strength=[1, 2, 3, 6, 5, 4])
    x = torch.full((1, 6), MASK)
    traj = DiffusionSampler(strategy="low_confidence", steps=4, block_length=3).generate(src, x, MASK)
    # block 0 = slots 0..2 in 2 steps (2 then 1), block 1 = slots 3..5 (2 then 1), global step index
    assert order_of(traj) == [[1, 2], [0], [3, 4], [5]]
    assert [r.step for r in traj.steps] == [0, 1, 2, 3]
    assert [r.block for r in traj.steps] == [0, 0, 1, 1]
    for r in traj.steps:
        lo = 3 * r.block
        assert not r.committed[0, :lo].any() and not r.committed[0, lo + 3:].any()


def test_topk_margin_ranks_by_margin_not_probability():
    # slot 0 has the highest top-1 logit but a close second; slot 1 a clear margin
    src = Rigged(target=[5, 6], strength=[5.0, 3.0], second=[4.9, 0.0])
    x = torch.full((1, 2), MASK)
    traj = DiffusionSampler(strategy="topk_margin", steps=2).generate(src, x, MASK)
    assert order_of(traj) == [[1], [0]]
    low = DiffusionSampler(strategy="low_confidence", steps=2).generate(Rigged([5, 6], [5.0, 3.0], [4.9, 0.0]), x, MASK)
    assert order_of(low) == [[1], [0]] or order_of(low) == [[0], [1]]


def test_entropy_prefers_peaked_distribution():
    src = Rigged(target=[5, 6, 7], strength=[2.0, 8.0, 4.0])
    traj = DiffusionSampler(strategy="entropy", steps=3).generate(src, torch.full((1, 3), MASK), MASK)
    assert order_of(traj) == [[1], [2], [0]]


def test_random_is_seeded():
    x = torch.full((1, 6), MASK)
    a = DiffusionSampler(strategy="random", steps=6, seed=3).generate(Rigged([5] * 6, [1] * 6), x, MASK)
    b = DiffusionSampler(strategy="random", steps=6, seed=3).generate(Rigged([5] * 6, [1] * 6), x, MASK)
    c = DiffusionSampler(strategy="random", steps=6, seed=4).generate(Rigged([5] * 6, [1] * 6), x, MASK)
    assert order_of(a) == order_of(b)
    assert order_of(a) != order_of(c)


def test_threshold_commits_all_confident_at_least_one():
    # slots 0 and 2 are very confident, 1 and 3 are not
    src = Rigged(target=[5, 6, 7, 8], strength=[12.0, 1.0, 11.0, 2.0])
    traj = DiffusionSampler(strategy="threshold", threshold=0.9).generate(src, torch.full((1, 4), MASK), MASK)
    assert order_of(traj)[0] == [0, 2]
    assert order_of(traj)[1:] == [[3], [1]]  # one at a time, most confident first
    assert traj.n_forward == 3


def test_threshold_dimple_fallback_and_last_step():
    # nothing confident: Dimple's fallback commits 1, 1, then the 2 left (its time grid), by confidence
    src = Rigged(target=[5, 6, 7, 8], strength=[1.0, 4.0, 2.0, 3.0])
    x = torch.full((1, 4), MASK)
    traj = DiffusionSampler(strategy="threshold", threshold=0.9, steps=4, threshold_fallback="schedule").generate(
        src, x, MASK)
    assert order_of(traj) == [[1], [3], [0, 2]]
    assert fallback_count(4, 4, 0, 4) == 1 and fallback_count(3, 4, 1, 4) == 1 and fallback_count(2, 4, 2, 4) == 2
    # two confident slots pass first; the last of 2 steps commits everything left
    src = Rigged(target=[5, 6, 7, 8], strength=[12.0, 1.0, 11.0, 2.0])
    traj = DiffusionSampler(strategy="threshold", threshold=0.9, steps=2, threshold_fallback="schedule").generate(
        src, x, MASK)
    assert order_of(traj) == [[0, 2], [1, 3]]
    assert traj.tokens.tolist() == [[5, 6, 7, 8]]


def _dimple_reference(logits_of, L, steps, threshold):
    """Dimple's confident decoding for one sequence, written from its description: the committed slot sets."""
    t = torch.linspace(1, 1e-3, steps + 1)
    x = torch.full((L,), MASK)
    order = []
    for i in range(steps):
        masked = (x == MASK).nonzero().flatten()
        if not len(masked):
            break
        probs = torch.softmax(logits_of(x)[masked], -1)
        conf, tok = probs.max(-1)
        chosen = torch.ones_like(conf, dtype=torch.bool) if i == steps - 1 else conf > threshold
        if not chosen.any():
            r = torch.tensor(len(masked) / L, dtype=torch.float32)
            j = max(int((t < r).nonzero().min()), i + 1)
            while True:
                k = int(len(masked) * (1 - t[j] / r)) if j < steps else len(masked)
                if k >= 1:
                    break
                j += 1
            chosen[conf.topk(k).indices] = True
        x[masked[chosen]] = tok[chosen]
        order.append(sorted(masked[chosen].tolist()))
    return order


@pytest.mark.parametrize("seed", range(6))
def test_threshold_dimple_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    L, steps = 8, 8
    table = torch.randn(L, V, generator=g) * 3
    table[:, MASK] = -1e4  # never predict the mask itself

    def logits_of(x):  # slot logits shift with the number of committed slots, as a model's would
        return table + 0.7 * (x != MASK).sum()

    want = _dimple_reference(logits_of, L, steps, 0.6)
    traj = DiffusionSampler(strategy="threshold", threshold=0.6, steps=steps, threshold_fallback="schedule").generate(
        lambda x, step: logits_of(x[0]).unsqueeze(0), torch.full((1, L), MASK), MASK)
    assert order_of(traj) == want
    assert sum(map(len, want)) == L


def test_suppress_end_decides_content_first():
    # slots 2, 3 predict <end> very confidently; content slots 0, 1 are unsure
    src = Rigged(target=[5, 6, END, END], strength=[2.0, 3.0, 9.0, 9.0])
    x = torch.full((1, 4), MASK)
    plain = DiffusionSampler(steps=2).generate(src, x, MASK, end_ids=[END])
    assert order_of(plain) == [[2, 3], [0, 1]]
    held = DiffusionSampler(steps=2, suppress_end=True).generate(src, x, MASK, end_ids=[END])
    assert order_of(held) == [[0, 1], [2, 3]]


def test_temperature_zero_deterministic_and_sampling_seeded():
    src = Rigged(target=[5, 6, 7, 8], strength=[0.5, 0.4, 0.3, 0.2])
    x = torch.full((1, 4), MASK)
    a = DiffusionSampler(steps=2, temperature=0).generate(src, x, MASK)
    b = DiffusionSampler(steps=2, temperature=0).generate(src, x, MASK)
    assert torch.equal(a.tokens, b.tokens)
    s1 = DiffusionSampler(steps=2, temperature=5.0, seed=1).generate(src, x, MASK)
    s2 = DiffusionSampler(steps=2, temperature=5.0, seed=1).generate(src, x, MASK)
    assert torch.equal(s1.tokens, s2.tokens)


def test_autoregressive_left_to_right_and_stops():
    src = Rigged(target=[5, 6, END, 7], strength=[3, 3, 3, 3])
    traj = AutoregressiveSampler().generate(src, torch.full((1, 4), MASK), MASK, end_ids=[END])
    assert order_of(traj) == [[0], [1], [2]]
    assert traj.tokens.tolist() == [[5, 6, END, END]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps must be >= 1"),
        (dict(block_length=3), "block_length 3 must be >= 1 and divide"),
        (dict(steps=3, block_length=2), "not divisible by the number of blocks 2"),
        (dict(strategy="threshold", threshold=1.5), r"threshold must be in \(0, 1\]"),
        (dict(strategy="threshold", threshold=0.0), r"threshold must be in \(0, 1\]"),
        (dict(strategy="confident"), "unknown strategy 'confident'; choose one of: low_confidence"),
        (dict(schedule="exp"), "unknown schedule 'exp'; choose one of: linear, shift, cosine, logit_normal, dream"),
        (dict(schedule="shift", schedule_shift=0.0), "schedule_shift must be > 0, got 0.0"),
        (dict(strategy="threshold", threshold_fallback="dimple"),
         "unknown threshold_fallback 'dimple'; choose one of: one, schedule"),
        (dict(strategy="threshold", threshold_fallback="schedule", steps=3, block_length=2),
         "not divisible by the number of blocks 2"),
    ],
)
def test_bad_sampler_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs).resolve(4)


def test_bad_settings_fail_before_compute(tiny):
    calls = []
    orig = tiny.encode_images
    tiny.encode_images = lambda *a: calls.append(1) or orig(*a)
    try:
        with pytest.raises(ValueError, match="divide the answer length"):
            generate(tiny, images(1), QUESTIONS[:1], 4, DiffusionSampler(block_length=3))
    finally:
        del tiny.encode_images
    assert calls == []


@pytest.mark.parametrize(
    "cfg",
    [
        dict(strategy="low_confidence"),
        dict(strategy="random"),
        dict(strategy="topk_margin", block_length=2, steps=4),
        dict(strategy="entropy", suppress_end=True),
        dict(strategy="threshold", threshold=0.5),
        dict(strategy="threshold", threshold=0.99, threshold_fallback="schedule", block_length=2, steps=4),
        dict(strategy="low_confidence", prefix_cache=True),
        dict(strategy="topk_margin", temperature=0.7, seed=2),
    ],
)
def test_every_sampler_runs_end_to_end(tiny, cfg):
    gen = generate(tiny, images(2), QUESTIONS[:2], 4, DiffusionSampler(**cfg))
    toks = gen.trajectory.tokens
    assert toks.shape == (2, 4)
    assert not (toks == tiny.tokenizer.mask_id).any()
    assert len(gen.texts) == 2
    # every slot committed exactly once
    total = sum(r.committed.long() for r in gen.trajectory.steps)
    assert torch.equal(total, torch.ones_like(total))


def test_autoregressive_end_to_end(tiny_qwen2):
    gen = generate(tiny_qwen2, images(2), QUESTIONS[:2], 4, AutoregressiveSampler(stop_at_end=False))
    assert gen.trajectory.n_forward == 4
    assert not (gen.trajectory.tokens == tiny_qwen2.tokenizer.mask_id).any()


def test_autoregressive_needs_shifted_model(tiny_llama):
    with pytest.raises(ValueError, match="logit shift 1"):
        generate(tiny_llama, images(1), QUESTIONS[:1], 4, AutoregressiveSampler())


# -- rules of the original samplers (issue 15) ------------------------------------------------------
def test_cap_steps_runs_at_most_one_step_per_slot():
    """LaViDa's Dream sampler: steps = min(steps, max_new_tokens)."""
    assert SamplerConfig(steps=10, cap_steps=True).resolve(5)[0] == 5
    assert SamplerConfig(steps=10).resolve(5)[0] == 10
    assert SamplerConfig(steps=3, cap_steps=True).resolve(5)[0] == 3


def test_prefill_first_token_needs_the_prefix_cache():
    with pytest.raises(ValueError, match="set prefix_cache=true"):
        SamplerConfig(prefill_first_token=True).resolve(4)


def test_dream_schedule_recounts_the_masked_slots():
    """A committed mask id stays masked: Dream counts again from the slots masked now."""
    from redundancy.sampling.schedule import dream_count

    mask, L = 9, 8

    def source(x, step):  # proposes the mask id at slot 0 (the most confident), token 1 elsewhere
        logits = torch.zeros(1, L, 12)
        logits[0, :, 1] = 5.0
        logits[0, 0, mask] = 50.0
        return logits

    tr = DiffusionSampler(SamplerConfig(steps=4, schedule="dream")).generate(source, torch.full((1, L), mask), mask)
    counts = [int((r.x_before == mask).sum()) for r in tr.steps]
    assert counts[0] == L
    for a, b, s in zip(counts, counts[1:], range(3)):  # each step commits dream_count of what is masked now
        assert a - b == dream_count(a, s, 4) - (1 if dream_count(a, s, 4) else 0)


@pytest.mark.parametrize("cfg", [dict(strategy="topk_margin", steps=4, schedule="dream"),
                                 dict(strategy="threshold", threshold=0.3, steps=4, threshold_fallback="schedule"),
                                 dict(strategy="low_confidence", steps=2)])
def test_rows_decode_independently_of_their_batch_mates(tiny, cfg):
    """Dream and Dimple count and rank masks over the whole batch (issue 15 item 17); the toolkit
    decodes each row on its own, so a sample's answer does not depend on what it is batched with."""
    from redundancy.generate import generate_from_prompt

    prompt = tiny.build_prompt(images(3), QUESTIONS, 4)
    together = generate_from_prompt(tiny, prompt, DiffusionSampler(SamplerConfig(**cfg))).trajectory.tokens
    for i in range(3):
        alone = generate_from_prompt(tiny, prompt.select([i]), DiffusionSampler(SamplerConfig(**cfg))).trajectory
        assert torch.equal(alone.tokens[0], together[i])
