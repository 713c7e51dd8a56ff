"""Cost probe: analytic FLOPs against torch's FlopCounterMode, tokens executed, step time.

The comparison counts a whole engine pass under FlopCounterMode and subtracts nothing: the pass runs
the embedding lookup (no FLOPs), the rotary tables (no counted matmul), the decoder layers and the
LM head, so the counter's total is exactly "decoder layers + head" as the analytic formula models
them. FlopCounterMode counts matmul-type ops only (mm/addmm/bmm/sdpa; bias adds and elementwise ops
are not counted), which is also what :func:`decoder_flops` leaves out. The counter sees the whole
batch; the analytic numbers are per sample and are multiplied by the batch size.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from redundancy.engine import Engine
from redundancy.engine.events import Policy
from redundancy.engine.state import TokenState
from redundancy.generate import generate_from_prompt
from redundancy.probes.cost import (
    CostProbe,
    decoder_config,
    decoder_flops,
    forward_flops,
    head_flops,
    paper_flops,
)
from redundancy.sampling import DiffusionSampler, SamplerConfig
from tests.conftest import QUESTIONS, images, tiny_model

TOL = 0.02
B = 3
ANSWER = 4


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    m = tiny_model(request.param)
    m.set_attn_implementation("eager")
    return m


@pytest.fixture(scope="module")
def prompt(model):
    return model.build_prompt(images(B), QUESTIONS, ANSWER)


def counted(fn):
    """(result, total FLOPs counted by FlopCounterMode, per-module counts) of ``fn()``."""
    with FlopCounterMode(display=False) as fc:
        out = fn()
    return out, fc.get_total_flops(), fc.get_flop_counts()


def close(analytic: float, measured: float) -> bool:
    return measured > 0 and abs(analytic - measured) / measured < TOL


def drop_half_visual(prompt) -> TokenState:
    return TokenState.dropping(prompt.batch_size, prompt.seq_len, prompt.visual_index[::2])


class PruneThenSkip(Policy):
    """Keep every other visual token before layer 1 and skip layer 2 (varying per-layer counts)."""

    def before_layer(self, ctx, layer, hidden, state):
        if layer != 1:
            return hidden, state
        vis = state.visual_slots(ctx.prompt.is_visual())[0]
        slots = torch.arange(state.n_live)
        keep = torch.cat([slots[~vis], slots[vis][::2]]).sort().values.expand(state.batch_size, -1)
        hidden = hidden.gather(1, keep.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return hidden, state.select(keep)

    def skip_layer(self, ctx, layer):
        return layer == 2


# -- analytic formula --------------------------------------------------------------------------
def test_decoder_flops_terms(model):
    cfg = decoder_config(model)
    d, h, kv, m = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    hd = d // h
    n, k = 7, 11
    want = 2 * n * d * h * hd * 2 + 2 * n * d * kv * hd * 2 + 4 * h * n * k * hd + 6 * n * d * m
    assert decoder_flops(cfg, n, k) == want
    assert decoder_flops(cfg, n, k, include_head_rows=2) == want + head_flops(cfg, 2)
    assert head_flops(cfg, 2) == 2 * 2 * d * cfg.vocab_size
    assert decoder_flops(cfg, 0, 0) == 0
    assert paper_flops(cfg, n) == 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def test_full_forward_matches_flop_counter(model, prompt):
    out, measured, per_module = counted(lambda: Engine(model).forward(prompt, prompt.input_ids))
    assert out.tokens_executed == [prompt.seq_len] * model.num_layers
    analytic = forward_flops(model, out.tokens_executed, head_rows=ANSWER) * B
    assert close(analytic, measured), (analytic, measured)
    # the split agrees too: decoder layers and the head
    layer_key = type(model.layers[0]).__name__
    layers = sum(per_module[layer_key].values())
    cfg = decoder_config(model)
    assert close(model.num_layers * decoder_flops(cfg, prompt.seq_len, prompt.seq_len) * B, layers)
    assert close(head_flops(cfg, ANSWER) * B, measured - layers)


def test_dropped_tokens_and_skipped_layer_match_flop_counter(model, prompt):
    state = drop_half_visual(prompt)
    engine = Engine(model, policy=PruneThenSkip())
    out, measured, _ = counted(lambda: engine.forward(prompt, prompt.input_ids, state=state))
    ex = out.tokens_executed
    assert ex[0] == state.n_live and 0 < ex[1] < ex[0] and ex[2] == 0
    analytic = forward_flops(model, ex, head_rows=ANSWER) * B
    assert close(analytic, measured), (analytic, measured)


def test_cached_pass_matches_flop_counter(model, prompt):
    engine = Engine(model)
    state = drop_half_visual(prompt)
    cache, m_pre, _ = counted(lambda: engine.prefill(prompt, prompt.input_ids, state=state))
    n_pre = cache.live[0].shape[1]
    pre = forward_flops(model, [n_pre] * model.num_layers, head_rows=model.logit_shift) * B
    assert close(pre, m_pre), (pre, m_pre)
    out, m_cached, _ = counted(lambda: engine.forward(prompt, prompt.input_ids, prefix=cache))
    assert out.tokens_executed == [ANSWER] * model.num_layers
    keys = [n_pre + ANSWER] * model.num_layers
    cached = forward_flops(model, out.tokens_executed, keys, head_rows=ANSWER) * B
    assert close(cached, m_cached), (cached, m_cached)
    # counting keys as queries only would be far off: the cached keys matter
    assert not close(forward_flops(model, out.tokens_executed, head_rows=ANSWER) * B, m_cached)


# -- the probe ---------------------------------------------------------------------------------
def rows_of(probe, metric, phase=None):
    return [r for r in probe.rows if r["metric"] == metric and (phase is None or r["query_group"] == phase)]


def test_probe_full_pass_rows_match_engine_and_counter(model, prompt):
    probe = CostProbe()
    engine = Engine(model, listeners=[probe], policy=PruneThenSkip())
    state = drop_half_visual(prompt)
    out, measured, _ = counted(lambda: engine.forward(prompt, prompt.input_ids, step=5, state=state))
    tok = rows_of(probe, "tokens_executed")
    assert [r["layer"] for r in tok] == list(range(model.num_layers))
    assert [int(r["value"]) for r in tok] == out.tokens_executed
    assert all(r["step"] == 5 and r["query_group"] == "full" and r["sample"] is None for r in tok)
    (fl,) = rows_of(probe, "flops")
    assert fl["layer"] is None and close(fl["value"] * B, measured)
    assert probe.total_flops == fl["value"]
    assert probe.total_tokens_executed == sum(out.tokens_executed)
    cfg = decoder_config(model)
    (fp,) = rows_of(probe, "flops_paper")
    assert fp["value"] == sum(paper_flops(cfg, n) for n in out.tokens_executed if n)


def test_probe_prefill_and_cached_passes(model, prompt):
    probe = CostProbe()
    engine = Engine(model, listeners=[probe])
    state = drop_half_visual(prompt)
    cache, m_pre, _ = counted(lambda: engine.prefill(prompt, prompt.input_ids, state=state))
    out, m_cached, _ = counted(lambda: engine.forward(prompt, prompt.input_ids, prefix=cache))
    pre, cached = probe.passes
    assert (pre.phase, cached.phase) == ("prefill", "cached")
    n_pre = cache.live[0].shape[1]
    assert pre.tokens_executed == [n_pre] * model.num_layers
    assert cached.tokens_executed == out.tokens_executed
    assert cached.n_key == [n_pre + ANSWER] * model.num_layers
    assert close(rows_of(probe, "flops", "prefill")[0]["value"] * B, m_pre)
    assert close(rows_of(probe, "flops", "cached")[0]["value"] * B, m_cached)
    # a cache whose visual tokens were pruned from layer 1 on after the prefill
    vis_alive = cache.live[0][0][prompt.is_visual()[cache.live[0][0]]]
    keep = vis_alive[::2].expand(B, -1)
    small = cache.keep_positions(keep, prompt.is_visual(), range(1, model.num_layers))
    _, m_small, _ = counted(lambda: engine.forward(prompt, prompt.input_ids, prefix=small))
    n_dropped = vis_alive.numel() - keep.shape[1]
    assert probe.passes[-1].n_key[0] == n_pre + ANSWER
    assert probe.passes[-1].n_key[1] == n_pre - n_dropped + ANSWER
    assert close(probe.passes[-1].flops * B, m_small)


def test_probe_ignores_measurement_passes(model, prompt):
    probe = CostProbe()
    Engine(model, listeners=[probe]).forward(prompt, prompt.input_ids, tag="oracle")
    assert probe.rows == [] and probe.total_flops == 0


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_probe_during_generation(model, prompt, prefix_cache):
    probe = CostProbe()
    sampler = DiffusionSampler(SamplerConfig(steps=2, prefix_cache=prefix_cache))
    gen = generate_from_prompt(model, prompt, sampler=sampler, listeners=[probe])
    n_steps = len(gen.trajectory.steps)
    times = rows_of(probe, "time_step_s")
    assert [r["step"] for r in times] == list(range(n_steps))
    assert all(r["value"] > 0 and r["layer"] is None for r in times)
    assert probe.seconds == pytest.approx(sum(r["value"] for r in times))
    decode = [p for p in probe.passes if p.phase != "prefill"]
    assert [p.tokens_executed for p in decode] == gen.tokens_executed
    assert len(rows_of(probe, "flops")) == n_steps + prefix_cache
    if prefix_cache:
        assert probe.passes[0].phase == "prefill" and probe.passes[0].step == 0
        assert {p.phase for p in decode} == {"cached"}
    assert probe.total_tokens_executed == sum(sum(p.tokens_executed) for p in probe.passes)
    assert probe.peak_memory_mb > 0
