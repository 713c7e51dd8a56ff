"""Pruning, merging, withdrawal, schedules and layer skipping on tiny models of both families."""

from __future__ import annotations

import pytest
import torch

from redundancy.engine import Engine, TokenState, attention_rows, build_mask
from redundancy.generate import generate_from_prompt
from redundancy.policies import (
    SCORERS, LayerSkipPolicy, PruningPolicy, apply_decision, make_policy,
)
from redundancy.policies.scorers import ToMe
from redundancy.probes import CostProbe
from redundancy.sampling import DiffusionSampler
from tests.conftest import QUESTIONS, images

S4 = DiffusionSampler(steps=4)


def run(model, policy, sampler=S4, n=2):
    p = model.build_prompt(images(n), QUESTIONS[:n], 4)
    return p, generate_from_prompt(model, p, sampler, policy=policy, keep_logits=True)


def step_logits(gen):
    return torch.stack([r.logits for r in gen.trajectory.steps])


@pytest.mark.parametrize("method", sorted(set(SCORERS) - {"vtw"}))
def test_full_retention_is_the_unpruned_run(tiny, method):
    _, base = run(tiny, None)
    schedule = "once" if method == "redvtp" else "every_step"
    _, pruned = run(tiny, make_policy({"method": method, "layer": 1, "ratio": 1.0, "schedule": schedule}))
    assert torch.equal(base.trajectory.tokens, pruned.trajectory.tokens)
    assert (step_logits(base) - step_logits(pruned)).abs().max() < 1e-5


def test_vtw_at_full_depth_is_the_unpruned_run(tiny):
    _, base = run(tiny, None)
    _, vtw = run(tiny, make_policy({"method": "vtw", "layer": tiny.num_layers}))
    assert torch.equal(step_logits(base), step_logits(vtw))


def test_skipping_no_layers_is_the_unpruned_run(tiny):
    _, base = run(tiny, None)
    _, skip = run(tiny, make_policy(skip={"layers": []}))
    assert torch.equal(step_logits(base), step_logits(skip))


def eager_attention(model, prompt, layer):
    """transformers' own eager attention map [b, h, n, n] at ``layer``."""
    caught = []
    hk = model.layers[layer].self_attn.register_forward_hook(lambda m, a, o: caught.append(o[1]))
    try:
        emb = model.embed(prompt.input_ids, prompt)
        model.lm(inputs_embeds=emb, attention_mask=build_mask(prompt.key_valid, emb.dtype),
                 position_ids=prompt.position_ids)
    finally:
        hk.remove()
    return caught[0]


def manual_pruned_logits(model, prompt, K, keep):
    """Layers < K on every token, layers >= K on ``keep`` (original positions) with original RoPE."""
    h = model.embed(prompt.input_ids, prompt)
    pos = prompt.position_ids
    for i, layer in enumerate(model.layers):
        if i == K:
            h, pos = h[:, keep], pos[:, keep]
            valid = prompt.key_valid[:, keep]
        else:
            valid = prompt.key_valid if i < K else valid
        h = layer(h, attention_mask=build_mask(valid, h.dtype), position_embeddings=model.lm.rotary_emb(h, pos))
    rows = [keep.tolist().index(int(a)) for a in prompt.answer_index - model.logit_shift]
    return model.head(model.lm.norm(h[:, rows]))


@pytest.mark.parametrize("heads_before_softmax", [False, True])
def test_fastv_keeps_reference_top_k_with_original_positions(tiny, heads_before_softmax):
    K, r = 2, 0.25
    p = tiny.build_prompt(images(1), QUESTIONS[:1], 4)
    pol = PruningPolicy(method="fastv", layer=K, ratio=r, heads_before_softmax=heads_before_softmax)
    pol.on_generation_start(p, S4)
    out = Engine(tiny, policy=pol).forward(p, p.input_ids, step=0)
    attn = eager_attention(tiny, p, K - 1)[0]  # [h, n, n]
    if heads_before_softmax:  # the study's variant: average the scores over heads, then softmax
        layer = tiny.layers[K - 1]
        emb = tiny.embed(p.input_ids, p)
        h = emb
        for i in range(K - 1):
            h = tiny.layers[i](h, attention_mask=build_mask(p.key_valid, h.dtype),
                               position_embeddings=tiny.lm.rotary_emb(h, p.position_ids))
        cos, sin = tiny.lm.rotary_emb(h, p.position_ids)
        attn = attention_rows(layer.self_attn, layer.input_layernorm(h), cos, sin,
                              build_mask(p.key_valid, h.dtype), None, True)[0]
    score = attn.mean(0).mean(0)[p.visual_index]
    k = int(r * p.n_visual)
    ref_keep = p.visual_index[score.topk(k).indices].sort().values
    assert torch.equal(pol.decision.keep[0], ref_keep)
    non_vis = torch.tensor([i for i in range(p.seq_len) if i not in set(p.visual_index.tolist())])
    keep_all = torch.cat([non_vis, ref_keep]).sort().values
    assert torch.equal(out.state.live[0], keep_all)
    assert torch.equal(out.state.positions(p.position_ids)[0], p.position_ids[0, keep_all])
    ref = manual_pruned_logits(tiny, p, K, keep_all)
    assert (out.logits - ref).abs().max() < 1e-5
    assert out.tokens_executed == [p.seq_len] * K + [len(keep_all)] * (tiny.num_layers - K)


@pytest.mark.parametrize("persist", ["input", "layer_k"])
def test_tokens_executed_match_what_the_policy_removed(tiny, persist):
    K, r = 1, 0.5
    p, gen = run(tiny, make_policy({"method": "random", "layer": K, "ratio": r, "schedule": "once", "step": 1,
                                    "persist_from": persist}))
    n, removed = p.seq_len, p.n_visual - int(r * p.n_visual)
    L = tiny.num_layers
    ex = gen.tokens_executed
    assert ex[0] == [n] * L  # before the decision
    assert ex[1] == [n] * K + [n - removed] * (L - K)  # decided at layer K of step 1
    later = [n - removed] * L if persist == "input" else [n] * K + [n - removed] * (L - K)
    assert ex[2] == ex[3] == later


def test_schedules_decide_when_they_should(tiny_llama):
    m = tiny_llama
    cases = {"once": [2], "from": [2, 3], "every_step": [0, 1, 2, 3], "late": [2], "progressive": [0, 1, 3]}
    for sched, steps in cases.items():
        pol = PruningPolicy(method="random", layer=1, ratio=0.5, schedule=sched, step=2, late_fraction=0.5,
                            progressive_ratios=[0.75, 0.5, 0.25])
        run(m, pol)
        assert pol.decided_at == steps, sched


def test_progressive_never_readds_and_lowers_retention(tiny_llama):
    kept = []

    class Spy(PruningPolicy):
        def _decide(self, ctx, hidden, state):
            h, s = super()._decide(ctx, hidden, state)
            kept.append(set(self.decision.keep[0].tolist()))
            return h, s

    p, gen = run(tiny_llama, Spy(method="random", layer=1, schedule="progressive", progressive_ratios=[0.75, 0.5, 0.25]))
    assert [len(k) for k in kept] == [12, 8, 4]
    assert kept[1] <= kept[0] and kept[2] <= kept[1]


def test_redvtp_scores_at_step_s_and_applies_from_next(tiny):
    p, gen = run(tiny, make_policy({"method": "redvtp", "layer": 1, "ratio": 0.5, "step": 1}))
    n, k = p.seq_len, p.n_visual // 2
    ex = gen.tokens_executed
    assert ex[0] == ex[1] == [n] * tiny.num_layers
    assert ex[2] == [n - (p.n_visual - k)] * tiny.num_layers  # persists from the input


def test_merging_preserves_sizes_and_weighted_sum(tiny_llama):
    p = tiny_llama.build_prompt(images(2), QUESTIONS[:2], 4)
    hidden = torch.randn(2, p.seq_len, 64)
    state = TokenState.full(2, p.seq_len)
    vis = state.visual_slots(p.is_visual())
    dec = ToMe().decide(None, hidden, state, vis, k=5)
    h2, s2 = apply_decision(hidden, state, p.is_visual(), dec)
    vis2 = s2.visual_slots(p.is_visual())
    assert vis2.sum(1).tolist() == [5, 5]
    assert s2.size[vis2].view(2, -1).sum(1).tolist() == [16.0, 16.0]
    before = hidden[:, p.visual_index].sum(1)
    after = (h2[vis2].view(2, 5, -1) * s2.size[vis2].view(2, 5, 1)).sum(1)
    assert torch.allclose(before, after, atol=1e-5)
    # a merged token keeps its destination's position: every kept position was a visual position
    assert set(dec.keep.flatten().tolist()) <= set(p.visual_index.tolist())


def test_tome_runs_with_proportional_attention(tiny):
    p, gen = run(tiny, make_policy({"method": "tome", "layer": 1, "ratio": 0.25}))
    assert gen.tokens_executed[-1][-1] == p.seq_len - p.n_visual + 4
    _, off = run(tiny, make_policy({"method": "tome", "layer": 1, "ratio": 0.25, "proportional_attention": False}))
    assert not torch.equal(step_logits(gen), step_logits(off))


def test_pruning_and_skipping_combine(tiny):
    pol = make_policy({"method": "fastv", "layer": 1, "ratio": 0.5}, {"layers": [2]})
    p, gen = run(tiny, pol)
    n, kept = p.seq_len, p.seq_len - (p.n_visual - p.n_visual // 2)
    assert gen.tokens_executed[0] == [n, kept, 0]
    assert gen.tokens_executed[1] == [kept, kept, 0]


def test_skip_positions_and_step_range(tiny_llama):
    assert LayerSkipPolicy(n=1, position="early").resolve(3) == [0]
    assert LayerSkipPolicy(n=1, position="middle").resolve(3) == [1]
    assert LayerSkipPolicy(fraction=0.5, position="late").resolve(4) == [2, 3]
    p, gen = run(tiny_llama, LayerSkipPolicy(layers=[0, 1], steps=[1, 3]))
    assert [e.count(0) for e in gen.tokens_executed] == [0, 2, 2, 0]


def test_prefix_cache_gathers_kept_keys(tiny):
    sampler = DiffusionSampler(steps=4, prefix_cache=True)
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    n, kept = p.answer_start, p.answer_start - p.n_visual // 2
    costs = {}
    for persist in ("layer_k", "input"):
        probe = CostProbe()
        pol = make_policy({"method": "fastv", "layer": 1, "ratio": 0.5, "persist_from": persist})
        generate_from_prompt(tiny, p, sampler, policy=pol, listeners=[probe])
        costs[persist] = probe.passes
    pre, cached = costs["layer_k"][0], costs["layer_k"][1]
    assert (pre.phase, cached.phase) == ("prefill", "cached")
    assert pre.tokens_executed == [n, kept, kept]
    assert cached.tokens_executed == [4, 4, 4]
    assert cached.n_key == [n + 4, kept + 4, kept + 4]  # layer 0 keeps every visual token
    assert costs["input"][1].n_key == [kept + 4] * 3  # the kept set is gathered at every layer


@pytest.mark.parametrize(
    "prune, skip, match",
    [
        ({"ratio": 0.0}, None, r"retention ratio must be in \(0, 1\], got 0.0"),
        ({"ratio": 1.5}, None, r"retention ratio must be in \(0, 1\], got 1.5"),
        ({"layer": 9}, None, "layer K=9 is beyond the model's depth; choose 0..3"),
        ({"layer": 0}, None, "K must be >= 1"),
        ({"step": 4}, None, "step 4 is beyond the number of steps; choose 0..3"),
        ({"method": "fastvv"}, None, "unknown pruning method 'fastvv'; choose one of: answer_logit"),
        ({"schedule": "early"}, None, "unknown schedule 'early'; choose one of: once, late"),
        (None, {"layers": [0, 1, 2]}, "removes every layer"),
        (None, {"layers": [5]}, r"outside the model's layers 0..2"),
        (None, {"n": 1, "position": "top"}, "unknown skip position 'top'"),
    ],
)
def test_bad_policy_settings_fail_before_compute(tiny_llama, prune, skip, match):
    calls = []
    eng_forward = Engine.forward
    Engine.forward = lambda *a, **k: calls.append(1) or eng_forward(*a, **k)
    try:
        with pytest.raises(ValueError, match=match):
            p = tiny_llama.build_prompt(images(1), QUESTIONS[:1], 4)
            generate_from_prompt(tiny_llama, p, S4, policy=make_policy(
                None if prune is None else {"method": "fastv", "layer": 1, **prune}, skip))
    finally:
        Engine.forward = eng_forward
    assert calls == []


def test_progressive_merges_chain_and_sizes_add_up(tiny_llama):
    sizes = []

    class Spy(PruningPolicy):
        def on_forward_end(self, ctx, output):
            vis = output.state.visual_slots(ctx.prompt.is_visual())
            sizes.append(output.state.sizes()[vis].view(output.state.batch_size, -1).sum(1).tolist())

    p, gen = run(tiny_llama, Spy(method="tome", layer=1, schedule="progressive", progressive_ratios=[0.75, 0.5, 0.25]))
    assert all(s == [16.0, 16.0] for s in sizes)  # every original visual token is still represented
    assert gen.tokens_executed[-1][-1] == p.seq_len - p.n_visual + 4


def test_merges_without_proportional_attention_stay_unbiased_at_later_steps(tiny_llama):
    seen = []

    class Spy(PruningPolicy):
        def on_forward_end(self, ctx, output):
            seen.append(output.state.size)

    run(tiny_llama, Spy(method="tome", layer=1, ratio=0.5, proportional_attention=False))
    assert seen and all(s is None for s in seen)


def test_persistent_decision_at_k0_with_layer_k_persistence(tiny_llama):
    p, gen = run(tiny_llama, make_policy({"method": "random", "layer": 0, "ratio": 0.5, "persist_from": "layer_k"}))
    kept = p.seq_len - p.n_visual // 2
    assert gen.tokens_executed == [[kept] * 3] * 4


def test_skipping_the_scored_layer_is_refused(tiny_llama):
    p = tiny_llama.build_prompt(images(1), QUESTIONS[:1], 4)
    with pytest.raises(ValueError, match=r"scores from the attention of layer\(s\) \[0\]"):
        generate_from_prompt(tiny_llama, p, S4, policy=make_policy({"method": "fastv", "layer": 1}, {"layers": [0]}))
    with pytest.raises(ValueError, match=r"unknown prune setting\(s\) \['ratoi'\]"):
        make_policy({"method": "fastv", "ratoi": 0.3})


def test_ties_keep_the_earlier_position(tiny_llama):
    from redundancy.policies.scorers import Scorer

    class Flat(Scorer):
        def scores(self, ctx, hidden, state, vis):
            return torch.zeros(state.batch_size, int(vis[0].sum()))

    p = tiny_llama.build_prompt(images(1), QUESTIONS[:1], 4)
    state = TokenState.full(1, p.seq_len)
    dec = Flat().decide(None, None, state, state.visual_slots(p.is_visual()), 3)
    assert dec.keep[0].tolist() == p.visual_index[:3].tolist()
