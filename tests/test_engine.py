"""The engine against transformers' own forward, for both families."""

from __future__ import annotations

import torch

from redundancy.engine import Engine, Listener, TokenState, build_mask
from tests.conftest import QUESTIONS, images


def reference_logits(model, prompt, input_ids=None, mask=None, position_ids=None, keep=None):
    """transformers' LlamaModel / Qwen2Model forward with an explicit mask, plus the head."""
    ids = prompt.input_ids if input_ids is None else input_ids
    emb = model.embed(ids, prompt)
    pos = prompt.position_ids if position_ids is None else position_ids
    valid = prompt.key_valid
    if keep is not None:
        emb, pos, valid = emb[:, keep], pos[:, keep], valid[:, keep]
    if mask is None:
        mask = build_mask(valid, emb.dtype)
    hidden = model.lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
    return hidden


def answer_rows(model, prompt, keep=None):
    rows = prompt.answer_index - model.logit_shift
    if keep is not None:
        remap = {int(p): i for i, p in enumerate(keep)}
        rows = torch.tensor([remap[int(r)] for r in rows])
    return rows


def test_engine_equals_transformers_forward(tiny, prompt3):
    out = Engine(tiny).forward(prompt3, prompt3.input_ids)
    hidden = reference_logits(tiny, prompt3)
    ref = tiny.head(hidden[:, answer_rows(tiny, prompt3)])
    assert out.logits.shape == (3, 4, tiny.tokenizer.vocab_size)
    assert (out.logits - ref).abs().max().item() < 1e-5
    assert out.tokens_executed == [prompt3.seq_len] * tiny.num_layers


def test_logit_shift_aligns_rows(tiny_qwen2):
    p = tiny_qwen2.build_prompt(images(1), QUESTIONS[:1], 4)
    out = Engine(tiny_qwen2).forward(p, p.input_ids)
    hidden = reference_logits(tiny_qwen2, p)
    # answer token 0 is predicted by the <sep> row right before the answer
    ref0 = tiny_qwen2.head(hidden[:, p.answer_start - 1])
    assert torch.allclose(out.logits[:, 0], ref0, atol=1e-5)


class _LastHidden(Listener):
    def on_layer_end(self, ctx, layer, hidden, state):
        self.hidden = hidden.clone()


def test_attention_is_bidirectional(tiny, prompt3):
    cap = _LastHidden()
    eng = Engine(tiny, listeners=[cap])
    eng.forward(prompt3, prompt3.input_ids)
    h0 = cap.hidden[:, 0].clone()
    ids = prompt3.input_ids.clone()
    ids[:, -1] = tiny.tokenizer.index["red"]
    eng.forward(prompt3, ids)
    assert (cap.hidden[:, 0] - h0).abs().max().item() > 1e-4
    # and a causal engine does not let the last token reach position 0
    causal = Engine(tiny, listeners=[cap], causal=True)
    causal.forward(prompt3, prompt3.input_ids)
    c0 = cap.hidden[:, 0].clone()
    causal.forward(prompt3, ids)
    assert (cap.hidden[:, 0] - c0).abs().max().item() < 1e-6


def test_causal_engine_equals_default_transformers_forward(tiny):
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    p.key_valid[:] = True  # transformers' default causal path has no padding here
    out = Engine(tiny, causal=True).forward(p, p.input_ids)
    emb = tiny.embed(p.input_ids, p)
    hidden = tiny.lm(inputs_embeds=emb, position_ids=p.position_ids).last_hidden_state
    ref = tiny.head(hidden[:, answer_rows(tiny, p)])
    assert (out.logits - ref).abs().max().item() < 1e-5


def test_dropping_visual_tokens_equals_shortened_input(tiny, prompt3):
    drop = prompt3.visual_index[[0, 3, 5, 6, 11]]
    state = TokenState.dropping(3, prompt3.seq_len, drop)
    out = Engine(tiny).forward(prompt3, prompt3.input_ids, state=state)
    keep = state.live[0]
    hidden = reference_logits(tiny, prompt3, keep=keep)
    ref = tiny.head(hidden[:, answer_rows(tiny, prompt3, keep)])
    assert (out.logits - ref).abs().max().item() < 1e-5
    assert out.tokens_executed == [prompt3.seq_len - 5] * tiny.num_layers
    # the result really depends on which tokens are gone (original positions are kept for RoPE)
    full = Engine(tiny).forward(prompt3, prompt3.input_ids)
    assert (full.logits - out.logits).abs().max().item() > 1e-4


def test_batch_equals_single_runs(tiny, prompt3):
    eng = Engine(tiny)
    batch = eng.forward(prompt3, prompt3.input_ids).logits
    for i in range(3):
        single = tiny.build_prompt(images(3)[i:i + 1], QUESTIONS[i:i + 1], 4)
        one = eng.forward(single, single.input_ids).logits
        assert (batch[i:i + 1] - one).abs().max().item() < 1e-5


def test_prefix_cache_equals_prefix_lm_mask(tiny, prompt3):
    """Answer tokens against a frozen prompt cache == full pass where the prompt cannot see the answer."""
    eng = Engine(tiny)
    ids = prompt3.input_ids.clone()
    ids[:, prompt3.answer_index[1]] = tiny.tokenizer.index["red"]
    cache = eng.prefill(prompt3, ids)
    out = eng.forward(prompt3, ids, prefix=cache)
    start = prompt3.answer_start
    mask = build_mask(prompt3.key_valid, torch.float32)
    mask[:, :, :start, start:] = torch.finfo(torch.float32).min
    hidden = reference_logits(tiny, prompt3, input_ids=ids, mask=mask)
    ref = tiny.head(hidden[:, answer_rows(tiny, prompt3)])
    assert (out.logits - ref).abs().max().item() < 1e-5
    assert out.tokens_executed == [prompt3.answer_length] * tiny.num_layers
