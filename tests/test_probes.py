"""The visual attention probe against brute-force eager attention maps, with and without pruning."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from redundancy.engine import Engine, TokenState, build_mask
from redundancy.probes import VisualAttentionProbe
from tests.conftest import QUESTIONS, images


def eager_maps(model, prompt, ids, keep):
    """All attention maps [layer][b, h, n, n] from transformers' eager attention on the kept tokens."""
    caught = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, o: caught.append(o[1].detach()))
             for layer in model.layers]
    try:
        emb = model.embed(ids, prompt)[:, keep]
        mask = build_mask(prompt.key_valid[:, keep], emb.dtype)
        model.lm(inputs_embeds=emb, attention_mask=mask, position_ids=prompt.position_ids[:, keep])
    finally:
        for h in hooks:
            h.remove()
    return caught


def brute_force(model, prompt, ids, keep):
    """The probe's metrics computed directly from the full maps."""
    maps = eager_maps(model, prompt, ids, keep)
    keep_l = keep.tolist()
    vis_pos = set(prompt.visual_index.tolist())
    is_vis = torch.tensor([p in vis_pos for p in keep_l])
    ans = [keep_l.index(int(p)) for p in prompt.answer_index]
    text = [i for i, p in enumerate(keep_l) if not is_vis[i] and i not in ans]
    rows = {}
    for layer, a in enumerate(maps):
        vis = a[..., is_vis]
        share = vis.sum(-1)
        pv = vis / share.unsqueeze(-1)
        ent = -(pv * pv.clamp_min(1e-30).log()).sum(-1)
        masked = ids[:, prompt.answer_index] == prompt.mask_id
        for i in range(ids.shape[0]):
            groups = {"masked": [ans[j] for j in range(len(ans)) if masked[i, j]],
                      "decoded": [ans[j] for j in range(len(ans)) if not masked[i, j]], "text": text}
            for g, q in groups.items():
                if q:
                    rows[(i, layer, g, "visual_share")] = share[i][:, q].mean().item()
                    rows[(i, layer, g, "visual_entropy")] = ent[i][:, q].mean().item()
                    rows[(i, layer, g, "visual_share", 1)] = share[i][1, q].mean().item()
            rows[(i, layer, "importance")] = vis[i][:, ans].mean(dim=(0, 1))
    return rows


@pytest.mark.parametrize("pruned", [False, True])
def test_probe_equals_eager_attention(tiny, pruned):
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    ids = p.input_ids.clone()
    ids[0, p.answer_index[1]] = tiny.tokenizer.index["red"]  # sample 0 has one decoded slot
    ids[1, p.answer_index[[0, 3]]] = tiny.tokenizer.end_id
    drop = p.visual_index[[1, 2, 7, 8, 9]] if pruned else []
    state = TokenState.dropping(2, p.seq_len, drop)
    probe = VisualAttentionProbe(per_head=True, importance_steps=[5])
    Engine(tiny, listeners=[probe]).forward(p, ids, step=5, state=state)
    ref = brute_force(tiny, p, ids, state.live[0])
    df = pd.DataFrame(probe.rows)
    n_checked = 0
    for r in df.itertuples():
        if r.metric == "importance":
            vis_live = [t for t in range(p.n_visual) if int(p.visual_index[t]) not in set(int(d) for d in drop)]
            expect = ref[(r.sample, r.layer, "importance")][vis_live.index(r.token)].item()
        elif pd.isna(r.head):
            expect = ref[(r.sample, r.layer, r.query_group, r.metric)]
        elif r.head == 1 and r.metric == "visual_share":
            expect = ref[(r.sample, r.layer, r.query_group, r.metric, 1)]
        else:
            continue
        assert abs(r.value - expect) < 1e-5, (r, expect)
        n_checked += 1
    n_vis = p.n_visual - len(drop)
    # 2 samples x layers x 3 groups x 2 metrics, + per-token importance for every kept visual token
    assert n_checked == 2 * tiny.num_layers * (3 * 2 + 3 + n_vis)
    assert set(df.query_group) == {"masked", "decoded", "text", "answer"}
    if pruned:
        assert set(df[df.metric == "importance"].token) == set(vis_live)


def test_probe_observes_only_chosen_layers_and_decode_passes(tiny_llama):
    p = tiny_llama.build_prompt(images(1), QUESTIONS[:1], 4)
    probe = VisualAttentionProbe(layers=[1])
    eng = Engine(tiny_llama, listeners=[probe])
    eng.forward(p, p.input_ids, step=0)
    eng.forward(p, p.input_ids, step=1, tag="oracle")
    assert {r["layer"] for r in probe.rows} == {1}
    assert {r["step"] for r in probe.rows} == {0}
    assert not any(r["metric"] == "importance" for r in probe.rows)


def test_heads_averaged_before_softmax_option(tiny_llama):
    from redundancy.engine import attention_rows

    p = tiny_llama.build_prompt(images(1), QUESTIONS[:1], 4)
    probe = VisualAttentionProbe(layers=[0], average_heads_before_softmax=True)
    Engine(tiny_llama, listeners=[probe]).forward(p, p.input_ids, step=0)
    layer = tiny_llama.layers[0]
    h = tiny_llama.embed(p.input_ids, p)
    cos, sin = tiny_llama.lm.rotary_emb(h, p.position_ids)
    a = attention_rows(layer.self_attn, layer.input_layernorm(h), cos, sin, build_mask(p.key_valid, h.dtype), None, True)
    ans = p.answer_index
    expect = a[0, 0, ans][:, p.visual_index].sum(-1).mean().item()  # every answer slot is masked here
    got = [r for r in probe.rows if r["query_group"] == "masked" and r["metric"] == "visual_share"][0]["value"]
    assert abs(got - expect) < 1e-5


def test_probe_under_prefix_cache_equals_prefix_lm_attention(tiny):
    """Cached answer passes are probed against the cached prompt keys: same as a full prefix-LM pass."""
    p = tiny.build_prompt(images(2), QUESTIONS[:2], 4)
    ids = p.input_ids.clone()
    ids[0, p.answer_index[1]] = tiny.tokenizer.index["red"]
    probe = VisualAttentionProbe(importance_steps=[3])
    eng = Engine(tiny, listeners=[probe])
    cache = eng.prefill(p, ids, step=3)
    eng.forward(p, ids, step=3, prefix=cache)
    # reference: eager maps of a full pass in which the prompt cannot attend to the answer
    caught = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, o: caught.append(o[1].detach())) for layer in tiny.layers]
    try:
        emb = tiny.embed(ids, p)
        mask = build_mask(p.key_valid, emb.dtype)
        mask[:, :, : p.answer_start, p.answer_start:] = torch.finfo(emb.dtype).min
        tiny.lm(inputs_embeds=emb, attention_mask=mask, position_ids=p.position_ids)
    finally:
        for h in hooks:
            h.remove()
    df = pd.DataFrame(probe.rows)
    assert set(df.query_group) == {"masked", "decoded", "answer"}  # no prompt-text rows: the prompt ran once
    masked = ids[:, p.answer_index] == p.mask_id
    vis = p.is_visual()
    checked = 0
    for r in df[df.metric == "visual_share"].itertuples():
        a = caught[r.layer][r.sample][:, p.answer_index]  # [h, L, n]
        rows = masked[r.sample] if r.query_group == "masked" else ~masked[r.sample]
        expect = a[:, rows][..., vis].sum(-1).mean().item()
        assert abs(r.value - expect) < 1e-5
        checked += 1
    assert checked == tiny.num_layers * 3  # sample 0: masked + decoded; sample 1: masked only
    imp = df[(df.metric == "importance") & (df.layer == 1) & (df["sample"] == 0)].sort_values("token")
    ref = caught[1][0][:, p.answer_index][..., vis].mean(dim=(0, 1))
    assert torch.allclose(torch.tensor(imp.value.tolist()), ref.float(), atol=1e-5)
